"""Surviving interruptions, for every task in run.TASKS (each with its embedded default config):

- a fit killed (SIGKILL) in the middle of writing last.ckpt, inside an epoch, leaves only readable checkpoints,
  and resumed with `--ckpt_path last` it ends as the uninterrupted run of the same seed: same global step, the same
  examples in the same order (none skipped, none repeated: NLP_TRACE_SAMPLES), the same weights;
- Ctrl-C (SIGINT) and SIGTERM stop at the end of the step with exit code 130 / 143 and a last.ckpt that resumes
  the same way;
- `--trainer.max_time` stops with last.ckpt at the run's last step, and the run resumes from it;
- a run that finished at max_epochs, resumed with a larger max_epochs from last.ckpt or from its best checkpoint,
  trains the next epoch in its order;
- a NaN/inf loss stops the run with one line naming the step (exit code 1), and no checkpoint holds NaN weights;
- a checkpoint write that dies halfway leaves the previous last.ckpt whole.

The runs are forks of the test process (benchmarks/kill_resume.py, no Python start-up per run);
benchmarks/kill_resume.py runs 10 random stop points per task as real processes. The stops that the same callback
handles for every task (Ctrl-C, SIGTERM, max_time) run for classify, and for the other tasks among the slow tests.
"""
from __future__ import annotations

import json

import pytest
import torch

import run
from benchmarks.kill_resume import (EPOCH, Child, Reference, fit_argv, has_epochs, read_trace, reference_run,
                                    run_to_end, run_trial, unreadable_checkpoints)
from tasks.base import TRACE_SAMPLES_ENV
from tasks.checkpoint import AtomicCheckpointIO, read_checkpoint

STEPS = 8          # two epochs of 4 batches where the task has epochs


def one_fast(tasks, fast: str = "classify") -> list:
    """`tasks` with all but `fast` marked slow: for a mechanism that is the same for every task (the callback that
    stops a run), one task runs in every `make test`, the others when slow tests run."""
    return [t if t == fast else pytest.param(t, marks=pytest.mark.slow) for t in tasks]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """task -> its uninterrupted run (the examples of every step, last.ckpt, validation metrics), made once."""
    runs = {}

    def get(task: str) -> Reference:
        if task not in runs:
            try:
                runs[task] = reference_run(task, tmp_path_factory.mktemp(f"uninterrupted_{task}"), STEPS, fork=True)
            except RuntimeError as e:
                pytest.fail(f"{task}: the uninterrupted run with {TRACE_SAMPLES_ENV} failed ({e}; its one error line "
                            f"is in the captured stderr)")
        return runs[task]

    return get


@pytest.mark.parametrize("task", list(run.TASKS))
def test_killed_while_writing_a_checkpoint_resumes_to_the_uninterrupted_result(task, uninterrupted, tmp_path):
    """SIGKILL while the checkpoint after step 5 (of 8, inside the second epoch) is half-written: the run resumes
    from step 5's, and ends with the uninterrupted run's examples, weights and validation metrics."""
    trial = run_trial(uninterrupted(task), tmp_path, "write", 5, fork=True)
    assert trial.passed, f"{task}: " + "; ".join(trial.problems)
    assert trial.partial_bytes and trial.resumed_from == 5, trial             # the half-written one was not used


@pytest.mark.parametrize("task", one_fast([t for t in run.TASKS if has_epochs(t)]))
@pytest.mark.parametrize("kind, step", [("kill", EPOCH), ("sigint", EPOCH - 1)], ids=["kill", "sigint"])
def test_stopped_at_an_epoch_boundary_resumes_to_the_uninterrupted_result(task, kind, step, uninterrupted, tmp_path):
    """SIGKILL once the second epoch's first step has begun (last.ckpt: written after the first epoch's last batch
    and validation), or Ctrl-C during the first epoch's last step (last.ckpt: the stop's): the resumed run trains the
    second epoch in the second epoch's order (Lightning alone would hand the sampler the third epoch's number)."""
    trial = run_trial(uninterrupted(task), tmp_path, kind, step, fork=True, validate=kind == "kill")
    assert trial.passed, f"{task}, {kind}: " + "; ".join(trial.problems)
    assert trial.resumed_from == EPOCH, trial


@pytest.mark.parametrize("task", one_fast([t for t in run.TASKS if has_epochs(t)]))
@pytest.mark.parametrize("resume_from", ["last", "best"])
def test_a_finished_run_resumed_with_more_epochs_trains_them_in_the_uninterrupted_order(task, resume_from,
                                                                                         uninterrupted, tmp_path):
    """A fit that ended at max_epochs 1, resumed with max_epochs 2, trains the second epoch, on the uninterrupted
    two-epoch run's examples in its order. From last.ckpt (on_train_end's state would count the first epoch twice),
    and from the best checkpoint (the state after epoch 1's validation), where Lightning alone, with max_steps set,
    counts the finished epoch twice and stops an epoch early, training nothing."""
    ref = uninterrupted(task)
    run_dir, first, second = tmp_path / "run", tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    run_to_end(fit_argv(task, run_dir, STEPS, "--trainer.max_epochs", "1"), {TRACE_SAMPLES_ENV: str(first)}, fork=True)
    last = run_dir / "checkpoints" / "last.ckpt"
    best = [p for p in last.parent.glob("*.ckpt") if p != last]
    assert read_checkpoint(last)["global_step"] == EPOCH
    assert len(best) == 1 and read_checkpoint(best[0])["global_step"] == EPOCH, best
    start = "last" if resume_from == "last" else str(best[0])
    run_to_end(fit_argv(task, run_dir, STEPS, "--trainer.max_epochs", "2", "--ckpt_path", start),
               {TRACE_SAMPLES_ENV: str(second)}, fork=True)
    assert read_checkpoint(last)["global_step"] == 2 * EPOCH
    seen = [(r["step"], r["index"]) for r in read_trace(first) + read_trace(second)]
    assert seen == [(r["step"], r["index"]) for r in ref.trace[:2 * EPOCH]]


def model_checkpoint_state(path) -> dict:
    states = [v for k, v in read_checkpoint(path)["callbacks"].items() if k.startswith("ModelCheckpoint")]
    assert len(states) == 1
    return states[0]


def test_last_ckpt_names_the_best_checkpoint_the_final_validation_kept(tmp_path, no_wandb):
    """last.ckpt is written at the stop, before the final validation; when that validation keeps a new best checkpoint
    (and deletes the old one), last.ckpt is brought up to date, so a resumed run compares against, and replaces, the
    best file that is there. summarize's default: ROUGE-1 0.0 after epoch 1, 0.42 after epoch 2, 0.41 after 3."""
    run_dir = tmp_path / "run"
    quiet = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
    assert run.main(["summarize", "fit", "--run_dir", str(run_dir), *quiet]) == 0
    last = run_dir / "checkpoints" / "last.ckpt"
    best = [p for p in last.parent.glob("*.ckpt") if p != last]
    assert len(best) == 1 and best[0].name.startswith("best-epoch=1")
    state = model_checkpoint_state(last)
    assert state["best_model_path"] == str(best[0]) and list(state["best_k_models"]) == [str(best[0])]
    assert float(state["best_model_score"]) == pytest.approx(0.4233, abs=1e-4)
    assert run.main(["summarize", "fit", "--run_dir", str(run_dir), "--ckpt_path", "last",
                     "--trainer.max_epochs", "3", *quiet]) == 0
    summary = json.loads((run_dir / "fit_metrics.json").read_text())
    assert summary["metrics"]["val/rouge1"] < 0.4233                    # epoch 3 is worse: epoch 2's file stays best
    assert sorted(p.name for p in last.parent.glob("*.ckpt")) == [best[0].name, "last.ckpt"]
    assert summary["best_checkpoint"] == str(best[0])


@pytest.mark.parametrize("task", one_fast(run.TASKS))
@pytest.mark.parametrize("kind", ["sigint", "sigterm"])
def test_ctrl_c_or_sigterm_stops_at_the_step_and_resumes_to_the_uninterrupted_result(task, kind, uninterrupted,
                                                                                    tmp_path):
    """Sent during step 2: the run ends that step, writes last.ckpt, exits with 130 (Ctrl-C) or 143 (SIGTERM)."""
    trial = run_trial(uninterrupted(task), tmp_path, kind, 2, fork=True, validate=False)
    assert trial.passed, f"{task}, {kind}: " + "; ".join(trial.problems)
    assert trial.resumed_from == 3, trial                                     # saved at the end of step 2


@pytest.mark.parametrize("task", one_fast(run.TASKS))
def test_max_time_stops_with_last_ckpt_at_the_last_step_and_resumes(task, tmp_path):
    run_dir = tmp_path / "run"
    run_to_end(fit_argv(task, run_dir, 100_000, "--trainer.max_time", "00:00:00:02"), {}, fork=True)
    stopped = json.loads((run_dir / "fit_metrics.json").read_text())["global_step"]
    last = run_dir / "checkpoints" / "last.ckpt"
    assert 0 < stopped < 100_000 and read_checkpoint(last)["global_step"] == stopped
    run_to_end(fit_argv(task, run_dir, stopped + 2, "--ckpt_path", "last", "--trainer.max_time", "null"), {},
               fork=True)
    assert read_checkpoint(last)["global_step"] == stopped + 2


@pytest.mark.parametrize("task", list(run.TASKS))
def test_a_diverging_run_stops_in_one_line_and_keeps_no_nan_weights(task, tmp_path, capfd):
    run_dir = tmp_path / "run"
    child = Child.start(fit_argv(task, run_dir, 50, "--model.lr", "1e30"), {}, fork=True)
    assert child.wait() == run.EXIT_DIVERGED
    errors = [line for line in capfd.readouterr().err.splitlines() if line.startswith(f"run.py {task}")]
    assert len(errors) == 1 and " at step " in errors[0], errors
    assert "the training loss is" in errors[0] or "gradient is not finite" in errors[0], errors
    written = sorted((run_dir / "checkpoints").glob("*.ckpt"))
    assert written, "a checkpoint every step: at least the one before the divergence"
    for path in written:
        weights = read_checkpoint(path)["state_dict"]
        assert all(torch.isfinite(w).all() for w in weights.values() if w.is_floating_point()), path
    assert not unreadable_checkpoints(run_dir)


def test_a_checkpoint_write_that_dies_halfway_leaves_the_previous_one_whole(tmp_path, monkeypatch):
    """The write goes to a hidden temporary file that is renamed into place only when complete."""
    path = tmp_path / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "global_step": 1}, path)

    def dies_halfway(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("no space left on device")

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(OSError):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "global_step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["global_step"] == 1
    assert sorted(p.name for p in path.parent.iterdir()) == [".last.ckpt.tmp", "last.ckpt"]
    assert not unreadable_checkpoints(tmp_path)                         # the partial file is no *.ckpt

