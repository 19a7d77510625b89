"""tasks/bleu.py equals sacrebleu.corpus_bleu (score to 1e-9, every count exactly) on real text: Multi30k German
references against other real German sentences, damaged copies, exact copies and empty hypotheses; AESLC subjects
with their three extra human references; and the lowercased, tokenised configuration of the Multi30k literature.
sacrebleu is a test dependency only."""
from __future__ import annotations

import json
import random

import pytest
import sacrebleu
from conftest import FIXTURES
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a
from sacrebleu.tokenizers.tokenizer_intl import TokenizerV14International

from tasks.bleu import BLEU, MULTI30K_LITERATURE, tokenize_13a, tokenize_intl
from tasks.rouge import lead_baseline

CONFIGS = [{}, {"lowercase": True}, {"tokenize": "intl"}, MULTI30K_LITERATURE]


def lines(name: str) -> list[str]:
    return (FIXTURES / name).read_text(encoding="utf-8").split("\n")[:-1]


REFERENCES = lines("multi30k_val_head.de")                                   # 60 German references
OTHERS = lines("multi30k_test_head.de")                                      # 200 other real German sentences


def drop_words(text: str, every: int) -> str:
    return " ".join(w for i, w in enumerate(text.split()) if i % every != every - 1)


def shuffle_words(text: str, seed: int) -> str:
    words = text.split()
    random.Random(seed).shuffle(words)
    return " ".join(words)


HYPOTHESES = {
    "other sentences": OTHERS[:60],
    "nearest other sentence": [max(OTHERS, key=lambda o: len(set(o.split()) & set(r.split()))) for r in REFERENCES],
    "every third word dropped": [drop_words(r, 3) for r in REFERENCES],
    "words shuffled": [shuffle_words(r, i) for i, r in enumerate(REFERENCES)],
    "copies": list(REFERENCES),
    "lowercased copies": [r.lower() for r in REFERENCES],
    "half empty": [r if i % 2 else "" for i, r in enumerate(REFERENCES)],
    "all empty": [""] * 60,
}


def assert_equals_sacrebleu(metric: BLEU, hyps: list[str], ref_streams: list[list[str]], **config) -> None:
    expected = sacrebleu.corpus_bleu(hyps, ref_streams, **config)
    got = metric.compute()
    assert got["bleu"] == pytest.approx(expected.score, abs=1e-9)
    assert metric.matches.tolist() == expected.counts and metric.totals.tolist() == expected.totals
    assert (int(metric.hyp_len), int(metric.ref_len)) == (expected.sys_len, expected.ref_len)
    assert got["bp"] == pytest.approx(expected.bp, abs=1e-12)
    assert [got[f"precision_{n}"] for n in range(1, 5)] == pytest.approx(expected.precisions, abs=1e-9)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: str(c) or "default")
@pytest.mark.parametrize("name", list(HYPOTHESES))
def test_bleu_equals_sacrebleu_on_multi30k(config, name):
    hyps = HYPOTHESES[name]
    metric = BLEU(**config)
    metric.update(hyps, REFERENCES)
    assert_equals_sacrebleu(metric, hyps, [REFERENCES], **config)


def test_the_hypothesis_sets_cover_the_cases_that_matter():
    """Zero, partial and full matches, the brevity penalty on and off, an n-gram order without a match."""
    scores = {}
    for name, hyps in HYPOTHESES.items():
        metric = BLEU()
        metric.update(hyps, REFERENCES)
        scores[name] = metric.compute()
    assert scores["copies"]["bleu"] == pytest.approx(100.0) and scores["all empty"]["bleu"] == 0.0
    assert scores["every third word dropped"]["bp"] < 0.7 and scores["words shuffled"]["bp"] == 1.0
    assert 0 < scores["other sentences"]["bleu"] < 5 and 0 < scores["lowercased copies"]["bleu"] < 100
    single = BLEU()                                  # "exp" smoothing: orders 3 and 4 without a match
    single.update(HYPOTHESES["words shuffled"][:1], REFERENCES[:1])
    assert single.matches.tolist()[2:] == [0, 0] and single.compute()["bleu"] > 0
    assert_equals_sacrebleu(single, HYPOTHESES["words shuffled"][:1], [REFERENCES[:1]])


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: str(c) or "default")
def test_bleu_equals_sacrebleu_with_aeslc_multiple_references(config):
    rows = [json.loads(line) for line in lines("aeslc_dev_head.jsonl")]
    hyps = [lead_baseline(r["email"], 4) for r in rows] + [r["annotations"][0] for r in rows]
    refs = [[r["subject"], *r["annotations"]] for r in rows] * 2
    metric = BLEU(**config)
    metric.update(hyps, refs)
    assert_equals_sacrebleu(metric, hyps, [list(stream) for stream in zip(*refs)], **config)
    assert metric.signature().startswith("nrefs:4|")


def test_signature_matches_sacrebleu_except_the_version():
    for config in CONFIGS:
        metric = BLEU(**config)
        metric.update(REFERENCES[:3], [[r] for r in REFERENCES[:3]])
        reference = sacrebleu.BLEU(**config)
        reference.corpus_score(REFERENCES[:3], [REFERENCES[:3]])
        ours, theirs = metric.signature().split("|version:"), reference.get_signature().format().split("|version:")
        assert ours[0] == theirs[0] and ours[1] == "lightning-nlp-1"
    mixed = BLEU()
    mixed.update(REFERENCES[:2], [[REFERENCES[0]], [REFERENCES[1], OTHERS[1]]])
    assert mixed.signature().startswith("nrefs:var|case:mixed|eff:no|tok:13a|smooth:exp|")


def test_tokenizers_equal_sacrebleus_on_real_lines():
    texts = REFERENCES + OTHERS + lines("multi30k_val_head.en")
    texts += [r["email"] for r in map(json.loads, lines("aeslc_dev_head.jsonl"))]          # symbols, digits, "\n"
    texts += ["Preis: 1,000.50 $ - 3-4 Tage &amp; &quot;gut&quot; <skipped> geht's?", "„Ja“, sagte er… (2019)."]
    t13a, tintl = Tokenizer13a(), TokenizerV14International()
    assert [tokenize_13a(t) for t in texts] == [t13a(t) for t in texts]
    assert [tokenize_intl(t) for t in texts] == [tintl(t) for t in texts]


def test_tokenizers_equal_sacrebleus_on_all_multi30k_and_aeslc_dev(shared_data):
    texts = []
    for name in ("val.de", "val.en", "test_2016_flickr.de", "test_2016_flickr.en"):
        texts += (shared_data("multi30k") / name).read_text(encoding="utf-8").split("\n")
    for line in (shared_data("aeslc") / "dev.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        texts += [row["email"], row["subject"], *row["annotations"]]
    t13a, tintl = Tokenizer13a(), TokenizerV14International()
    assert [t for t in texts if tokenize_13a(t) != t13a(t)] == []
    assert [t for t in texts if tokenize_intl(t) != tintl(t)] == []


def test_batches_and_processes_accumulate_to_the_single_pass():
    hyps = HYPOTHESES["nearest other sentence"] + HYPOTHESES["every third word dropped"]
    refs = REFERENCES * 2
    single = BLEU()
    single.update(hyps, refs)
    batched = BLEU()
    for start in range(0, len(hyps), 7):
        batched.update(hyps[start:start + 7], refs[start:start + 7])
    rank0, rank1 = BLEU(), BLEU()                     # two DDP ranks, each seeing every other batch
    for k, start in enumerate(range(0, len(hyps), 8)):
        (rank0 if k % 2 == 0 else rank1).update(hyps[start:start + 8], refs[start:start + 8])
    rank0.merge_state(rank1)                          # the sum reduction DDP applies
    for metric in (batched, rank0):
        assert metric.compute() == single.compute()
    assert_equals_sacrebleu(rank0, hyps, [refs])
    # the average of per-batch BLEU is a different (wrong) number
    per_batch = []
    for start in range(0, len(hyps), 7):
        m = BLEU()
        m.update(hyps[start:start + 7], refs[start:start + 7])
        per_batch.append(m.compute()["bleu"])
    assert abs(sum(per_batch) / len(per_batch) - single.compute()["bleu"]) > 0.1


def test_bad_input_mismatched_lengths_and_unknown_tokenizer():
    with pytest.raises(ValueError, match="2 hypotheses but 1 reference"):
        BLEU().update(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="unknown BLEU tokenizer 'moses'"):
        BLEU(tokenize="moses")
