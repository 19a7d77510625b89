"""CoNLL reading, validation, IOB1 -> BIO, word <-> sub-word alignment, document windows (issue 4)."""
from __future__ import annotations

import pytest
from conftest import FIXTURES, require_shared
from ner_helpers import tiny_wordpiece

from data.conll import (ConllFormatError, build_windows, casing, entities, iob1_to_bio, label_set, read_conll,
                        read_plain_text, word_pieces, words_to_tags)

TRAIN = FIXTURES / "conll_train.txt"
VALID = FIXTURES / "conll_valid.txt"


def gold_round_trip(sentences, windows, labels):
    """Predict every window's gold labels, map back to words."""
    preds = [[max(label, 0) for label in w.labels] for w in windows]
    return words_to_tags(sentences, windows, preds, labels)


def test_reader_on_real_file():
    sentences = read_conll(TRAIN)
    blocks = [b for b in TRAIN.read_text().split("\n\n") if b.strip() and not b.startswith("-DOCSTART-")]
    assert len(sentences) == len(blocks) == 110
    assert sentences[0].words[:3] == ["EU", "rejects", "German"]
    assert sentences[0].tags[:3] == ["B-ORG", "O", "B-MISC"]
    assert not any(w.startswith("-DOCSTART-") for s in sentences for w in s.words)
    # -DOCSTART- lines split documents: the second document starts at "CRICKET - LEICESTERSHIRE ..."
    docs = [s.doc for s in sentences]
    assert docs == sorted(docs) and len(set(docs)) > 3
    assert label_set(sentences) == ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]


@pytest.mark.parametrize("context,max_length,stride", [("sentence", 512, None), ("document", 64, None),
                                                       ("document", 64, 31)])
def test_alignment_round_trip_real_sentences(tmp_path, context, max_length, stride):
    tok = tiny_wordpiece(tmp_path)
    sentences = read_conll(VALID)
    labels = label_set(read_conll(TRAIN))
    windows = build_windows(tok, sentences, {t: i for i, t in enumerate(labels)}, max_length=max_length,
                            context=context, stride=stride)
    assert all(len(w.input_ids) <= max_length for w in windows)
    tags, cut = gold_round_trip(sentences, windows, labels)
    assert cut == 0
    assert tags == [s.tags for s in sentences]
    # every word is predicted exactly once, from its first sub-token
    seen = [(si, wi) for w in windows for _, si, wi in w.targets]
    assert len(seen) == len(set(seen)) == sum(len(s.words) for s in sentences)
    for w in windows:
        for pos, si, wi in w.targets:
            assert w.input_ids[pos] == word_pieces(tok, [sentences[si].words[wi]])[0][0]
    if context == "document" and stride is None:
        assert len(windows) < len(sentences)      # sentences of a document share windows


def test_sub_tokens_decode_back_to_words(tmp_path):
    tok = tiny_wordpiece(tmp_path)
    for s in read_conll(VALID)[:40]:
        for word, pieces in zip(s.words, word_pieces(tok, s.words)):
            text = "".join(tok.id_to_token(p).removeprefix("##") for p in pieces)
            assert text == word.lower()


def test_truncated_sentence_is_tagged_o_and_counted(tmp_path):
    tok = tiny_wordpiece(tmp_path)
    sentences = read_conll(VALID)
    long = max(sentences, key=lambda s: len(s.words))
    assert len(long.words) > 20
    labels = label_set(read_conll(TRAIN))
    windows = build_windows(tok, [long], {t: i for i, t in enumerate(labels)}, max_length=12)
    assert len(windows[0].input_ids) == 12
    tags, cut = gold_round_trip([long], windows, labels)
    kept = len(windows[0].targets)
    assert 0 < kept < len(long.words)
    assert cut == len(long.words) - kept        # counted ...
    assert len(tags[0]) == len(long.words)      # ... never dropped
    assert tags[0][:kept] == long.tags[:kept]
    assert tags[0][kept:] == ["O"] * cut


def test_real_tokenizer_round_trip():
    from data.tokenization import load_wordpiece
    tok = load_wordpiece(require_shared("models", "all-MiniLM-L6-v2"))
    sentences = read_conll(VALID)
    labels = label_set(read_conll(TRAIN))
    windows = build_windows(tok, sentences, {t: i for i, t in enumerate(labels)}, max_length=128,
                            context="document", stride=63)
    tags, cut = gold_round_trip(sentences, windows, labels)
    assert cut == 0 and tags == [s.tags for s in sentences]


def test_label_all_subtokens_uses_inside_tags(tmp_path):
    tok = tiny_wordpiece(tmp_path, whole_words=False)     # characters only: every word splits
    labels = ["O", "B-PER", "I-PER"]
    from data.conll import Sentence
    s = Sentence(["Peter", "Blackburn"], ["B-PER", "I-PER"], 0)
    w = build_windows(tok, [s], {t: i for i, t in enumerate(labels)}, label_all_subtokens=True)[0]
    assert w.labels == [-100, 1] + [2] * 4 + [2] * 9 + [-100]


def write(tmp_path, text):
    path = tmp_path / "bad.txt"
    path.write_text(text)
    return path


def test_wrong_column_count_names_file_and_line(tmp_path):
    path = write(tmp_path, "-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ O\n")
    with pytest.raises(ConllFormatError, match=rf"^{path}, line 4: expected 4 columns .* got 3") as err:
        read_conll(path)
    assert "\n" not in str(err.value)


def test_strict_bio_rejects_inside_without_begin(tmp_path):
    path = write(tmp_path, "EU B-ORG\nGerman I-MISC\n\n")
    read_conll(path)                                          # lenient by default
    with pytest.raises(ConllFormatError, match=rf"^{path}, line 2: 'I-MISC' after 'B-ORG' is not valid BIO"):
        read_conll(path, strict_bio=True)


def test_unknown_tag_names_file_and_line(tmp_path):
    path = write(tmp_path, "EU B-ORG\n\nPeter B-PERSON\n")
    with pytest.raises(ConllFormatError, match=rf"^{path}, line 3: tag 'B-PERSON' is not in the label set"):
        read_conll(path, labels=label_set(read_conll(TRAIN)))
    path = write(tmp_path, "EU B-ORG\nrejects X-FOO\n")
    with pytest.raises(ConllFormatError, match=rf"^{path}, line 2: tag 'X-FOO' is not BIO"):
        read_conll(path)


def test_iob1_switch(tmp_path):
    assert iob1_to_bio(["I-PER", "I-PER", "B-PER", "O", "I-LOC", "I-ORG"]) == \
        ["B-PER", "I-PER", "B-PER", "O", "B-LOC", "B-ORG"]
    path = write(tmp_path, "Peter I-PER\nBlackburn I-PER\nsaid O\n")
    with pytest.raises(ConllFormatError):
        read_conll(path, strict_bio=True)
    assert read_conll(path, iob1=True, strict_bio=True)[0].tags == ["B-PER", "I-PER", "O"]


def test_entities_default_and_strict():
    tags = ["B-PER", "I-PER", "O", "I-LOC", "I-LOC", "B-ORG", "I-MISC"]
    assert entities(tags) == [("PER", 0, 1), ("LOC", 3, 4), ("ORG", 5, 5), ("MISC", 6, 6)]
    assert entities(tags, strict=True) == [("PER", 0, 1), ("ORG", 5, 5)]


def test_plain_text_tokenized_on_whitespace_and_punctuation(tmp_path):
    path = tmp_path / "in.txt"
    path.write_text("EU rejects German call, says Peter.\n\nNew line\n")
    sents = read_plain_text(path)
    assert sents[0].words == ["EU", "rejects", "German", "call", ",", "says", "Peter", "."]
    assert [sents[0].text[a:b] for a, b in sents[0].spans] == sents[0].words
    assert sents[0].doc != sents[1].doc                    # a blank line separates documents


def test_casing_classes():
    assert [casing(w) for w in ["the", "Peter", "EU", "McDonald", "1996-08-22", ",", "A"]] == [1, 2, 3, 4, 5, 0, 2]


def test_limit_train_keeps_the_first_sentences_of_the_training_file_only():
    from data.conll import CoNLLDataModule
    dm = CoNLLDataModule(tokenizer=str(FIXTURES / "conll_vocab.txt"), train_file=str(FIXTURES / "conll_train.txt"),
                         val_file=str(FIXTURES / "conll_valid.txt"), limit_train=5)
    dm.setup("fit")
    _, windows = dm.examples("train")
    assert sorted({s for w in windows for _, s, _ in w.targets}) == [0, 1, 2, 3, 4]
    _, val_windows = dm.examples("val")
    assert len({s for w in val_windows for _, s, _ in w.targets}) == len(dm.sentences["val"]) > 5   # eval: all
