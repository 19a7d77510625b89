"""TailAveraging (tasks/averaging.py) in a real fit through run.py: the checkpoint's weights are the mean of the
weights after every step of the run's second half, the last weights are kept beside them, validation at the end of
fit scored the mean, and predict / validate from the checkpoint load the mean."""
from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from pytorch_lightning import Callback

import run
from data.errors import ConfigError
from tasks.averaging import TailAveraging

QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false", "--wandb", "false"]
STEPS = 6

pytestmark = pytest.mark.usefixtures("no_wandb")


class WeightRecorder(Callback):
    """The model's weights after every optimizer step, by 0-based step index (class-level: the CLI builds it)."""
    weights: dict[int, dict[str, torch.Tensor]] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        WeightRecorder.weights[trainer.global_step - 1] = {n: p.detach().clone()
                                                            for n, p in pl_module.named_parameters()}


def test_start_must_be_a_fraction():
    with pytest.raises(ConfigError, match="start"):
        TailAveraging(start=1.0)


class CtrlCAtStep4(Callback):
    """Ctrl-C after step 4: LastCheckpoint stops the run there and writes last.ckpt."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == 4:
            os.kill(os.getpid(), signal.SIGINT)


def fit_qa(tmp_path, run_dir, start: float, *args: str, callback: str = "WeightRecorder", code: int = 0) -> None:
    """`run.py qa fit` of the default config for STEPS steps with TailAveraging(start) and `callback` (this
    module's); it must exit with `code`."""
    config = tmp_path / "averaging.yaml"
    config.write_text("trainer:\n  callbacks:\n"
                      f"    - class_path: tasks.averaging.TailAveraging\n      init_args: {{start: {start}}}\n"
                      f"    - class_path: test_averaging.{callback}\n")
    assert run.main(["qa", "fit", "--config", "configs/qa/default.yaml", "--config", str(config),
                     "--trainer.max_epochs", "1", "--trainer.limit_train_batches", str(STEPS), "--model.lr", "3e-3",
                     "--run_dir", str(run_dir), "--data.cache_dir", str(tmp_path / "cache"), *QUIET, *args]) == code


def test_checkpoint_holds_the_mean_of_the_second_half(tmp_path):
    run_dir = tmp_path / "run"
    WeightRecorder.weights = {}
    fit_qa(tmp_path, run_dir, 0.5)
    assert sorted(WeightRecorder.weights) == list(range(STEPS))

    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    averaged, last = ckpt["state_dict"], ckpt["current_model_state"]
    tail = [WeightRecorder.weights[s] for s in range(STEPS // 2, STEPS)]      # steps 3, 4, 5
    for name in tail[0]:
        mean = torch.stack([w[name] for w in tail]).mean(0)
        torch.testing.assert_close(averaged[name], mean, rtol=1e-5, atol=1e-6, msg=name)
        torch.testing.assert_close(last[name], WeightRecorder.weights[STEPS - 1][name], rtol=0, atol=0, msg=name)
    moved = [n for n in tail[0] if not torch.equal(averaged[n], last[n])]
    assert moved, "the mean equals the last weights: the test would not see a missing average"

    # fit's last validation scored the mean: validating the checkpoint gives the same numbers
    fit = json.loads((run_dir / "fit_metrics.json").read_text())["metrics"]
    assert run.main(["qa", "validate", "--ckpt_path", str(run_dir / "checkpoints" / "last.ckpt"),
                     "--run_dir", str(run_dir), "--data.cache_dir", str(tmp_path / "cache"), *QUIET]) == 0
    validated = json.loads((run_dir / "validate_metrics.json").read_text())["metrics"]
    assert validated["val/f1"] == pytest.approx(fit["val/f1"], abs=1e-4)
    assert validated["val/exact_match"] == pytest.approx(fit["val/exact_match"], abs=1e-4)

    # ... and not the last weights, which score differently here (so the comparison above can tell them apart)
    ckpt["state_dict"] = ckpt.pop("current_model_state")
    torch.save(ckpt, tmp_path / "last_weights.ckpt")
    assert run.main(["qa", "validate", "--ckpt_path", str(tmp_path / "last_weights.ckpt"),
                     "--run_dir", str(tmp_path / "last_weights"), "--data.cache_dir", str(tmp_path / "cache"),
                     *QUIET]) == 0
    unaveraged = json.loads((tmp_path / "last_weights" / "validate_metrics.json").read_text())["metrics"]
    assert unaveraged["val/f1"] != pytest.approx(fit["val/f1"], abs=1e-4)


def test_a_resumed_run_continues_the_same_mean(tmp_path):
    """Stopped by Ctrl-C at step 4 and resumed from last.ckpt, the run ends with the uninterrupted run's mean and
    last weights."""
    fit_qa(tmp_path, tmp_path / "whole", 0.5)
    whole = torch.load(tmp_path / "whole" / "checkpoints" / "last.ckpt", weights_only=True)
    fit_qa(tmp_path, tmp_path / "parts", 0.5, callback="CtrlCAtStep4", code=130)
    assert torch.load(tmp_path / "parts" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4
    fit_qa(tmp_path, tmp_path / "parts", 0.5, "--ckpt_path", "last")
    parts = torch.load(tmp_path / "parts" / "checkpoints" / "last.ckpt", weights_only=True)
    assert parts["global_step"] == whole["global_step"] == STEPS
    for key in ("state_dict", "current_model_state"):
        for name, value in whole[key].items():
            torch.testing.assert_close(parts[key][name], value, rtol=1e-5, atol=1e-6, msg=f"{key} {name}")
