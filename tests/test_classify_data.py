"""Classification data: pair encoding as BERT expects, row-checked readers, length-grouped batches, cache."""
from pathlib import Path

import pytest

from conftest import FIXTURES, ROOT, require_shared
from data.batching import LengthGroupedSampler, pad_collate
from data.classification import ClassificationDataModule
from data.errors import DataError
from data.readers import read_table
from data.tokenization import load_wordpiece

SAMPLE_TOKENIZER = ROOT / "data" / "samples" / "sst2" / "tokenizer.json"


def test_pair_encoded_as_bert_expects_with_minilm_tokenizer():
    model_dir = require_shared("models", "all-MiniLM-L6-v2")
    dm = ClassificationDataModule(predict_file=str(FIXTURES / "rte_dev.tsv"), text_column="sentence1",
                                  text_pair_column="sentence2", tokenizer=str(model_dir), cache_dir=None)
    dm.setup("predict")
    example = dm._encoded_split("predict")[1]
    vocab = {line.strip(): i for i, line in enumerate((model_dir / "vocab.txt").read_text().splitlines())}
    tok = load_wordpiece(model_dir)
    a = tok.encode("Yet, we now are discovering that antibiotics are losing their effectiveness against illness. "
                   "Disease-causing bacteria are mutating faster than we can come up with new antibiotics to "
                   "fight the new variations.", add_special_tokens=False).ids
    b = tok.encode("Bacteria is winning the war against antibiotics.", add_special_tokens=False).ids
    assert example["input_ids"] == [vocab["[CLS]"], *a, vocab["[SEP]"], *b, vocab["[SEP]"]]
    assert example["token_type_ids"] == [0] * (len(a) + 2) + [1] * (len(b) + 1)
    assert vocab["[CLS]"] == 101 and vocab["[SEP]"] == 102
    # the hypothesis, word by word, as in the uncased WordPiece vocabulary
    assert [vocab[w] for w in ["bacteria", "is", "winning", "the", "war", "against", "antibiotics", "."]] == b

    transformers = pytest.importorskip("transformers")
    hf = transformers.BertTokenizerFast.from_pretrained(str(model_dir))
    enc = hf("Yet, we now are discovering that antibiotics are losing their effectiveness against illness. "
             "Disease-causing bacteria are mutating faster than we can come up with new antibiotics to fight the "
             "new variations.", "Bacteria is winning the war against antibiotics.")
    assert enc["input_ids"] == example["input_ids"]
    assert enc["token_type_ids"] == example["token_type_ids"]


def test_pair_encoding_with_bundled_tokenizer():
    tok = load_wordpiece(SAMPLE_TOKENIZER)
    enc = tok.encode("a great movie", "not so bad")
    assert enc.tokens == ["[CLS]", "a", "great", "movie", "[SEP]", "not", "so", "bad", "[SEP]"]
    assert enc.type_ids == [0, 0, 0, 0, 0, 1, 1, 1, 1]


@pytest.mark.parametrize("content, message", [
    (None, "file not found"),
    ("", "file is empty"),
    ("sentence\tlabel\n", "no data rows"),
    ("text\tlabel\ngood film\t1\n", "no column 'sentence'"),
    ("sentence\tlabel\ngood film\t1\nbad film\n", "line 3: expected 2 tab-separated fields"),
    ("sentence\tlabel\ngood film\t1\n\t0\n", "line 3: empty value in column 'sentence'"),
])
def test_reader_errors_name_file_and_line(tmp_path, content, message):
    path = tmp_path / "bad.tsv"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataError, match=message) as e:
        read_table(path, ["sentence", "label"])
    assert str(path) in str(e.value)


def test_jsonl_reader(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"sentence": "good", "label": 1}\n{"sentence": "bad", "label": 0}\n{"sentence": "x"\n')
    with pytest.raises(DataError, match=r"x.jsonl, line 3: not valid JSON"):
        read_table(path, ["sentence", "label"])
    path.write_text('{"sentence": "good", "label": 1}\n\n{"sentence": "bad", "label": 0}\n')
    with pytest.raises(DataError, match=r"x.jsonl, line 2: empty line"):
        read_table(path, ["sentence", "label"])
    path.write_text('{"sentence": "good", "label": 1}\n{"text": "bad", "label": 0}\n')
    with pytest.raises(DataError, match=r"line 2: missing or empty key 'sentence'"):
        read_table(path, ["sentence", "label"])


def test_label_outside_label_set(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text("sentence\tlabel\ngood\t1\nbad\t0\nodd\t2\n")
    dm = ClassificationDataModule(train_file=str(path), labels=["0", "1"], tokenizer=str(SAMPLE_TOKENIZER))
    with pytest.raises(DataError, match=r"train.tsv, line 4: label '2' is not in the label set"):
        dm.setup("fit")


def flat(batches) -> list[int]:
    return [i for b in batches for i in b]


def test_length_grouped_batches_cover_everything_once_and_group_lengths():
    lengths = [(i * 37) % 50 + 1 for i in range(1000)]
    s = LengthGroupedSampler(lengths, batch_size=16, group_size=8, seed=3)
    batches = list(s)
    assert sorted(flat(batches)) == list(range(1000)) and len(batches) == len(s) == 63

    def padded(batches):
        return sum(len(b) * max(lengths[j] for j in b) for b in batches)

    random_batches = list(LengthGroupedSampler(lengths, batch_size=16, group_by_length=False, seed=3))
    assert padded(random_batches) > 1.8 * sum(lengths)  # random batches pay for their longest example
    assert padded(batches) < 1.2 * sum(lengths)
    s.set_epoch(1)
    assert list(s) != batches  # a new order each epoch
    s.set_epoch(0)
    assert list(s) == batches  # ... fixed by seed and epoch


def test_token_budget_batches_stay_under_the_budget():
    lengths = [(i * 37) % 50 + 1 for i in range(1000)]
    s = LengthGroupedSampler(lengths, max_tokens=400, seed=0)
    batches = list(s)
    assert sorted(flat(batches)) == list(range(1000))
    assert all(len(b) * max(lengths[i] for i in b) <= 400 for b in batches)
    assert sum(len(b) * max(lengths[i] for i in b) for b in batches) < 1.1 * sum(lengths)   # sorted: little padding
    assert len({len(b) for b in batches}) > 5           # short examples travel in bigger batches


def test_ddp_shards_are_disjoint_for_eval_and_equal_for_training():
    lengths = list(range(1, 102))
    evals = [flat(LengthGroupedSampler(lengths, 8, shuffle=False, num_replicas=2, rank=r)) for r in (0, 1)]
    assert sorted(evals[0] + evals[1]) == list(range(101))  # nothing repeated or dropped
    train = [LengthGroupedSampler(lengths, 8, num_replicas=2, rank=r) for r in (0, 1)]
    assert len(train[0]) == len(train[1]) == 7
    assert set(flat(train[0])) | set(flat(train[1])) == set(range(101))


def test_skip_batches_resumes_the_same_order():
    s = LengthGroupedSampler(list(range(1, 81)), batch_size=8, seed=1)
    full = list(s)
    s.skip_batches(0, 3)
    assert list(s) == full[3:]
    assert list(s) == full  # the skip applies once


def test_pad_collate():
    collate = pad_collate({"input_ids": 0, "token_type_ids": 0})
    batch = collate([{"input_ids": [5, 6, 7], "token_type_ids": [0, 0, 1], "index": 0, "labels": 1},
                     {"input_ids": [5], "token_type_ids": [0], "index": 1, "labels": 0}])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["token_type_ids"].tolist() == [[0, 0, 1], [0, 0, 0]]
    assert batch["labels"].tolist() == [1, 0] and batch["index"].tolist() == [0, 1]
    tags = pad_collate({"input_ids": 0, "labels": -100})([{"input_ids": [1, 2], "labels": [3, 4]},
                                                          {"input_ids": [1], "labels": [5]}])
    assert tags["labels"].tolist() == [[3, 4], [5, -100]]


def test_tokenised_split_is_cached(tmp_path):
    kwargs = dict(train_file=str(FIXTURES / "sst2_train.tsv"), val_file=str(FIXTURES / "sst2_dev.tsv"),
                  labels=["0", "1"], tokenizer=str(SAMPLE_TOKENIZER), cache_dir=str(tmp_path / "cache"))
    dm = ClassificationDataModule(**kwargs)
    dm.setup("fit")
    first = dm._encoded_split("train")
    cached = list((tmp_path / "cache").iterdir())
    assert len(cached) == 1
    dm2 = ClassificationDataModule(**kwargs)
    dm2.setup("fit")
    dm2._tokenize = None  # a cache hit must not tokenise again
    assert dm2._encoded_split("train").columns["input_ids"] == first.columns["input_ids"]
    assert len(first) == 48 and sorted(set(first.columns["labels"])) == [0, 1]


@pytest.mark.parametrize("labels, inferred", [
    (["1", "0", "1"], ["0", "1"]),
    (["10", "9", "2"], ["2", "9", "10"]),                    # numbers in numeric order, not as strings
    (["pos", "neg", "neutral"], ["neg", "neutral", "pos"]),
])
def test_label_set_inferred_from_the_training_file(tmp_path, labels, inferred):
    """Without data.labels, the classes are the training file's distinct labels in sorted order, and the other
    splits map to them."""
    rows = "".join(f"sentence {i}\t{label}\n" for i, label in enumerate(labels))
    (tmp_path / "train.tsv").write_text("sentence\tlabel\n" + rows)
    (tmp_path / "dev.tsv").write_text("sentence\tlabel\n" + f"a dev sentence\t{labels[0]}\n")
    dm = ClassificationDataModule(train_file=str(tmp_path / "train.tsv"), val_file=str(tmp_path / "dev.tsv"),
                                  tokenizer=str(SAMPLE_TOKENIZER), cache_dir=None)
    dm.setup("fit")
    assert dm.labels == inferred
    assert [inferred[t] for t in dm._raw["train"]["targets"]] == labels
    assert dm._raw["val"]["targets"] == [inferred.index(labels[0])]
