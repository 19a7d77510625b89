"""Sequence-to-sequence data (data/seq2seq.py) on Multi30k and AESLC cuts: readers, the joint subword vocabulary,
encoding and length filtering, and every bad input the readers must name by file and line."""
from __future__ import annotations

import json
import time

import pytest
from conftest import FIXTURES
from tokenizers import Tokenizer

from data.errors import ConfigError, DataError
from data.seq2seq import (BOS_ID, EOS_ID, PAD_ID, SPECIAL_TOKENS, UNK_ID, encode_pairs, filter_by_length,
                          read_aeslc, read_pairs, read_parallel, train_tokenizer)

TRAIN_EN, TRAIN_DE = FIXTURES / "multi30k_train_head.en", FIXTURES / "multi30k_train_head.de"
VAL_EN, VAL_DE = FIXTURES / "multi30k_val_head.en", FIXTURES / "multi30k_val_head.de"


@pytest.fixture(scope="module")
def fixture_tokenizer() -> Tokenizer:
    train = read_parallel(TRAIN_EN, TRAIN_DE)
    return train_tokenizer(train.sources + train.targets, vocab_size=2000)


def decode(tokenizer: Tokenizer, text: str) -> str:
    return tokenizer.decode(tokenizer.encode(text, add_special_tokens=False).ids)


# ------------------------------------------------------------------------------------------------ readers
def test_read_parallel_keeps_pairs_aligned_with_their_lines():
    pairs = read_parallel(TRAIN_EN, TRAIN_DE)
    assert len(pairs) == 1000 and pairs.lines == list(range(1, 1001))
    assert pairs.sources[0] == "Two young, White males are outside near many bushes."
    assert pairs.targets[0] == "Zwei junge weiße Männer sind im Freien in der Nähe vieler Büsche."
    assert pairs.references[2] == [pairs.targets[2]]
    raw_de = TRAIN_DE.read_text(encoding="utf-8").split("\n")
    assert pairs.targets == [line.strip() for line in raw_de[:1000]]      # stripped, nothing else changed
    subset = pairs.subset([5, 1])
    assert subset.sources == [pairs.sources[5], pairs.sources[1]] and subset.lines == [6, 2]


def test_bad_input_misaligned_files_name_both_files_and_counts(tmp_path):
    src, tgt = tmp_path / "train.en", tmp_path / "train.de"
    src.write_text("".join(line + "\n" for line in read_parallel(VAL_EN, VAL_DE).sources), encoding="utf-8")
    tgt.write_text("".join(line + "\n" for line in read_parallel(VAL_EN, VAL_DE).targets[:59]), encoding="utf-8")
    with pytest.raises(DataError) as e:
        read_parallel(src, tgt)
    message = str(e.value)
    assert "\n" not in message and str(src) in message and str(tgt) in message
    assert "60 lines" in message and "has 59" in message


@pytest.mark.parametrize("blank", ["", "   ", "\t"])
def test_bad_input_empty_line_is_reported_with_its_number(tmp_path, blank):
    lines = VAL_DE.read_text(encoding="utf-8").split("\n")[:10]
    lines[6] = blank
    tgt = tmp_path / "val.de"
    tgt.write_text("\n".join(lines) + "\n", encoding="utf-8")
    src = tmp_path / "val.en"
    src.write_text("\n".join(VAL_EN.read_text(encoding="utf-8").split("\n")[:10]) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"^{tgt}, line 7: empty line"):
        read_parallel(src, tgt)


def test_bad_input_missing_file_and_bad_utf8(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read_parallel(tmp_path / "nope.en", VAL_DE)
    bad = tmp_path / "bad.de"
    bad.write_bytes("Ein Hund.\nZwei Männer.\n".encode("utf-8") + b"Eine Katze \xff.\n")
    with pytest.raises(DataError, match=rf"^{bad}, line 3: not UTF-8 text"):
        read_parallel(VAL_EN, bad)


def test_read_pairs_from_tsv_and_jsonl_equals_the_parallel_files(tmp_path):
    parallel = read_parallel(VAL_EN, VAL_DE)
    tsv = tmp_path / "val.tsv"
    tsv.write_text("en\tde\n" + "".join(f"{s}\t{t}\n" for s, t in zip(parallel.sources, parallel.targets)),
                   encoding="utf-8")
    jsonl = tmp_path / "val.jsonl"
    jsonl.write_text("".join(json.dumps({"de": t, "en": s}) + "\n" for s, t in zip(parallel.sources, parallel.targets)),
                     encoding="utf-8")
    from_tsv, from_jsonl = read_pairs(tsv, "en", "de"), read_pairs(jsonl, "en", "de")
    for pairs in (from_tsv, from_jsonl):
        assert pairs.sources == parallel.sources and pairs.targets == parallel.targets
    assert from_tsv.lines == list(range(2, 62)) and from_jsonl.lines == list(range(1, 61))   # header, or none


def test_bad_input_jsonl_row_without_target_key(tmp_path):
    rows = [json.loads(line) for line in (FIXTURES / "aeslc_train_head.jsonl").read_text().splitlines()[:5]]
    del rows[3]["subject"]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with pytest.raises(DataError, match=rf"^{path}, line 4: missing or empty key 'subject'"):
        read_aeslc(path)


def test_bad_input_empty_email(tmp_path):
    rows = [json.loads(line) for line in (FIXTURES / "aeslc_dev_head.jsonl").read_text().splitlines()[:5]]
    rows[1]["email"] = "  \n "
    path = tmp_path / "dev.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with pytest.raises(DataError, match=rf"^{path}, line 2: missing or empty key 'email'"):
        read_aeslc(path)


def test_bad_input_annotations_must_be_a_list_of_strings(tmp_path):
    rows = [json.loads(line) for line in (FIXTURES / "aeslc_dev_head.jsonl").read_text().splitlines()[:5]]
    rows[4]["annotations"] = "meeting confirmation"
    path = tmp_path / "dev.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with pytest.raises(DataError, match=rf"^{path}, line 5: 'annotations' must be a list of non-empty strings"):
        read_aeslc(path)
    with pytest.raises(ConfigError, match="references_column"):
        read_pairs(FIXTURES / "rte_dev.tsv", "sentence1", "sentence2", references_column="annotations")


def test_read_aeslc_with_and_without_annotations():
    dev = read_aeslc(FIXTURES / "aeslc_dev_head.jsonl")
    raw = [json.loads(line) for line in (FIXTURES / "aeslc_dev_head.jsonl").read_text().splitlines()]
    assert len(dev) == 60 and dev.lines == list(range(1, 61))
    assert dev.targets[0] == "Confirmation: Risk Management Simulation Meeting 10/30/01"
    assert dev.references[0] == [dev.targets[0], "meeting confimation - tues, 8/10", "meeting confirmation",
                                 "meeting confirmed"]
    assert all(len(refs) == 4 and refs[0] == t for refs, t in zip(dev.references, dev.targets))
    assert dev.sources == [r["email"].strip() for r in raw]
    train = read_aeslc(FIXTURES / "aeslc_train_head.jsonl")
    assert len(train) == 40 and all(refs == [t] for refs, t in zip(train.references, train.targets))


# ------------------------------------------------------------------------------------------------ tokenizer
def test_tokenizer_special_ids_round_trip_and_serialisation(fixture_tokenizer):
    tok = fixture_tokenizer
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == [PAD_ID, BOS_ID, EOS_ID, UNK_ID] == [0, 1, 2, 3]
    assert tok.get_vocab_size() == 2000
    val = read_parallel(VAL_EN, VAL_DE)
    failures = [line for line in val.sources + val.targets if decode(tok, line) != line]
    assert failures == []
    assert decode(tok, "Zwei  Hunde im   Schnee.") == "Zwei  Hunde im   Schnee."     # runs of spaces survive
    restored = Tokenizer.from_str(tok.to_str())
    assert restored.encode(val.targets[0]).ids == tok.encode(val.targets[0]).ids
    unigram = train_tokenizer(read_parallel(TRAIN_EN, TRAIN_DE).targets, vocab_size=1000, model="unigram")
    assert [unigram.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3]
    assert all(decode(unigram, line) == line for line in val.targets)


def test_tokenizer_round_trips_the_multi30k_test_set(shared_data):
    """A joint 8,000-subword BPE on the 29,000 training pairs decodes every test line back to itself."""
    root = shared_data("multi30k")
    train = read_parallel(root / "train.en", root / "train.de")
    start = time.perf_counter()
    tok = train_tokenizer(train.sources + train.targets, vocab_size=8000)
    seconds = time.perf_counter() - start
    print(f"BPE, 8,000 subwords, 29,000 pairs: trained in {seconds:.1f} s")
    assert seconds < 60                                       # a few seconds; generous for a busy machine
    test = read_parallel(root / "test_2016_flickr.en", root / "test_2016_flickr.de")
    failures = [(side, n, line) for side, lines in (("en", test.sources), ("de", test.targets))
                for n, line in enumerate(lines, start=1) if decode(tok, line) != line]
    assert len(test) == 1000 and failures == []
    assert all(UNK_ID not in tok.encode(line).ids for line in test.sources + test.targets)


def test_lowercase_tokenizer_folds_case_and_keeps_it_in_the_checkpoint_string():
    """`lowercase=True` (for ROUGE, which ignores case): one piece sequence for every casing of a word, decoding gives
    the lowercased line, and the normaliser survives `to_str` (what a checkpoint stores)."""
    train = read_aeslc(FIXTURES / "aeslc_train_head.jsonl")
    tok = train_tokenizer(train.sources + train.targets, vocab_size=800, lowercase=True)
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3]
    ids = tok.encode("meeting", add_special_tokens=False).ids
    assert tok.encode("Meeting", add_special_tokens=False).ids == ids == tok.encode("MEETING", add_special_tokens=False).ids
    assert all(not any(c.isupper() for c in piece) for piece in tok.get_vocab())
    restored = Tokenizer.from_str(tok.to_str())
    known = [line for line in train.targets if UNK_ID not in tok.encode(line).ids]
    assert len(known) == len(train.targets)                   # trained on these very lines: no <unk>
    assert [decode(restored, line) for line in known] == [line.lower() for line in known]
    cased = train_tokenizer(train.sources + train.targets, vocab_size=800)
    assert cased.encode("Meeting", add_special_tokens=False).ids != cased.encode("meeting", add_special_tokens=False).ids


def test_bad_input_tokenizer_settings():
    with pytest.raises(ConfigError, match="data.vocab_size 4"):
        train_tokenizer(["a b"], vocab_size=4)
    with pytest.raises(ConfigError, match="data.tokenizer_model 'wordpiece'"):
        train_tokenizer(["a b"], model="wordpiece")


# ------------------------------------------------------------------------------------------------ encoding
def test_encode_pairs_adds_bos_eos_and_truncates(fixture_tokenizer):
    val = read_parallel(VAL_EN, VAL_DE)
    full = encode_pairs(fixture_tokenizer, val.sources, val.targets)
    for src, tgt, n_src, n_tgt, source, target in zip(full.source_ids, full.target_ids, full.source_tokens,
                                                      full.target_tokens, val.sources, val.targets):
        assert src[-1] == EOS_ID and len(src) == n_src + 1
        assert tgt[0] == BOS_ID and tgt[-1] == EOS_ID and len(tgt) == n_tgt + 2
        assert fixture_tokenizer.decode(src) == source and fixture_tokenizer.decode(tgt) == target
    assert full.num_truncated == (0, 0)
    assert full.lengths == [max(len(s), len(t) - 1) for s, t in zip(full.source_ids, full.target_ids)]
    cut = encode_pairs(fixture_tokenizer, val.sources, val.targets, max_source_length=12, max_target_length=10)
    assert max(map(len, cut.source_ids)) == 12 and max(len(t) - 1 for t in cut.target_ids) == 10
    assert cut.num_truncated == (sum(n > 11 for n in full.source_tokens), sum(n > 9 for n in full.target_tokens))
    assert cut.num_truncated[0] > 0 and cut.num_truncated[1] > 0
    long = max(range(len(val)), key=lambda i: full.target_tokens[i])
    assert cut.target_ids[long] == full.target_ids[long][:10] + [EOS_ID]
    assert cut.source_tokens == full.source_tokens                   # counts before truncation
    with pytest.raises(ConfigError, match="data.max_source_length 1"):
        encode_pairs(fixture_tokenizer, val.sources, val.targets, max_source_length=1)


def test_filter_by_length_reports_what_it_removes(fixture_tokenizer):
    train = read_parallel(TRAIN_EN, TRAIN_DE)
    enc = encode_pairs(fixture_tokenizer, train.sources, train.targets)
    report = filter_by_length(enc.source_tokens, enc.target_tokens, min_tokens=8, max_tokens=30, max_ratio=1.8)
    assert len(report.kept) + report.removed == len(train)
    assert report.too_short > 0 and report.too_long > 0 and report.bad_ratio > 0
    for i in report.kept:
        s, t = enc.source_tokens[i], enc.target_tokens[i]
        assert 8 <= min(s, t) and max(s, t) <= 30 and max(s, t) <= 1.8 * min(s, t)
    removed = set(range(len(train))) - set(report.kept)
    assert sum(min(enc.source_tokens[i], enc.target_tokens[i]) < 8 for i in removed) == report.too_short
    assert report.summary().startswith(f"kept {len(report.kept)} pairs, removed {report.removed} (")
    kept = enc.subset(report.kept)
    assert len(kept) == len(report.kept) and kept.source_ids[0] == enc.source_ids[report.kept[0]]


def test_filter_by_length_counts_each_pair_under_its_first_rule():
    report = filter_by_length([1, 3, 40, 4, 10, 2], [1, 9, 41, 30, 12, 0], min_tokens=2, max_tokens=32, max_ratio=2.0)
    # too short: (1, 1) and (2, 0); too long: (40, 41); ratio over 2: (3, 9) and (4, 30); kept: (10, 12)
    assert report.kept == [4]
    assert (report.too_short, report.too_long, report.bad_ratio) == (2, 1, 2)
    assert filter_by_length([3, 5], [4, 6]).kept == [0, 1]                      # defaults keep everything
    with pytest.raises(ConfigError, match="data.max_ratio 0.5"):
        filter_by_length([3], [4], max_ratio=0.5)
