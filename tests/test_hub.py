"""`hub:NAME[:CONFIG]:SPLIT` in place of a data file (data/hub.py), checked offline: each dataset here is a directory
of parquet files laid out as its hub version is (the same columns and features, e.g. CoNLL-2003's tags as a
ClassLabel), built from the committed fixtures, so what the reader gets from the split must equal the fixture file."""
from __future__ import annotations

import json
import os
import re

import pytest

datasets = pytest.importorskip("datasets")
from datasets import ClassLabel, Dataset, Features, Sequence, Value  # noqa: E402

import run  # noqa: E402
from data.classification import ClassificationDataModule  # noqa: E402
from data.conll import label_set, read_conll  # noqa: E402
from data.errors import ConfigError, DataError  # noqa: E402
from data.hub import local_file, parse  # noqa: E402
from data.squad import read_squad  # noqa: E402
from data.text import read_documents  # noqa: E402


@pytest.fixture(autouse=True)
def offline_caches(tmp_path, monkeypatch):
    """No network, and both caches (datasets' and ours) inside the test's directory."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    monkeypatch.setenv("NLP_HUB_CACHE", str(tmp_path / "hub_cache"))


def write_splits(directory, features: Features, **splits: dict) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    for split, columns in splits.items():
        Dataset.from_dict(columns, features=features).to_parquet(str(directory / f"{split}.parquet"))
    return str(directory)


def conll_as_hub(path) -> dict:
    """A CoNLL file as the hub's conll2003 rows: one row per sentence, tags as ClassLabel ids, and a
    `-DOCSTART-` row (tag O) before every document."""
    sentences = read_conll(path)
    names = label_set(sentences)
    rows = {"tokens": [], "ner_tags": []}
    for i, s in enumerate(sentences):
        if i == 0 or s.doc != sentences[i - 1].doc:
            rows["tokens"].append(["-DOCSTART-"])
            rows["ner_tags"].append([0])
        rows["tokens"].append(s.words)
        rows["ner_tags"].append([names.index(t) for t in s.tags])
    return rows, names


SQUAD_FEATURES = Features({"id": Value("string"), "title": Value("string"), "context": Value("string"),
                           "question": Value("string"),
                           "answers": Sequence({"text": Value("string"), "answer_start": Value("int32")})})


def squad_as_hub(path) -> dict:
    """A SQuAD file as the hub's squad rows: one row per question, with its article's title and its context."""
    root = json.loads(path.read_text())
    flat = [(a["title"], p["context"], qa) for a in root["data"] for p in a["paragraphs"] for qa in p["qas"]]
    return {"id": [qa["id"] for _, _, qa in flat], "title": [t for t, _, _ in flat],
            "context": [c for _, c, _ in flat], "question": [qa["question"] for _, _, qa in flat],
            "answers": [{"text": [a["text"] for a in qa["answers"]],
                         "answer_start": [a["answer_start"] for a in qa["answers"]]} for _, _, qa in flat]}


def test_conll_split_reads_as_the_file_it_came_from(tmp_path, fixtures):
    rows, names = conll_as_hub(fixtures / "conll_train.txt")
    features = Features({"tokens": Sequence(Value("string")), "ner_tags": Sequence(ClassLabel(names=names))})
    directory = write_splits(tmp_path / "conll2003", features, train=rows)
    from_hub = read_conll(local_file(f"hub:{directory}:train", "conll"))
    original = read_conll(fixtures / "conll_train.txt")
    assert [(s.words, s.tags, s.doc) for s in from_hub] == [(s.words, s.tags, s.doc) for s in original]
    assert len({s.doc for s in original}) > 1          # the documents' boundaries were there to keep


def test_squad_split_reads_as_the_file_it_came_from(tmp_path, fixtures):
    path = fixtures / "squad_dev_sample.json"
    original = read_squad(path)
    directory = write_splits(tmp_path / "squad", SQUAD_FEATURES, validation=squad_as_hub(path))
    from_hub = read_squad(local_file(f"hub:{directory}:validation", "squad"))
    assert len(from_hub) == len(original) > 10
    assert from_hub == original
    from data.squad import SquadDataModule          # a split to predict on: read as SQuAD, not as JSON lines
    assert SquadDataModule(predict_file=f"hub:{directory}:validation")._read("predict") == original


def test_text_split_keeps_lines_with_or_without_their_newline(tmp_path, fixtures):
    original = (fixtures / "tinyshakespeare_head.txt").read_text()
    lines = original.splitlines(keepends=True)
    features = Features({"text": Value("string")})
    kept = write_splits(tmp_path / "kept", features, train={"text": lines})                          # wikitext's way
    bare = write_splits(tmp_path / "bare", features, train={"text": [x.rstrip("\n") for x in lines]})
    expected = original if original.endswith("\n") else original + "\n"      # every row ends its line
    for directory in (kept, bare):
        assert read_documents([local_file(f"hub:{directory}:train", "text")]) == [expected]


def test_table_split_feeds_classification_with_class_label_ids(tmp_path, fixtures):
    features = Features({"sentence": Value("string"), "label": ClassLabel(names=["negative", "positive"])})
    directory = write_splits(tmp_path / "glue_sst2", features,
                             train={"sentence": ["a fine film", "dull", "great fun"], "label": [1, 0, 1]})
    dm = ClassificationDataModule(train_file=f"hub:{directory}:train", labels=["0", "1"],
                                  tokenizer=str(fixtures.parent.parent / "data/samples/sst2/tokenizer.json"),
                                  cache_dir=None)
    dm.setup("fit")
    train = dm._raw["train"]
    assert train["sentence"] == ["a fine film", "dull", "great fun"]
    assert train["targets"] == [1, 0, 1]
    assert train["_line"] == [1, 2, 3]                 # lines of the written file: errors can name them


def test_written_once_and_again_when_the_data_changes(tmp_path):
    features = Features({"text": Value("string")})
    directory = write_splits(tmp_path / "corpus", features, train={"text": ["one", "two"]})
    first = local_file(f"hub:{directory}:train", "text")
    mtime = os.stat(first).st_mtime_ns
    assert local_file(f"hub:{directory}:train", "text") == first and os.stat(first).st_mtime_ns == mtime
    write_splits(tmp_path / "corpus", features, train={"text": ["one", "two", "three"]})
    second = local_file(f"hub:{directory}:train", "text")
    assert second != first and second.read_text() == "one\ntwo\nthree\n"


@pytest.mark.parametrize("spec, message", [
    ("hub:glue", "expected hub:NAME:SPLIT or hub:NAME:CONFIG:SPLIT"),
    ("hub:a:b:c:d", "expected hub:NAME:SPLIT or hub:NAME:CONFIG:SPLIT"),
    ("hub:glue::train", "expected hub:NAME:SPLIT or hub:NAME:CONFIG:SPLIT"),
])
def test_malformed_spec_is_one_line(spec, message):
    with pytest.raises(DataError, match=message):
        parse(spec)


def test_missing_split_and_column_are_one_line_naming_the_spec(tmp_path):
    directory = write_splits(tmp_path / "corpus", Features({"body": Value("string")}), train={"body": ["x"]})
    with pytest.raises(DataError) as missing_split:
        local_file(f"hub:{directory}:test", "text")
    assert str(missing_split.value).startswith(f"hub:{directory}:test: cannot load this dataset split")
    with pytest.raises(DataError, match=r"no text column \(text or tokens; columns: body\)"):
        local_file(f"hub:{directory}:train", "text")
    assert "\n" not in str(missing_split.value)


def test_ner_fit_and_test_from_hub_splits(tmp_path, fixtures, no_wandb, capsys):
    """The CLI end to end: `--data.train_file hub:...` trains, and the checkpoint tests on a hub split."""
    rows, names = conll_as_hub(fixtures / "conll_train.txt")
    features = Features({"tokens": Sequence(Value("string")), "ner_tags": Sequence(ClassLabel(names=names))})
    directory = write_splits(tmp_path / "conll2003", features, train=rows, validation=rows, test=rows)
    run_dir = tmp_path / "run"
    common = ["--run_dir", str(run_dir), "--wandb", "false"]
    assert run.main(["ner", "fit", "--data.train_file", f"hub:{directory}:train", "--data.val_file",
                     f"hub:{directory}:validation", "--trainer.max_steps", "2", *common]) == 0
    assert run.main(["ner", "test", "--ckpt_path", "last", "--data.test_file", f"hub:{directory}:test",
                     *common]) == 0
    summary = json.loads((run_dir / "test_metrics.json").read_text())
    assert summary["global_step"] == 2 and "test/f1" in summary["metrics"]


def test_translate_reads_source_and_target_columns_of_a_split(tmp_path, fixtures):
    from data.seq2seq import Seq2SeqDataModule
    en = (fixtures / "multi30k_train_head.en").read_text().splitlines()
    de = (fixtures / "multi30k_train_head.de").read_text().splitlines()
    features = Features({"en": Value("string"), "de": Value("string")})
    directory = write_splits(tmp_path / "multi30k", features, train={"en": en, "de": de},
                             validation={"en": en[:5], "de": de[:5]})
    dm = Seq2SeqDataModule(train_file=f"hub:{directory}:train", val_file=f"hub:{directory}:validation",
                           source_column="en", target_column="de")
    dm.setup("fit")
    assert dm.pairs["train"].sources == en and dm.pairs["train"].targets == de
    assert dm.pairs["val"].targets == de[:5]


def test_translate_split_without_the_configured_columns_names_the_setting(tmp_path, fixtures):
    from data.seq2seq import Seq2SeqDataModule
    features = Features({"en": Value("string"), "de": Value("string")})
    directory = write_splits(tmp_path / "multi30k", features, train={"en": ["a dog"], "de": ["ein Hund"]})
    for settings, bad in (({}, "data.source_column 'source'"), ({"source_column": "en"}, "data.target_column 'target'"),
                          ({"source_column": "fr", "target_column": "de"}, "data.source_column 'fr'")):
        dm = Seq2SeqDataModule(train_file=f"hub:{directory}:train", **settings)
        with pytest.raises(ConfigError, match=f"^{bad}: hub:{re.escape(str(directory))}:train has no such column "
                                              r"\(columns: en, de\)$"):
            dm.setup("fit")
    dm = Seq2SeqDataModule(predict_file=f"hub:{directory}:train", source_column="de", target_column="nowhere")
    dm.setup("predict")                                   # predict reads the source column only
    assert dm.pairs["predict"].sources == ["ein Hund"]


def test_pretrain_corpus_from_a_wikitext_like_split_equals_the_file(tmp_path, fixtures):
    from data.pretrain import read_corpus
    lines = (fixtures / "pretrain_wikitext.txt").read_text().splitlines(keepends=True)
    directory = write_splits(tmp_path / "wikitext", Features({"text": Value("string")}), train={"text": lines})
    words = lambda documents: [[s.text for s in d] for d in documents]        # noqa: E731
    from_hub = read_corpus([f"hub:{directory}:train"])
    assert words(from_hub) == words(read_corpus([fixtures / "pretrain_wikitext.txt"])) and len(from_hub) > 1


def test_lm_fit_and_test_from_hub_splits(tmp_path, fixtures, no_wandb):
    text = (fixtures / "tinyshakespeare_head.txt").read_text()
    unseen = (fixtures / "tinyshakespeare_test.txt").read_text()
    directory = write_splits(tmp_path / "shakespeare", Features({"text": Value("string")}),
                             train={"text": [text]}, test={"text": [unseen]})
    common = ["--run_dir", str(tmp_path / "run"), "--wandb", "false"]
    assert run.main(["lm", "fit", "--data.train_files", f"[hub:{directory}:train]", "--trainer.max_steps", "2",
                     *common]) == 0
    assert run.main(["lm", "test", "--ckpt_path", "last", "--data.test_file", f"hub:{directory}:test", *common]) == 0
    assert "test/loss" in json.loads((tmp_path / "run" / "test_metrics.json").read_text())["metrics"]


def test_real_conll_and_squad_splits_read_as_their_files(tmp_path, shared_data):
    """The whole CoNLL-2003 training set and SQuAD v1.1 dev, laid out as their hub versions (conll2003's nine
    ClassLabel names in its order), read back equal to the files."""
    conll = shared_data("conll2003", "train.txt")
    rows, _ = conll_as_hub(conll)
    hub_names = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
    ours = label_set(read_conll(conll))
    rows["ner_tags"] = [[hub_names.index(ours[t]) for t in tags] for tags in rows["ner_tags"]]
    features = Features({"tokens": Sequence(Value("string")), "ner_tags": Sequence(ClassLabel(names=hub_names))})
    directory = write_splits(tmp_path / "conll2003", features, train=rows)
    original = read_conll(conll)
    from_hub = read_conll(local_file(f"hub:{directory}:train", "conll"))
    assert len(original) > 14_000
    assert [(s.words, s.tags, s.doc) for s in from_hub] == [(s.words, s.tags, s.doc) for s in original]

    squad = shared_data("squad", "dev-v1.1.json")
    directory = write_splits(tmp_path / "squad", SQUAD_FEATURES, validation=squad_as_hub(squad))
    original = read_squad(squad)
    assert len(original) == 10_570
    assert read_squad(local_file(f"hub:{directory}:validation", "squad")) == original


def test_squad_rows_in_any_order_give_whole_articles(tmp_path, fixtures):
    """Rows of one article need not be adjacent: articles are whole, so train_articles / eval_articles split by
    article and no evaluation question reaches training."""
    path = fixtures / "squad_dev_sample.json"
    rows = squad_as_hub(path)
    order = sorted(range(len(rows["id"])), key=lambda i: (i % 3, i))          # interleave the articles
    shuffled = {key: [values[i] for i in order] for key, values in rows.items()}
    directory = write_splits(tmp_path / "squad", SQUAD_FEATURES, validation=shuffled)
    written = json.loads(local_file(f"hub:{directory}:validation", "squad").read_text())
    original = json.loads(path.read_text())
    assert [a["title"] for a in written["data"]] == [a["title"] for a in original["data"]]
    assert sorted(q.id for q in read_squad(local_file(f"hub:{directory}:validation", "squad"))) == \
        sorted(q.id for q in read_squad(path))


def test_null_values_and_an_unwritable_cache_are_one_line(tmp_path, monkeypatch):
    directory = write_splits(tmp_path / "corpus", Features({"text": Value("string")}), train={"text": ["a", None]})
    with pytest.raises(DataError, match=r":train, row 1: no text \(null\)$"):
        local_file(f"hub:{directory}:train", "text")
    directory = write_splits(tmp_path / "ok", Features({"text": Value("string")}), train={"text": ["a"]})
    (tmp_path / "a_file").write_text("")
    monkeypatch.setenv("NLP_HUB_CACHE", str(tmp_path / "a_file"))
    with pytest.raises(DataError, match=r"cannot write its local copy under .*a_file .*set NLP_HUB_CACHE"):
        local_file(f"hub:{directory}:train", "text")


def test_ner_predict_tags_the_words_of_a_conll_split(tmp_path, fixtures, no_wandb):
    """ner's predict file is plain text: a split with `tokens` gives one sentence of words a line, a `-DOCSTART-`
    row a blank line between documents; predictions come back one per sentence, its words as given."""
    rows, names = conll_as_hub(fixtures / "conll_test.txt")
    features = Features({"tokens": Sequence(Value("string")), "ner_tags": Sequence(ClassLabel(names=names))})
    directory = write_splits(tmp_path / "conll2003", features, test=rows)
    common = ["--run_dir", str(tmp_path / "run"), "--wandb", "false"]
    assert run.main(["ner", "fit", "--trainer.max_steps", "1", *common]) == 0
    assert run.main(["ner", "predict", "--ckpt_path", "last", "--data.predict_file", f"hub:{directory}:test",
                     *common]) == 0
    predicted = [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    sentences = [words for words in rows["tokens"] if words != ["-DOCSTART-"]]
    assert [p["text"] for p in predicted if p["text"]] == [" ".join(words) for words in sentences]


def test_a_failed_load_of_a_dataset_directory_is_one_stderr_line(tmp_path, capsys, no_wandb):
    """A dataset directory is read without `datasets` progress bars, so an error is the only stderr line."""
    directory = write_splits(tmp_path / "reviews", Features({"review": Value("string")}), train={"review": ["good"]})
    capsys.readouterr()
    assert run.main(["classify", "fit", "--data.train_file", f"hub:{directory}:train", "--wandb", "false",
                     "--run_dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing or empty key 'sentence' (keys: review)" in err[0], err
