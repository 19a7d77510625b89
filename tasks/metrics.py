"""GLUE metrics with torchmetrics (reduced across processes under DDP).

Classification: accuracy, F1 (of class 1 when binary, macro otherwise), Matthews correlation.
Regression: Pearson and Spearman correlation. `GLUE_METRIC` names each GLUE task's own metric.
"""
from __future__ import annotations

import warnings

import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import Accuracy, BinaryMatthewsCorrCoef, F1Score, MatthewsCorrCoef
from torchmetrics.regression import PearsonCorrCoef, SpearmanCorrCoef

CLASSIFICATION_METRICS = ("accuracy", "f1", "mcc")
REGRESSION_METRICS = ("pearson", "spearman")

GLUE_METRIC = {"cola": "mcc", "sst2": "accuracy", "mrpc": "f1", "stsb": "spearman", "qqp": "f1",
               "mnli": "accuracy", "qnli": "accuracy", "rte": "accuracy", "wnli": "accuracy"}


class BinaryMCC(BinaryMatthewsCorrCoef):
    """Matthews correlation as scikit-learn computes it (GLUE's CoLA score): 0 where it is undefined, when all targets
    or all predictions are one class. torchmetrics' binary version gives +1 or -1 there (e.g. -1 for an all-negative
    split predicted all positive)."""

    def compute(self) -> torch.Tensor:
        (tn, fp), (fn, tp) = self.confmat.double()
        if (tp + fp) * (tp + fn) * (tn + fp) * (tn + fn) == 0:
            return torch.zeros((), device=self.confmat.device)
        return super().compute()


def glue_metrics(num_labels: int, regression: bool = False) -> MetricCollection:
    """Metrics over predicted class ids (or scores, for regression) and targets."""
    if regression:
        # Spearman ranks a whole split, so it keeps every score (what its warning says): a GLUE split is small
        warnings.filterwarnings("ignore", message="Metric `SpearmanCorrcoef` will save all targets")
        return MetricCollection({"pearson": PearsonCorrCoef(), "spearman": SpearmanCorrCoef()})
    if num_labels == 2:
        return MetricCollection({"accuracy": Accuracy(task="binary"), "f1": F1Score(task="binary"),
                                 "mcc": BinaryMCC()})
    return MetricCollection({"accuracy": Accuracy(task="multiclass", num_classes=num_labels),
                             "f1": F1Score(task="multiclass", num_classes=num_labels, average="macro"),
                             "mcc": MatthewsCorrCoef(task="multiclass", num_classes=num_labels)})
