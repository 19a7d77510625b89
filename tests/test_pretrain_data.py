"""BERT pre-training data: corpus formats, sentence splitting, held-out documents, WordPiece vocabulary, NSP pairs,
dynamic (whole-word) masking, and the statistics of both on over a million real tokens."""
from __future__ import annotations

import json
import random
import time

import pytest
import torch

from conftest import FIXTURES, require_shared
from data.errors import ConfigError, DataError
from data.pretrain import (IGNORE_INDEX, IS_NEXT, NOT_NEXT, SPECIAL_TOKENS, CorpusFile, PretrainingCollator,
                           _random_ids, continuation_pieces, corpus_files, create_examples, read_corpus, special_ids, split_heldout, split_sentences,
                           tokenize_documents, train_wordpiece, truncate_pair)
from data.tokenization import load_wordpiece

WIKITEXT = FIXTURES / "pretrain_wikitext.txt"          # the first three articles of WikiText-2 valid
AESLC = FIXTURES / "pretrain_aeslc.jsonl"              # the first 25 AESLC dev emails
SHAKESPEARE = FIXTURES / "tinyshakespeare_head.txt"


def fixture_corpus() -> list:
    return read_corpus([WIKITEXT, SHAKESPEARE, CorpusFile(str(AESLC), text_key="email")])


@pytest.fixture(scope="module")
def vocab():
    return train_wordpiece(fixture_corpus(), vocab_size=2000)


@pytest.fixture(scope="module")
def fixture_examples(vocab):
    documents = tokenize_documents(fixture_corpus(), vocab)
    examples, stats = create_examples(documents, special_ids(vocab), max_length=64, seed=1)
    return documents, examples, stats


def batches(examples, size):
    return [examples[i:i + size] for i in range(0, len(examples), size)]


# --- sentences -------------------------------------------------------------------------------------------
def test_sentences_of_a_real_wikitext_paragraph():
    line = WIKITEXT.read_text(encoding="utf-8").splitlines()[3]        # Homarus gammarus, first paragraph
    sentences = split_sentences(line.strip())
    assert len(sentences) == 6
    assert sentences[1] == "It is closely related to the American lobster , H. americanus ."   # an initial
    assert sentences[-1].startswith("Homarus gammarus is a highly esteemed food")
    assert " ".join(sentences) == line.strip()                          # nothing lost but the separating spaces


def test_sentences_keep_wikitext_numbers_and_split_raw_text():
    # WikiText writes decimal points as " @.@ ": never a boundary even before a digit
    line = ("Homarus gammarus is a large <unk> , with a body length up to 60 centimetres ( 24 in ) and weigh 0 @.@ 7 "
            "– 2 @.@ 2 kg ( 1 @.@ 5 – 4 @.@ 9 lb ) . Like other crustaceans , lobsters have a hard <unk> .")
    assert [s[:4] for s in split_sentences(line)] == ["Homa", "Like"]
    assert split_sentences("Dr. Smith met the U.S. Army in St. Louis. \"Why?\" he asked. 3 days later he left!") == [
        "Dr. Smith met the U.S. Army in St. Louis.", "\"Why?\" he asked.", "3 days later he left!"]
    assert split_sentences("It rose in 1990. then fell.") == ["It rose in 1990. then fell."]    # lower case: same


# --- formats and documents -------------------------------------------------------------------------------
def test_wikitext_titles_start_documents_and_headings_are_dropped():
    lines = WIKITEXT.read_text(encoding="utf-8").splitlines()
    titles = [n for n, line in enumerate(lines, start=1) if line.startswith(" = ") and not line.startswith(" = = ")]
    assert titles == [2, 48, 79]
    documents = read_corpus([WIKITEXT])
    assert len(documents) == 3
    for doc, start, stop in zip(documents, titles, titles[1:] + [len(lines) + 1]):
        assert all(start < s.line < stop for s in doc)                  # sections (= = ... = =) did not cut it
        assert {s.line for s in doc} == {n for n in range(start + 1, stop)
                                         if lines[n - 1].strip() and not lines[n - 1].strip().startswith("=")}
    assert not any(s.text.startswith("=") for doc in documents for s in doc)


def test_plain_text_documents_end_at_blank_lines():
    text = SHAKESPEARE.read_text(encoding="utf-8")
    documents = read_corpus([SHAKESPEARE])
    assert len(documents) == len([block for block in text.split("\n\n") if block.strip()])
    assert [(s.text, s.line) for s in documents[1]] == [("All:", 4), ("Speak, speak.", 5)]


def test_jsonl_gives_one_document_per_row():
    rows = [json.loads(line) for line in AESLC.read_text(encoding="utf-8").splitlines()]
    documents = read_corpus([CorpusFile(str(AESLC), text_key="email")])
    assert len(documents) == len(rows) == 25
    for n, (doc, row) in enumerate(zip(documents, rows), start=1):
        assert {s.line for s in doc} == {n}
        assert " ".join(s.text for s in doc).split() == row["email"].split()


def test_formats_mix_and_the_format_setting_decides():
    documents = fixture_corpus()
    assert len(documents) == 3 + len(read_corpus([SHAKESPEARE])) + 25
    assert [documents[i][0].path for i in (0, 3, -1)] == [str(WIKITEXT), str(SHAKESPEARE), str(AESLC)]
    as_text = read_corpus([CorpusFile(str(WIKITEXT), format="text")])   # blank lines cut, headings kept as text
    assert len(as_text) > 3 and as_text[0][0].text == "= Homarus gammarus ="


def test_heldout_documents_are_whole_and_disjoint():
    documents = fixture_corpus()
    train, heldout = split_heldout(documents, 0.2, seed=3)
    ids = lambda docs: {tuple((s.path, s.line, s.text) for s in doc) for doc in docs}  # noqa: E731
    assert len(heldout) == round(0.2 * len(documents)) and len(train) + len(heldout) == len(documents)
    assert ids(train).isdisjoint(ids(heldout)) and ids(train) | ids(heldout) == ids(documents)
    sentences = lambda docs: {(s.path, s.line, s.text) for doc in docs for s in doc}  # noqa: E731
    assert sentences(train).isdisjoint(sentences(heldout))             # no line of a held-out document trains
    assert split_heldout(documents, 0.2, seed=3) == (train, heldout)
    assert split_heldout(documents, 0.2, seed=4)[1] != heldout
    assert len(split_heldout(documents, 7, seed=0)[1]) == 7
    with pytest.raises(ConfigError, match=r"data.heldout 1.5"):
        split_heldout(documents, 1.5)


# --- vocabulary ------------------------------------------------------------------------------------------
def test_wordpiece_trained_on_the_given_documents(vocab):
    assert [vocab.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert vocab.get_vocab_size() == 2000
    wiki_text = WIKITEXT.read_text(encoding="utf-8").lower()
    wiki_only = train_wordpiece(read_corpus([WIKITEXT]), vocab_size=1000)
    pieces = [t.removeprefix("##") for t in wiki_only.get_vocab() if t not in SPECIAL_TOKENS]
    assert "lobster" in pieces and all(piece in wiki_text for piece in pieces)     # learnt from these texts only
    assert "thou" in vocab.get_vocab() and "thou" not in pieces                     # Shakespeare's word
    pair = vocab.encode("The Lobster", "is blue")
    assert pair.tokens[0] == "[CLS]" and pair.tokens.count("[SEP]") == 2 and pair.tokens[1:3] == ["the", "lobster"]
    assert pair.type_ids == [0] * (pair.tokens.index("[SEP]") + 1) + [1] * (len(pair.tokens) - pair.tokens.index("[SEP]") - 1)
    restored = type(vocab).from_str(vocab.to_str())
    assert restored.encode("Homarus gammarus , a lobster").ids == vocab.encode("Homarus gammarus , a lobster").ids


# --- sentence pairs --------------------------------------------------------------------------------------
def contiguous_in(part: list[int], whole: list[int]) -> bool:
    return any(whole[k:k + len(part)] == part for k in range(len(whole) - len(part) + 1))


def test_pairs_follow_bert(vocab, fixture_examples):
    documents, examples, stats = fixture_examples
    special = special_ids(vocab)
    assert stats.examples == len(examples) > 300
    for e in examples:
        ids, types = e["input_ids"], e["token_type_ids"]
        first_sep = ids.index(special.sep)
        assert ids[0] == special.cls and ids[-1] == special.sep and ids.count(special.sep) == 2 and len(ids) <= 64
        assert types == [0] * (first_sep + 1) + [1] * (len(ids) - first_sep - 1)
        a, b = ids[1:first_sep], ids[first_sep + 1:-1]
        assert a and b
        (a0, a1), (b0, b1) = e["sentences_a"], e["sentences_b"]
        assert contiguous_in(a, [t for s in documents[e["doc_a"]].sentences[a0:a1] for t in s])
        assert contiguous_in(b, [t for s in documents[e["doc_b"]].sentences[b0:b1] for t in s])
        if e["nsp_label"] == IS_NEXT:
            assert e["doc_b"] == e["doc_a"] and b0 == a1                 # B is the text right after A
        else:
            assert e["nsp_label"] == NOT_NEXT and e["doc_b"] != e["doc_a"]
    again, _ = create_examples(documents, special, max_length=64, seed=1)
    other_epoch, _ = create_examples(documents, special, max_length=64, seed=1, epoch=1)
    assert again == examples and [e["input_ids"] for e in other_epoch] != [e["input_ids"] for e in examples]


def test_short_sequence_probability_shortens_pairs(vocab, fixture_examples):
    documents = read_corpus([WIKITEXT])
    tokens = tokenize_documents(documents, vocab)
    mean_length = lambda p: (lambda ex: sum(len(e["input_ids"]) for e in ex) / len(ex))(  # noqa: E731
        create_examples(tokens, special_ids(vocab), max_length=128, short_seq_prob=p)[0])
    assert mean_length(0.0) > 120 and mean_length(1.0) < 0.85 * mean_length(0.0)


def test_truncation_cuts_the_longer_segment_at_either_end():
    a, b = list(range(100)), list(range(1000, 1010))
    cut_a, cut_b = truncate_pair(a, b, 30, random.Random(0))
    assert cut_b == b and len(cut_a) == 20 and contiguous_in(cut_a, a) and cut_a[0] > 0 and cut_a[-1] < 99


# --- masking ---------------------------------------------------------------------------------------------
def test_random_replacements_never_draw_special_ids():
    ids = _random_ids(torch.Size([200_000]), 10, [4, 0, 3], torch.Generator().manual_seed(0))
    counts = torch.bincount(ids, minlength=10)
    assert counts[[0, 3, 4]].sum() == 0
    assert (counts[[1, 2, 5, 6, 7, 8, 9]] - 200_000 / 7).abs().max() < 600   # uniform over the other seven


def words_cut_apart(collate: PretrainingCollator, continuation: torch.Tensor, examples) -> tuple[int, int, float]:
    """(continuation pieces chosen without the piece before them or the other way round, continuation pieces
    chosen, rate of chosen positions) over the examples, in batches of 32."""
    cut = pieces = chosen = eligible = 0
    for part in batches(examples, 32):
        batch = collate(part)
        original = torch.nn.utils.rnn.pad_sequence([torch.tensor(e["input_ids"]) for e in part], batch_first=True)
        picked = batch["mlm_labels"] != IGNORE_INDEX                                  # (B, T)
        assert (batch["mlm_labels"][picked] == original[picked]).all()
        # a "##" piece that follows a real token belongs to that token's word
        follows = continuation[original][:, 1:] & ~torch.isin(original[:, :-1], collate.special_tensor)
        cut += (picked[:, 1:] != picked[:, :-1])[follows].sum().item()
        pieces += (picked[:, 1:] & follows).sum().item()
        chosen += picked.sum().item()
        eligible += (~torch.isin(original, collate.special_tensor)).sum().item()
    return cut, pieces, chosen / eligible


def test_whole_word_masking_chooses_all_pieces_of_a_word(vocab, fixture_examples):
    _, examples, _ = fixture_examples
    continuation = continuation_pieces(vocab)
    assert continuation.sum() > 500 and all(t.startswith("##") for t, i in vocab.get_vocab().items() if continuation[i])
    cut, pieces, rate = words_cut_apart(PretrainingCollator(vocab, whole_word=True, seed=0), continuation, examples)
    assert cut == 0 and pieces > 500 and abs(rate - 0.15) < 0.015
    cut, _, rate = words_cut_apart(PretrainingCollator(vocab, seed=0), continuation, examples)
    assert cut > 500 and abs(rate - 0.15) < 0.015                                       # per token, words are cut


def test_dataloader_workers_draw_different_masks(vocab, fixture_examples):
    """Each worker holds a copy of the collator; re-seeded from the worker's seed, copies never repeat a mask."""
    same_example = [fixture_examples[1][0]] * 64
    loader = torch.utils.data.DataLoader(same_example, batch_size=32, num_workers=2,
                                         collate_fn=PretrainingCollator(vocab, seed=0))
    first, second = [batch["mlm_labels"] for batch in loader]                  # one batch from each worker
    assert not torch.equal(first, second)


def test_masking_statistics_on_a_million_real_tokens(shared_data):
    start = time.perf_counter()
    tokenizer = load_wordpiece(shared_data("models", "all-MiniLM-L6-v2"))
    documents = read_corpus([shared_data("text", "wikitext-2", "valid.txt"), shared_data("text", "wikitext-2", "test.txt"),
                             shared_data("text", "tinyshakespeare", "input.txt"),
                             CorpusFile(str(shared_data("aeslc", "dev.jsonl")), text_key="email")])
    tokens = tokenize_documents(documents, tokenizer)
    special = special_ids(tokenizer)
    examples, stats = create_examples(tokens, special, max_length=128, seed=0)
    assert abs(stats.is_next / stats.examples - 0.5) < 0.01
    assert all(e["doc_b"] != e["doc_a"] for e in examples if e["nsp_label"] == NOT_NEXT)

    collate = PretrainingCollator(tokenizer, seed=0)
    specials = torch.tensor(special.all())
    eligible = chosen = masked = randomised = kept = 0
    for part in batches(examples, 128):
        batch = collate(part)
        original = torch.nn.utils.rnn.pad_sequence([torch.tensor(e["input_ids"]) for e in part], batch_first=True)
        is_special = torch.isin(original, specials) | (batch["attention_mask"] == 0)
        picked = batch["mlm_labels"] != IGNORE_INDEX
        assert not (picked & is_special).any()                               # never [CLS], [SEP], [PAD], ...
        assert (batch["mlm_labels"][picked] == original[picked]).all()
        assert (batch["input_ids"][~picked] == original[~picked]).all()      # nothing else changes
        out = batch["input_ids"][picked]
        assert not torch.isin(out[out != special.mask], specials).any()      # random tokens are never special
        eligible += (~is_special).sum().item()
        chosen += picked.sum().item()
        masked += (out == special.mask).sum().item()
        kept += (out == original[picked]).sum().item()
        randomised += ((out != special.mask) & (out != original[picked])).sum().item()
    assert eligible > 1_000_000
    assert abs(chosen / eligible - 0.15) < 0.003
    assert abs(masked / chosen - 0.8) < 0.01
    assert abs(randomised / chosen - 0.1) < 0.01 and abs(kept / chosen - 0.1) < 0.01

    # dynamic: the same examples get a new mask on every call, the same seed repeats it
    first, second = collate(examples[:64]), collate(examples[:64])
    assert not torch.equal(first["mlm_labels"], second["mlm_labels"])
    assert torch.equal(PretrainingCollator(tokenizer, seed=5)(examples[:64])["mlm_labels"],
                       PretrainingCollator(tokenizer, seed=5)(examples[:64])["mlm_labels"])
    print(f"\n{stats}; {eligible:,} eligible tokens: chosen {chosen / eligible:.4f}, [MASK] {masked / chosen:.4f}, "
          f"random {randomised / chosen:.4f}, kept {kept / chosen:.4f}; {time.perf_counter() - start:.1f} s")


# --- bad input -------------------------------------------------------------------------------------------
def one_line(error: pytest.ExceptionInfo) -> str:
    assert "\n" not in str(error.value)
    return str(error.value)


def test_bad_input_empty_corpus(tmp_path, vocab):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(DataError, match=r"empty.txt: no text") as error:
        read_corpus([empty])
    one_line(error)
    with pytest.raises(DataError, match=r"no documents with text"):
        create_examples([], special_ids(vocab))


def test_bad_input_single_document(tmp_path, vocab):
    path = tmp_path / "one.txt"
    path.write_text("First sentence here. Second one follows.\nA third line.\n")
    documents = tokenize_documents(read_corpus([path]), vocab)
    with pytest.raises(DataError, match=r"one.txt, line 1: the only document in the corpus") as error:
        create_examples(documents, special_ids(vocab))
    one_line(error)


def test_bad_input_document_shorter_than_two_sentences(tmp_path, vocab):
    """Rule: a one-sentence document is never segment A (it has no next sentence), stays a NotNext partner,
    and is counted; a corpus with no two-sentence document at all is an error."""
    short = tmp_path / "short.txt"
    short.write_text("Thou art a lobster\n")
    documents = tokenize_documents(read_corpus([WIKITEXT, short]), vocab)
    examples, stats = create_examples(documents, special_ids(vocab), max_length=32, seed=0)
    assert stats.single_sentence == 1 and "1 single-sentence documents serve only as NotNext partners" in str(stats)
    assert all(e["doc_a"] != 3 for e in examples)
    assert any(e["doc_b"] == 3 for e in examples)
    only_short = tmp_path / "shorts.txt"
    only_short.write_text("One line.\n\nAnother line.\n")
    with pytest.raises(DataError, match=r"shorts.txt, line 1, ...\): no document has two sentences") as error:
        create_examples(tokenize_documents(read_corpus([only_short]), vocab), special_ids(vocab))
    one_line(error)


def test_bad_input_unknown_format():
    with pytest.raises(ConfigError, match=r"data.files\[1\].format 'xml' \(.*pretrain_aeslc.jsonl\): expected one of"):
        read_corpus([WIKITEXT, CorpusFile(str(AESLC), format="xml")])


def test_bad_input_jsonl_line_without_the_text_key(tmp_path):
    path = tmp_path / "mail.jsonl"
    rows = [json.loads(line) for line in AESLC.read_text(encoding="utf-8").splitlines()[:3]]
    del rows[1]["email"]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(DataError, match=r"mail.jsonl, line 2: missing or empty key 'email'") as error:
        read_corpus([CorpusFile(str(path), text_key="email")])
    one_line(error)


# --- a SQuAD file as a corpus: its training articles' paragraphs, never an evaluation article's ------------
SQUAD = FIXTURES / "squad_dev_sample.json"      # three articles of SQuAD v1.1 dev, 23 + 26 + 24 paragraphs


def test_squad_format_reads_each_paragraph_of_the_chosen_articles_once():
    root = json.loads(SQUAD.read_text(encoding="utf-8"))
    paragraphs = [[p["context"] for p in article["paragraphs"]] for article in root["data"]]
    entries = corpus_files([{"path": str(SQUAD), "format": "squad", "articles": [0, 2]}])
    documents = read_corpus(entries)
    assert len(documents) == len(paragraphs[0]) + len(paragraphs[1]) == 49
    # every document is one paragraph, split into sentences that join back to it; article 2 is read nowhere
    for document, context in zip(documents, paragraphs[0] + paragraphs[1]):
        assert " ".join(s.text for s in document) == " ".join(context.split())
    read = {s.text for d in documents for s in d}
    assert not read & {s for context in paragraphs[2] for s in split_sentences(context)}
    assert len(read_corpus([CorpusFile(str(SQUAD), format="squad")])) == 73      # no range: every article


@pytest.mark.parametrize("entry, message", [
    ({"format": "squad", "articles": [0, 5]}, r"articles range\(0, 5\) of .*squad_dev_sample.json: the file has "
                                              r"articles 0-2"),
    ({"format": "squad", "articles": "0-2"}, r"data.files\[0\].articles '0-2': expected \[first, end\)"),
    ({"format": "text", "articles": [0, 2]}, r"squad_dev_sample.json: 'articles' is for format 'squad' only"),
])
def test_bad_input_squad_articles(entry, message):
    with pytest.raises(ConfigError, match=message) as error:
        read_corpus(corpus_files([{"path": str(SQUAD), **entry}]))
    one_line(error)


def test_predict_line_longer_than_max_length_loses_the_end_of_its_longer_segment(vocab):
    """`pretrain predict` input: [CLS] A [SEP] B [SEP] cut to max_length by dropping the last pieces of whichever
    segment is longer, one piece at a time, and flagged as truncated."""
    from data.pretrain import PretrainDataModule
    dm = PretrainDataModule(max_length=12)
    dm.tokenizer = vocab
    a = "the king of france and the queen of spain met"
    b = "they talked"
    pieces = lambda text: vocab.encode(text, add_special_tokens=False).ids          # noqa: E731
    keep_a = 12 - 3 - len(pieces(b))                        # what is left of A beside [CLS], two [SEP] and B
    assert len(pieces(a)) > keep_a > len(pieces(b))          # A is cut, and stays the longer: B keeps every piece
    row = dm._encode_line(f"{a}\t{b}")
    special = special_ids(vocab)
    assert row["input_ids"] == [special.cls, *pieces(a)[:keep_a], special.sep, *pieces(b), special.sep]
    assert row["token_type_ids"] == [0] * (keep_a + 2) + [1] * (len(pieces(b)) + 1) and row["truncated"] == 1
    short = dm._encode_line(b)
    assert short["input_ids"] == [special.cls, *pieces(b), special.sep] and short["truncated"] == 0
