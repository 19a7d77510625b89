"""curves.png at the end of fit (from metrics.csv and the resumed runs' logs), the same picture and a table of sample
predictions in wandb (offline), and a plotting failure that never fails a finished fit."""
from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path

import matplotlib.image
import pytest

import run
from conftest import FIXTURES
from data.conll import entities, read_conll
from data.readers import read_table
from tasks import plots

QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
SHORT = ["--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "2", "--trainer.log_every_n_steps", "1",
         "--trainer.num_sanity_val_steps", "0"]


def classify(run_dir: Path, *extra: str) -> None:
    assert run.main(["classify", "fit", "--run_dir", str(run_dir), "--wandb", "false", *QUIET, *SHORT, *extra]) == 0


def logged(path: Path, column: str) -> dict[int, float]:
    with path.open() as f:
        return {int(r["step"]): float(r[column]) for r in csv.DictReader(f) if r[column]}


def test_curves_join_the_first_run_and_its_resumptions(tmp_path):
    """A resumed fit logs into resume_N/metrics.csv from its checkpoint's step: the curves take each step once, from
    the latest log that has it."""
    run_dir = tmp_path / "run"
    classify(run_dir, "--trainer.max_epochs", "1")                                    # steps 0-2
    assert matplotlib.image.imread(run_dir / "curves.png").shape[2] in (3, 4)
    shutil.copy(run_dir / "checkpoints" / "last.ckpt", tmp_path / "step3.ckpt")
    classify(run_dir, "--trainer.max_epochs", "2", "--ckpt_path", "last")            # resume_1: steps 3-5
    classify(run_dir, "--trainer.max_epochs", "2", "--ckpt_path", str(tmp_path / "step3.ckpt"))   # resume_2: 3-5 again
    assert [p.relative_to(run_dir).as_posix() for p in plots.metric_files(run_dir)] == \
        ["metrics.csv", "resume_1/metrics.csv", "resume_2/metrics.csv"]
    curves = plots.read_metrics(run_dir)
    loss = dict(curves["train/loss"])
    assert [s for s, _ in curves["train/loss"]] == list(range(6))
    assert {s: loss[s] for s in (3, 4, 5)} == logged(run_dir / "resume_2" / "metrics.csv", "train/loss")
    assert {s: loss[s] for s in (0, 1, 2)} == logged(run_dir / "metrics.csv", "train/loss")
    assert [s for s, _ in curves["val/accuracy"]] == [2, 5]
    fig = plots.curves_figure(curves)
    assert [ax.get_title() for ax in fig.axes] == ["loss", "val/accuracy", "val/f1", "val/mcc", "learning rate"]
    assert [line.get_label() for line in fig.axes[0].lines] == ["train/loss", "val/loss"]
    assert len(fig.axes[-1].lines) == 1                     # eight parameter groups, one schedule: drawn once


def test_a_plotting_failure_never_fails_the_fit(tmp_path, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("no fonts\nanywhere")
    monkeypatch.setattr(plots, "curves_figure", broken)
    with caplog.at_level(logging.WARNING, logger="tasks.plots"):
        classify(tmp_path / "run", "--trainer.max_steps", "2")
    warnings = [r.getMessage() for r in caplog.records if r.name == "tasks.plots"]
    assert warnings == ["curves.png not written: RuntimeError: no fonts anywhere"]
    assert not (tmp_path / "run" / "curves.png").exists()
    assert json.loads((tmp_path / "run" / "fit_metrics.json").read_text())["global_step"] == 2


def wandb_files(run_dir: Path, pattern: str) -> list[Path]:
    return sorted(run_dir.glob(f"wandb/offline-run-*/files/media/{pattern}"))


@pytest.fixture
def wandb_run(tmp_path, monkeypatch):
    """A fit logging to wandb (offline); run.main ends the wandb run it started."""
    import wandb                                        # a runtime dependency: its absence is a failure
    monkeypatch.setenv("WANDB_MODE", "offline")

    def fit(task: str, *extra: str) -> Path:
        run_dir = tmp_path / task
        assert run.main([task, "fit", "--run_dir", str(run_dir), "--wandb", "true", *QUIET, *extra]) == 0
        assert wandb.run is None, "run.main left its wandb run open"
        return run_dir
    return fit


def test_wandb_gets_the_curves_and_sample_classifications(wandb_run):
    run_dir = wandb_run("classify", *SHORT, "--trainer.max_epochs", "1")
    assert len(wandb_files(run_dir, "images/curves_*.png")) == 1
    tables = wandb_files(run_dir, "table/val/samples_*.table.json")
    assert len(tables) == 1
    table = json.loads(tables[0].read_text())
    assert table["columns"] == ["text", "prediction", "gold"] and len(table["data"]) == 8
    dev = read_table(FIXTURES.parent.parent / "data" / "samples" / "sst2" / "dev.tsv", ["sentence", "label"])
    gold = {"".join(s.split()): label for s, label in zip(dev["sentence"], dev["label"])}
    for text, predicted, label in table["data"]:
        assert gold["".join(text.split())] == label and predicted in ("0", "1")


def test_wandb_gets_sample_ner_tags(wandb_run):
    run_dir = wandb_run("ner", "--trainer.max_epochs", "1", "--trainer.log_every_n_steps", "1")
    table = json.loads(wandb_files(run_dir, "table/val/samples_*.table.json")[0].read_text())
    assert table["columns"] == ["text", "prediction", "gold"] and len(table["data"]) == 5
    sentences = {" ".join(s.words): s for s in read_conll(FIXTURES / "conll_valid.txt")}
    for text, _, gold in table["data"]:
        s = sentences[text]
        assert gold == ", ".join(f"{' '.join(s.words[a:b + 1])} ({kind})" for kind, a, b in entities(s.tags))
    assert any(gold for _, _, gold in table["data"])
