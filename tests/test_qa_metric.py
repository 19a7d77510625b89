"""SQuAD EM / F1 (issue 12): the official v1.1 definitions, checked by hand and against torchmetrics' SQuAD
on predictions built from the real questions of the fixture (and of the whole evaluation split)."""
from __future__ import annotations

import pytest
from conftest import FIXTURES
from torchmetrics.text import SQuAD

from data.squad import read_squad, split_by_article
from tasks.squad_metric import SquadScores, exact_match, f1, normalize_answer

SAMPLE = FIXTURES / "squad_dev_sample.json"


# --------------------------------------------------------------------------- hand-checked cases

@pytest.mark.parametrize("text,normalized", [
    ("The  Quick, brown fox!", "quick brown fox"),
    ("an apple a day", "apple day"),
    ("another theory", "another theory"),           # articles only as whole words
    ("U.S. first-in, first-out", "us firstin firstout"),  # punctuation is deleted, not replaced by a space
    ("  Denver\tBroncos\n", "denver broncos"),
    ("£20,980", "£20980"),                          # only ASCII punctuation is removed
    ("a-b the-end", "ab theend"),                   # punctuation goes before articles are looked for
    ("1990–the–2000", "1990– –2000"),               # an article becomes a space (the en dash stays)
    ("The", ""),
])
def test_normalize_answer(text, normalized):
    assert normalize_answer(text) == normalized


def test_exact_match_and_f1_by_hand():
    assert exact_match("the Denver Broncos.", ["Denver Broncos"]) == 1.0
    assert exact_match("Denver", ["Denver Broncos"]) == 0.0
    # precision 2/3, recall 1 -> F1 = 2 * (2/3) / (5/3) = 0.8
    assert f1("Denver Broncos team", ["Denver Broncos"]) == pytest.approx(0.8)
    # tokens count with multiplicity: "y" is shared once; precision 1/3, recall 1 -> 0.5
    assert f1("x y y", ["y"]) == pytest.approx(0.5)
    # the best gold answer counts
    assert f1("Carolina", ["Carolina Panthers", "Carolina"]) == 1.0
    assert f1("Carolina", ["Carolina Panthers", "the Panthers"]) == pytest.approx(2 / 3)
    assert exact_match("carolina panthers", ["Panthers", "The Carolina Panthers"]) == 1.0
    # an empty prediction scores 0 against an answer; articles and punctuation alone are empty
    assert exact_match("", ["Denver Broncos"]) == f1("", ["Denver Broncos"]) == 0.0
    assert f1("the.", ["Denver"]) == 0.0
    # evaluate-v1.1: F1 is 0 when no token is shared, even when both are empty (EM is 1 then);
    # torchmetrics (like evaluate-v2.0) gives F1 100 there, the only case where the two differ
    assert (exact_match("the", ["."]), f1("the", ["."])) == (1.0, 0.0)
    assert SQuAD()([{"prediction_text": "the", "id": "1"}],
                   [{"answers": {"answer_start": [0], "text": ["."]}, "id": "1"}])["f1"] == 100.0
    # no gold answer (SQuAD 2.0): only an empty prediction is right
    assert (exact_match("", []), f1("", [])) == (1.0, 1.0)
    assert (exact_match("Denver", []), f1("Denver", [])) == (0.0, 0.0)


# --------------------------------------------------------------------------- real predictions

def noisy(question, k: int) -> str:
    """The gold answer changed in one of eight ways a model's answer differs from it."""
    answer, context = question.answers[0], question.context
    start, end = question.answer_starts[0], question.answer_starts[0] + len(answer)
    words = answer.split()
    return [
        answer,                                        # exact
        answer.upper() + ".",                          # case and punctuation only
        " ".join(words[1:]) or answer,                 # first word missing
        " ".join(words[:-1]) or answer,                # last word missing
        context[max(0, start - 20):end],               # extra words before
        context[start:end + 25],                       # extra words after
        question.answers[-1],                          # another annotator's answer
        "",                                            # no answer
    ][k % 8]


def lead(question) -> str:
    """As many words from the context's start as the gold answer has."""
    return " ".join(question.context.split()[:len(question.answers[0].split())])


def overlap_heuristic(question) -> str:
    """A tiny reader: the three words right after the context position preceded by the most question
    words (within five words), skipping question words themselves."""
    asked = set(normalize_answer(question.question).split())
    words = question.context.split()
    seen = [normalize_answer(w) in asked for w in words]
    best = max(range(len(words)), key=lambda i: (not seen[i], sum(seen[max(0, i - 5):i])))
    return " ".join(words[best:best + 3])


def torchmetrics_squad(questions, predictions) -> dict[str, float]:
    metric = SQuAD()
    metric.update([{"prediction_text": p, "id": q.id} for q, p in zip(questions, predictions)],
                  [{"answers": {"answer_start": q.answer_starts, "text": q.answers}, "id": q.id} for q in questions])
    return {k: float(v) for k, v in metric.compute().items()}


def ours(questions, predictions) -> dict[str, float]:
    metric = SquadScores()
    metric.update(predictions, [q.answers for q in questions])
    return metric.compute()


@pytest.mark.parametrize("predict", ["noisy", "lead", "heuristic"])
def test_equal_to_torchmetrics_on_fixture_questions(predict):
    questions = read_squad(SAMPLE)
    predictions = {"noisy": [noisy(q, k) for k, q in enumerate(questions)], "lead": [lead(q) for q in questions],
                   "heuristic": [overlap_heuristic(q) for q in questions]}[predict]
    expected = torchmetrics_squad(questions, predictions)
    assert ours(questions, predictions) == pytest.approx(expected, rel=1e-6)   # torchmetrics sums in float32
    # the predictions span the range: neither all right nor all wrong, and partial credit is common
    scores = ours(questions, predictions)
    assert 0 < scores["exact_match"] < scores["f1"] < 100
    assert len(questions) == 339


def test_equal_to_torchmetrics_on_evaluation_split(shared_data):
    _, questions = split_by_article(read_squad(shared_data("squad", "dev-v1.1.json")))
    predictions = [noisy(q, k) if k % 2 else overlap_heuristic(q) for k, q in enumerate(questions)]
    assert ours(questions, predictions) == pytest.approx(torchmetrics_squad(questions, predictions), rel=1e-6)


def test_summed_states_equal_one_pass():
    """What DDP does: each process updates its own questions; the states are summed."""
    questions = read_squad(SAMPLE)
    predictions = [overlap_heuristic(q) for q in questions]
    whole = ours(questions, predictions)
    first, second = SquadScores(), SquadScores()
    first.update(predictions[::2], [q.answers for q in questions[::2]])
    second.update(predictions[1::2], [q.answers for q in questions[1::2]])
    first.merge_state(second)
    assert int(first.count) == 339
    assert first.compute() == pytest.approx(whole, abs=1e-9)
    assert first.compute() != pytest.approx(second.compute())


def test_empty_metric_and_mismatched_lengths():
    metric = SquadScores()
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert all(value != value for value in metric.compute().values())   # NaN before any question
    with pytest.raises(ValueError, match="2 predictions but 1 questions"):
        metric.update(["a", "b"], [["a"]])
