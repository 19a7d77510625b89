"""GLUE metrics with torchmetrics (reduced across processes under DDP).

Classification: accuracy, F1 (of class 1 when binary, macro otherwise), Matthews correlation.
Regression: Pearson and Spearman correlation. `GLUE_METRIC` names each GLUE task's own metric.
"""
from __future__ import annotations

from torchmetrics import MetricCollection
from torchmetrics.classification import Accuracy, F1Score, MatthewsCorrCoef
from torchmetrics.regression import PearsonCorrCoef, SpearmanCorrCoef

CLASSIFICATION_METRICS = ("accuracy", "f1", "mcc")
REGRESSION_METRICS = ("pearson", "spearman")

GLUE_METRIC = {"cola": "mcc", "sst2": "accuracy", "mrpc": "f1", "stsb": "spearman", "qqp": "f1",
               "mnli": "accuracy", "qnli": "accuracy", "rte": "accuracy", "wnli": "accuracy"}


def glue_metrics(num_labels: int, regression: bool = False) -> MetricCollection:
    """Metrics over predicted class ids (or scores, for regression) and targets."""
    if regression:
        return MetricCollection({"pearson": PearsonCorrCoef(), "spearman": SpearmanCorrCoef()})
    if num_labels == 2:
        return MetricCollection({"accuracy": Accuracy(task="binary"), "f1": F1Score(task="binary"),
                                 "mcc": MatthewsCorrCoef(task="binary")})
    return MetricCollection({"accuracy": Accuracy(task="multiclass", num_classes=num_labels),
                             "f1": F1Score(task="multiclass", num_classes=num_labels, average="macro"),
                             "mcc": MatthewsCorrCoef(task="multiclass", num_classes=num_labels)})
