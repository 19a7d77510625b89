"""SQuAD exact match and F1, as defined by the official evaluate-v1.1.py script.

Both compare normalised answers: lower-cased, punctuation removed, the articles a / an / the removed,
whitespace collapsed. EM is 1 when the normalised prediction equals a normalised gold answer; F1 is the
harmonic mean of token precision and recall (tokens counted with multiplicity, 0 when none is shared).
A question scores its best over its gold answers, and the set scores the mean over questions, in percent.
A question with no gold answer (SQuAD 2.0 no-answer) scores 1 exactly when the prediction is empty after
normalisation, as evaluate-v2.0.py does.
"""
from __future__ import annotations

import re
import string
from collections import Counter

import torch
from torchmetrics import Metric

PUNCTUATION = frozenset(string.punctuation)
ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(s: str) -> str:
    """Lower case, drop punctuation, drop articles, collapse whitespace (in the official order)."""
    text = "".join(ch for ch in s.lower() if ch not in PUNCTUATION)
    text = ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _no_answer_score(pred: str) -> float:
    return float(normalize_answer(pred) == "")


def exact_match(pred: str, golds: list[str]) -> float:
    """1.0 when the normalised prediction equals any normalised gold answer, else 0.0."""
    if not golds:
        return _no_answer_score(pred)
    pred = normalize_answer(pred)
    return float(any(pred == normalize_answer(gold) for gold in golds))


def _token_f1(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    shared = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if shared == 0:
        return 0.0
    precision, recall = shared / len(pred_tokens), shared / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def f1(pred: str, golds: list[str]) -> float:
    """The best token-level F1 of the normalised prediction against any normalised gold answer."""
    if not golds:
        return _no_answer_score(pred)
    pred_tokens = normalize_answer(pred).split()
    return max(_token_f1(pred_tokens, normalize_answer(gold).split()) for gold in golds)


class SquadScores(Metric):
    """Exact match and F1 in percent over every question given to `update`.

    The states are sums (EM, F1, question count) reduced by summation across processes, so under DDP the
    result is the mean over the union of what the processes saw. Contract: each question must be passed to
    `update` by exactly one process, exactly once — a question repeated by a distributed sampler's padding
    would be counted twice. (The QA task gives every evaluation question to one process.)
    """
    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("em_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("f1_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred_texts: list[str], gold_answers: list[list[str]]) -> None:
        """pred_texts: one predicted answer per question; gold_answers: that question's gold answer texts."""
        if len(pred_texts) != len(gold_answers):
            raise ValueError(f"{len(pred_texts)} predictions but {len(gold_answers)} questions")
        self.em_sum += sum(exact_match(p, g) for p, g in zip(pred_texts, gold_answers))
        self.f1_sum += sum(f1(p, g) for p, g in zip(pred_texts, gold_answers))
        self.count += len(pred_texts)

    def compute(self) -> dict[str, float]:
        """{"exact_match", "f1"} in percent (NaN before any question)."""
        count = int(self.count)
        if count == 0:
            return {"exact_match": float("nan"), "f1": float("nan")}
        return {"exact_match": 100.0 * float(self.em_sum) / count, "f1": 100.0 * float(self.f1_sum) / count}
