"""Entity-level precision, recall and F1 for BIO tagging, equal to seqeval's on the same predictions.

An entity counts as correct only when its type, first and last word all match a gold entity (CoNLL-2003's
scoring). Micro-averaged over types; per-type F1 beside it. `strict=False` decodes as seqeval's default
mode (conlleval), `strict=True` as `mode="strict", scheme=IOB2`. The counts are metric states summed
across processes, so distributed evaluation gives the same numbers as one process.
"""
from __future__ import annotations

import torch
from torchmetrics import Metric

from data.conll import entities


class EntityF1(Metric):
    full_state_update = False

    def __init__(self, types: list[str], strict: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.types = sorted(types)
        self.index = {t: i for i, t in enumerate(self.types)}
        self.strict = strict
        for name in ("correct", "predicted", "gold"):       # entity counts per type
            self.add_state(name, default=torch.zeros(len(self.types), dtype=torch.long), dist_reduce_fx="sum")

    def _count(self, spans: set[tuple[str, int, int]]) -> torch.Tensor:
        counts = torch.zeros(len(self.types), dtype=torch.long, device=self.correct.device)
        for etype, _, _ in spans:
            if etype not in self.index:
                raise ValueError(f"entity type {etype!r} is not one of {self.types}")
            counts[self.index[etype]] += 1
        return counts

    def update(self, preds: list[list[str]], target: list[list[str]]) -> None:
        """preds, target: one list of BIO tags per sentence, of equal lengths."""
        if len(preds) != len(target):
            raise ValueError(f"{len(preds)} predicted sentences but {len(target)} gold ones")
        for p, g in zip(preds, target):
            if len(p) != len(g):
                raise ValueError(f"a sentence has {len(p)} predicted tags but {len(g)} gold tags")
            pred_spans, gold_spans = set(entities(p, self.strict)), set(entities(g, self.strict))
            self.correct += self._count(pred_spans & gold_spans)
            self.predicted += self._count(pred_spans)
            self.gold += self._count(gold_spans)

    @staticmethod
    def _prf(correct: int, predicted: int, gold: int) -> tuple[float, float, float]:
        p = correct / predicted if predicted else 0.0
        r = correct / gold if gold else 0.0
        f = 2 * p * r / (p + r) if p + r else 0.0
        return p, r, f

    def compute(self) -> dict[str, float]:
        totals = (int(counts.sum()) for counts in (self.correct, self.predicted, self.gold))
        out = dict(zip(("precision", "recall", "f1"), self._prf(*totals)))
        for i, t in enumerate(self.types):
            out[f"f1_{t}"] = self._prf(int(self.correct[i]), int(self.predicted[i]), int(self.gold[i]))[2]
        return out
