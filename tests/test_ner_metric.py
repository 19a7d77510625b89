"""EntityF1 equals seqeval (test-only dependency) in default and strict mode (issue 4)."""
from __future__ import annotations

import random

import pytest
from conftest import FIXTURES

from data.conll import read_conll
from tasks.seqeval_metric import EntityF1

seqeval_metrics = pytest.importorskip("seqeval.metrics")
from seqeval.scheme import IOB2  # noqa: E402

TYPES = ["LOC", "MISC", "ORG", "PER"]
LABELS = ["O"] + [f"{p}-{t}" for t in TYPES for p in "BI"]


def seqeval_scores(gold, pred, strict):
    kwargs = {"mode": "strict", "scheme": IOB2} if strict else {}
    report = seqeval_metrics.classification_report(gold, pred, output_dict=True, zero_division=0, **kwargs)
    return report


def ours(gold, pred, strict, chunks=1):
    metric = EntityF1(TYPES, strict=strict)
    step = max(1, len(gold) // chunks)
    for i in range(0, len(gold), step):          # several updates accumulate like one
        metric.update(pred[i:i + step], gold[i:i + step])
    return metric.compute()


def assert_equal(gold, pred, strict):
    got, want = ours(gold, pred, strict, chunks=3), seqeval_scores(gold, pred, strict)
    micro = want["micro avg"]
    assert got["precision"] == pytest.approx(float(micro["precision"]), abs=1e-12)
    assert got["recall"] == pytest.approx(float(micro["recall"]), abs=1e-12)
    assert got["f1"] == pytest.approx(float(micro["f1-score"]), abs=1e-12)
    f1 = seqeval_metrics.f1_score(gold, pred, **({"mode": "strict", "scheme": IOB2} if strict else {}))
    assert got["f1"] == pytest.approx(float(f1), abs=1e-12)
    for t in TYPES:
        if t in want:
            assert got[f"f1_{t}"] == pytest.approx(float(want[t]["f1-score"]), abs=1e-12), t
        else:                                     # type absent from gold and predictions
            assert got[f"f1_{t}"] == 0.0


def random_tags(rng, n):
    # biased towards O and towards continuing, with stray I- tags that the two modes decode differently
    tags, prev = [], "O"
    for _ in range(n):
        r = rng.random()
        if r < 0.5:
            tag = "O"
        elif r < 0.75 and prev != "O":
            tag = "I-" + prev[2:]
        else:
            tag = rng.choice(LABELS[1:])
        tags.append(tag)
        prev = tag
    return tags


@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.parametrize("seed", range(5))
def test_equals_seqeval_on_random_predictions(seed, strict):
    rng = random.Random(seed)
    gold = [random_tags(rng, rng.randint(1, 30)) for _ in range(200)]
    pred = [[t if rng.random() < 0.7 else rng.choice(LABELS) for t in g] for g in gold]
    assert_equal(gold, pred, strict)


@pytest.mark.parametrize("strict", [False, True])
def test_equals_seqeval_on_real_predictions(strict):
    """Gold CoNLL dev sentences against a real model's predictions for them (fixture written by
    benchmarks/ner_run.py from the trained conll_minilm checkpoint)."""
    gold = [s.tags for s in read_conll(FIXTURES / "conll_valid.txt")]
    pred = [line.split() for line in (FIXTURES / "conll_valid.pred").read_text().splitlines()]
    assert len(pred) == len(gold) and all(len(p) == len(g) for p, g in zip(pred, gold))
    assert pred != gold                           # a real model makes some mistakes here
    assert_equal(gold, pred, strict)


def test_edge_cases():
    assert ours([["O", "O"]], [["O", "O"]], False)["f1"] == 0.0           # nothing to find, nothing found
    got = ours([["B-PER", "I-PER"]], [["I-PER", "I-PER"]], False)
    assert got["f1"] == 1.0                                                  # conlleval: I- starts an entity
    assert ours([["B-PER", "I-PER"]], [["I-PER", "I-PER"]], True)["f1"] == 0.0   # strict: it does not
    with pytest.raises(ValueError, match="2 predicted tags but 1 gold"):
        ours([["O"]], [["O", "O"]], False)


def test_state_is_summed_across_processes():
    """The states declare sum reduction, so a distributed compute adds every process's counts."""
    metric = EntityF1(TYPES)
    assert {metric._reductions[k].__name__ for k in ("correct", "predicted", "gold")} == {"dim_zero_sum"}
    # two 'processes' merged by hand give the single-process answer
    a, b = EntityF1(TYPES), EntityF1(TYPES)
    gold = [["B-PER", "O"], ["B-LOC", "I-LOC"]]
    pred = [["B-PER", "O"], ["B-LOC", "O"]]
    a.update(pred[:1], gold[:1])
    b.update(pred[1:], gold[1:])
    a.merge_state(b)
    assert a.compute() == ours(gold, pred, False)
