"""GLUE metrics (tasks/metrics.py) equal scikit-learn / scipy on fixed predictions."""
import pytest
import torch
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from tasks.metrics import GLUE_METRIC, glue_metrics

TARGET = [1, 0, 1, 1, 0, 0, 1, 0, 1, 1, 0, 1]
PRED = [1, 0, 0, 1, 0, 1, 1, 0, 1, 0, 0, 1]


def compute(metrics, preds, target):
    metrics.update(torch.tensor(preds), torch.tensor(target))
    return {k: v.item() for k, v in metrics.compute().items()}


def test_binary_metrics_equal_sklearn():
    got = compute(glue_metrics(2), PRED, TARGET)
    assert got["accuracy"] == pytest.approx(accuracy_score(TARGET, PRED))
    assert got["f1"] == pytest.approx(f1_score(TARGET, PRED))
    assert got["mcc"] == pytest.approx(matthews_corrcoef(TARGET, PRED))
    # by hand: 9 of 12 right; positives: tp=5, fp=1, fn=2 -> F1 = 10/13
    assert got["accuracy"] == pytest.approx(9 / 12)
    assert got["f1"] == pytest.approx(10 / 13)


@pytest.mark.parametrize("target, preds", [([0, 0, 0, 0], [1, 1, 1, 1]), ([1, 1, 1, 1], [0, 0, 0, 0]),
                                            ([0, 0, 0, 0], [0, 0, 0, 0]), ([1, 1, 0, 0], [1, 1, 1, 1]),
                                            ([0, 1, 0, 1], [0, 0, 0, 0]), ([0, 1, 1, 0], [0, 1, 1, 0])])
def test_binary_mcc_equals_sklearn_where_it_is_undefined(target, preds):
    """All targets or all predictions in one class: scikit-learn (and so GLUE's scorer) says 0."""
    assert compute(glue_metrics(2), preds, target)["mcc"] == pytest.approx(matthews_corrcoef(target, preds))


def test_multiclass_metrics_equal_sklearn():
    target = [0, 1, 2, 2, 1, 0, 2, 1, 0, 2]
    preds = [0, 2, 2, 2, 1, 0, 1, 1, 1, 2]
    got = compute(glue_metrics(3), preds, target)
    assert got["accuracy"] == pytest.approx(accuracy_score(target, preds))
    assert got["f1"] == pytest.approx(f1_score(target, preds, average="macro"))
    assert got["mcc"] == pytest.approx(matthews_corrcoef(target, preds))


def test_regression_metrics_equal_scipy():
    target = [0.5, 1.0, 2.5, 3.0, 4.2, 4.8, 1.7]
    preds = [0.7, 1.5, 2.0, 3.5, 4.0, 4.1, 2.2]
    m = glue_metrics(1, regression=True)
    m.update(torch.tensor(preds), torch.tensor(target))
    got = {k: v.item() for k, v in m.compute().items()}
    assert got["pearson"] == pytest.approx(pearsonr(preds, target)[0], abs=1e-5)
    assert got["spearman"] == pytest.approx(spearmanr(preds, target)[0], abs=1e-5)


def test_each_glue_task_monitors_its_own_metric():
    assert GLUE_METRIC["cola"] == "mcc" and GLUE_METRIC["stsb"] == "spearman" and GLUE_METRIC["sst2"] == "accuracy"
