"""The contract every task keeps, checked for each task run.py lists (a new task runs this without new test code):
fit two steps on the task's embedded default (fixtures), predict from the checkpoint with nothing else given (one
output line per input line), resume from `last` to the requested step, and a checkpoint given to another task is
one line that names the task it belongs to."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

import run
from conftest import ROOT

QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def predict_inputs(task: str) -> list[str]:
    """The inputs of the default config's predict file, one per line (a TSV/CSV header is not one), as text: a JSON
    line's string values joined, any other line as it is."""
    config = yaml.safe_load((ROOT / run.TASKS[task].default_config).read_text())
    path = ROOT / config["data"]["predict_file"]
    lines = path.read_text(encoding="utf-8").splitlines()[(1 if path.suffix in (".tsv", ".csv") else 0):]
    if path.suffix == ".jsonl":
        return ["\n".join(v for v in json.loads(line).values() if isinstance(v, str)) for line in lines]
    return lines


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> dict[str, Path]:
    """Each task's default config, fit for two optimizer steps: task -> its last.ckpt."""
    out = {}
    for task in run.TASKS:
        run_dir = tmp_path_factory.mktemp(task)
        assert run.main([task, "fit", "--trainer.max_steps", "2", "--run_dir", str(run_dir), "--wandb", "false",
                         *QUIET]) == 0, task
        out[task] = run_dir
    return out


@pytest.mark.parametrize("task", list(run.TASKS))
def test_fit_writes_last_checkpoint_with_the_task_blueprint(fitted, task):
    ckpt = torch.load(fitted[task] / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2
    assert ckpt["task"]["task"] == task and ckpt["task"]["format"] == 1
    assert ckpt["task"]["model_kind"] in ("bert", "gpt", "transformer") and ckpt["task"]["model_config"]
    assert ckpt["task"]["tokenizer"]                                   # predict needs nothing else
    summary = json.loads((fitted[task] / "fit_metrics.json").read_text())
    assert summary["global_step"] == 2 and summary["last_checkpoint"].endswith("last.ckpt")
    assert Path(summary["last_checkpoint"]).is_absolute()          # as the best checkpoint's path: from any directory


@pytest.mark.parametrize("task", list(run.TASKS))
def test_predict_from_the_checkpoint_alone_writes_one_line_per_input(fitted, task, tmp_path):
    out = tmp_path / "predictions.jsonl"
    assert run.main([task, "predict", "--ckpt_path", str(fitted[task] / "checkpoints" / "last.ckpt"),
                     "--predict_output", str(out), "--run_dir", str(tmp_path / "run"), *QUIET]) == 0
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    inputs = predict_inputs(task)
    assert len(rows) == len(inputs) > 0
    assert all(isinstance(r, dict) and ("line" in r or "id" in r) for r in rows)   # each names its input
    for row, text in zip(rows, inputs):          # in input order: each row repeats (part of) its own input's text
        if text.strip():
            assert any(isinstance(v, str) and v.strip() and v.strip() in text for v in row.values()), (row, text)


@pytest.mark.parametrize("task", list(run.TASKS))
def test_test_from_the_checkpoint_alone_scores_the_defaults_test_split(fitted, task, tmp_path):
    """Every embedded default has a test split, so `run.py <task> test --ckpt_path X` works on a fresh clone."""
    run_dir = tmp_path / "run"
    assert run.main([task, "test", "--ckpt_path", str(fitted[task] / "checkpoints" / "last.ckpt"),
                     "--run_dir", str(run_dir), *QUIET]) == 0
    summary = json.loads((run_dir / "test_metrics.json").read_text())
    assert summary["subcommand"] == "test" and summary["global_step"] == 2
    assert any(key.startswith("test/") for key in summary["metrics"]), summary


@pytest.mark.parametrize("task", list(run.TASKS))
def test_resume_from_last_continues_to_the_requested_step(fitted, task, tmp_path):
    run_dir = tmp_path / "run"
    assert run.main([task, "fit", "--trainer.max_steps", "2", "--run_dir", str(run_dir), "--wandb", "false",
                     *QUIET]) == 0
    assert run.main([task, "fit", "--ckpt_path", "last", "--trainer.max_steps", "3", "--run_dir", str(run_dir),
                     "--wandb", "false", *QUIET]) == 0
    assert json.loads((run_dir / "fit_metrics.json").read_text())["global_step"] == 3
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3


@pytest.mark.parametrize("task", list(run.TASKS))
def test_another_tasks_checkpoint_is_one_line_naming_its_task(fitted, task, tmp_path, capsys):
    ckpt = str(fitted[task] / "checkpoints" / "last.ckpt")
    for other in run.TASKS:
        if other == task:
            continue
        capsys.readouterr()
        assert run.main([other, "predict", "--ckpt_path", ckpt, "--run_dir", str(tmp_path / other), *QUIET]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"this is a {task!r} checkpoint, not a {other!r} one" in err[0], err
        assert not (tmp_path / other).exists()                          # nothing left behind


@pytest.mark.parametrize("task", list(run.TASKS))
def test_a_checkpoint_with_settings_this_version_lacks_is_one_line(fitted, task, tmp_path, capsys):
    """A checkpoint written by another version of the task (a model option since removed) names the file and key."""
    ckpt = torch.load(fitted[task] / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    ckpt["hyper_parameters"]["removed_option"] = True
    path = tmp_path / "old.ckpt"
    torch.save(ckpt, path)
    capsys.readouterr()
    assert run.main([task, "predict", "--ckpt_path", str(path), "--run_dir", str(tmp_path / "run"), *QUIET]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{path}: its model settings do not fit this {task} task" in err[0], err
    assert "removed_option" in err[0] and not (tmp_path / "run").exists()


@pytest.mark.parametrize("task", list(run.TASKS))
def test_the_checkpoint_keeps_no_decoding_settings(fitted, task):
    """Settings that read the outputs (beam size, answer length, sampling) are each test / predict run's own: the
    checkpoint leaves them out, so the command line or config of that run is what applies."""
    decoding = run.import_target(run.TASKS[task].module, task).decoding
    hparams = torch.load(fitted[task] / "checkpoints" / "last.ckpt", weights_only=True)["hyper_parameters"]
    assert not set(decoding) & set(hparams), set(decoding) & set(hparams)


@pytest.mark.parametrize("task, key", [("classify", "data.max_length"), ("ner", "data.max_length"),
                                       ("qa", "data.max_length"), ("pretrain", "data.max_length"),
                                       ("lm", "data.block_size")])
def test_inputs_longer_than_the_restored_model_takes_are_one_line(fitted, task, key, tmp_path, capsys):
    capsys.readouterr()
    assert run.main([task, "predict", "--ckpt_path", str(fitted[task] / "checkpoints" / "last.ckpt"), f"--{key}",
                     "5000", "--run_dir", str(tmp_path / "run"), *QUIET]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{key} 5000 is longer than the model's" in err[0], err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("task", list(run.TASKS))
def test_one_step_with_bf16_parameters(task, tmp_path, monkeypatch):
    """`bf16-true`: the parameters in bfloat16 and no autocast, as FSDP's and DeepSpeed's bf16 hand them to the
    forward (on an H200, 2026-11-27, qa's float32 span head met bf16 weights under both). bf16 is emulated on a CPU
    without bf16 arithmetic: one step."""
    monkeypatch.setenv("NLP_ALLOW_EMULATED_BF16", "1")
    assert run.main([task, "fit", "--trainer.max_steps", "1", "--trainer.precision", "bf16-true",
                     "--trainer.num_sanity_val_steps", "0", "--trainer.limit_val_batches", "1",
                     "--run_dir", str(tmp_path), "--wandb", "false", *QUIET]) == 0
