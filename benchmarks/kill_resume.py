"""Kill a real fit at random steps, resume it with `--ckpt_path last`, and compare with an uninterrupted run.

For every task in run.TASKS: one uninterrupted fit of the task's embedded default config (its seed, a checkpoint
every step, enough steps to cross epoch boundaries where the task has epochs), then `--trials` fits that are
stopped at a random step and resumed. A trial is one of

    kill    SIGKILL at a random step (mid-epoch included): nothing runs after the signal;
    write   SIGKILL while last.ckpt is being written (a slow disk simulated: the write takes ~0.2 s, and the kill
            lands as soon as the hidden temporary file appears);
    sigint  Ctrl-C: the run must stop at the end of that step with exit code 130 and a usable last.ckpt;
    sigterm a scheduler's pre-emption: the same, exit code 143.

A trial passes when, after the resume, the run ends at the same global step, trained on the same examples in the
same order (NLP_TRACE_SAMPLES records `batch["index"]` of every step: none skipped, none repeated), holds the same
weights (compared tensor by tensor), validates to the same metrics, and when no `*.ckpt` was ever left
unreadable by the kill.

    flock /tmp/heavy.lock env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/kill_resume.py [--tasks classify ner]
        [--trials 10] [--steps 14] [--seed 0] [--record]

The same functions serve tests/test_resume.py, which runs one trial of each kind per task in forked processes
(`fork=True`: no Python start-up per run).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import run  # noqa: E402
from tasks.base import TRACE_SAMPLES_ENV  # noqa: E402
from tasks.checkpoint import CheckpointError, read_checkpoint  # noqa: E402

QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false", "--wandb", "false"]
EPOCH = 4                   # training batches per epoch for tasks with epochs (--trainer.limit_train_batches)
EXIT = {"kill": -signal.SIGKILL, "write": -signal.SIGKILL, "sigint": run.EXIT_INTERRUPTED,
        "sigterm": run.EXIT_TERMINATED}
SIGNAL = {"kill": signal.SIGKILL, "write": signal.SIGKILL, "sigint": signal.SIGINT, "sigterm": signal.SIGTERM}


# ---- the runs -------------------------------------------------------------------------------------------------
def has_epochs(task: str) -> bool:
    """A task trained by epochs (its default config sets no trainer.max_steps), not by an endless stream."""
    config = yaml.safe_load((ROOT / run.TASKS[task].default_config).read_text())
    return not (config.get("trainer") or {}).get("max_steps")


def fit_argv(task: str, run_dir: Path, steps: int, *extra: str) -> list[str]:
    """`run.py task fit` of the default config for `steps` optimizer steps, last.ckpt after every step; a task with
    epochs gets epochs of EPOCH batches, so the run crosses epoch boundaries (and validates at each)."""
    epochs = ["--trainer.limit_train_batches", str(EPOCH), "--trainer.max_epochs", "-1"] if has_epochs(task) else []
    return [task, "fit", "--run_dir", str(run_dir), "--trainer.max_steps", str(steps), "--checkpoint_every_n_steps",
            "1", *epochs, *QUIET, *extra]


def slow_checkpoint_writes(seconds: float = 0.2, chunks: int = 16) -> None:
    """Make every torch.save into an open file take `seconds`, written in `chunks` pieces: a slow disk, so that a
    kill can land in the middle of a checkpoint write."""
    save = torch.save

    def slow_save(obj, f, *args, **kwargs):
        if not hasattr(f, "write"):
            return save(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        save(obj, buffer, *args, **kwargs)
        data = buffer.getvalue()
        step = -(-len(data) // chunks)
        for i in range(0, len(data), step):
            f.write(data[i:i + step])
            f.flush()
            time.sleep(seconds / chunks)

    torch.save = slow_save


class Child:
    """A child process: `run.py argv` (`Child.start`) or a function (`Child.call`, forked)."""

    def __init__(self, pid: int, proc: Optional[subprocess.Popen] = None):
        self.pid, self.proc = pid, proc
        self.code: Optional[int] = None

    @classmethod
    def start(cls, argv: list[str], env: dict[str, str], fork: bool = False, slow_writes: bool = False) -> "Child":
        """`run.py argv` with `env` added: a fork of this process (`fork=True`: no start-up time, for tests), or a
        new Python process started as a user would (`python run.py ...`; this module's `--child` entry for a slow
        disk)."""
        if fork:
            return cls.call(lambda: run.main(argv), env, slow_writes)
        entry = [__file__, "--child", "--slow-writes", "--"] if slow_writes else [str(ROOT / "run.py")]
        proc = subprocess.Popen([sys.executable, *entry, *argv], env={**os.environ, **env}, cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        return cls(proc.pid, proc)

    @classmethod
    def call(cls, function, env: Optional[dict[str, str]] = None, slow_writes: bool = False) -> "Child":
        """`function()` in a fork of this process; its exit code is what the function returns (None: 0), or 1 when
        it raises (the traceback goes to stderr). Only from a process that has run torch on one thread: a fork of
        one whose OpenMP pool has started hangs (tests/conftest.py)."""
        pid = os.fork()
        if pid:
            return cls(pid)
        code = 1
        try:
            os.environ.update(env or {})
            if slow_writes:
                slow_checkpoint_writes()
            code = function() or 0
        except BaseException:  # noqa: BLE001 - the child reports any failure through its exit code
            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(code)

    def poll(self) -> Optional[int]:
        if self.code is None:
            if self.proc is not None:
                self.code = self.proc.poll()
            else:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                if pid:
                    self.code = os.waitstatus_to_exitcode(status)
        return self.code

    def wait(self, timeout: float = 600) -> int:
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() > deadline:
                os.kill(self.pid, signal.SIGKILL)
            time.sleep(0.01)
        return self.code

    def stderr(self) -> str:
        return self.proc.stderr.read() if self.proc is not None and self.proc.stderr else ""


def free_port() -> int:
    """A TCP port free on this machine now (for a process group's MASTER_PORT)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_to_end(argv: list[str], env: dict[str, str], fork: bool) -> None:
    child = Child.start(argv, env, fork)
    code = child.wait()
    if code != 0:
        raise RuntimeError(f"run.py {' '.join(argv)} exited with {code}: {child.stderr()[-2000:]}")


# ---- what a run leaves --------------------------------------------------------------------------------------
def read_trace(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def resumed_trace(killed: list[dict], resumed: list[dict]) -> list[dict]:
    """The steps whose updates the resumed run's weights hold: the killed run's before the step the resumed run
    started at (later ones were lost with the process), then the resumed run's."""
    first = resumed[0]["step"] if resumed else float("inf")
    return [r for r in killed if r["step"] < first] + resumed


def unreadable_checkpoints(run_dir: Path) -> list[str]:
    """Every `*.ckpt` of the run that does not load (a half-written one would be listed)."""
    bad = []
    for path in sorted((run_dir / "checkpoints").glob("*.ckpt")):
        try:
            read_checkpoint(path)
        except CheckpointError as e:
            bad.append(str(e))
    return bad


def weight_difference(a: Path, b: Path) -> float:
    """Largest absolute difference between two checkpoints' weights (inf if they hold different tensors)."""
    sa, sb = (torch.load(p, map_location="cpu", weights_only=True)["state_dict"] for p in (a, b))
    if sa.keys() != sb.keys() or any(sa[k].shape != sb[k].shape for k in sa):
        return float("inf")
    return max(((sa[k].double() - sb[k].double()).abs().max().item() for k in sa if sa[k].numel()), default=0.0)


def validation_metrics(task: str, checkpoint: Path, run_dir: Path, fork: bool) -> dict[str, float]:
    run_to_end([task, "validate", "--ckpt_path", str(checkpoint), "--run_dir", str(run_dir), *QUIET], {}, fork)
    return json.loads((run_dir / "validate_metrics.json").read_text())["metrics"]


def same_metrics(a: dict, b: dict, rel: float = 1e-6) -> bool:
    return a.keys() == b.keys() and all(abs(a[k] - b[k]) <= rel * max(1.0, abs(a[k])) for k in a)


# ---- one trial ----------------------------------------------------------------------------------------------
@dataclass
class Reference:
    task: str
    steps: int
    trace: list[dict]
    checkpoint: Path
    metrics: dict


@dataclass
class Trial:
    task: str
    kind: str
    stop_step: int                       # the step the signal was sent at
    exit_code: Optional[int] = None
    resumed_from: Optional[int] = None   # the global step of the checkpoint the run resumed from
    partial_bytes: Optional[int] = None  # size of the half-written temporary file at the kill ("write")
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems


def reference_run(task: str, root: Path, steps: int, fork: bool) -> Reference:
    run_dir = root / "reference"
    trace = root / "reference.jsonl"
    run_to_end(fit_argv(task, run_dir, steps), {TRACE_SAMPLES_ENV: str(trace)}, fork)
    last = run_dir / "checkpoints" / "last.ckpt"
    return Reference(task, steps, read_trace(trace), last, validation_metrics(task, last, root / "validate_ref", fork))


def stop_when(child: Child, trace: Path, step: int, kind: str, run_dir: Path, trial: Trial,
              timeout: float = 600) -> None:
    """Send the trial's signal once the run has started `step` (and, for "write", once the checkpoint after it is
    being written)."""
    partial = run_dir / "checkpoints" / ".last.ckpt.tmp"
    deadline = time.monotonic() + timeout
    while child.poll() is None and time.monotonic() < deadline:
        started = len(trace.read_text().splitlines()) if trace.exists() else 0
        if started > step and (kind != "write" or (partial.exists() and partial.stat().st_size > 0)):
            if kind == "write":
                trial.partial_bytes = partial.stat().st_size
            os.kill(child.pid, SIGNAL[kind])
            return
        time.sleep(0.002)
    trial.problems.append(f"the run ended (exit {child.poll()}) before step {step}: {child.stderr()[-1000:]}")


def run_trial(ref: Reference, root: Path, kind: str, step: int, fork: bool, validate: bool = True) -> Trial:
    """Stop a fit of `ref.task` at `step` the `kind` way, resume it, and compare with the reference run (its
    validation metrics too, with `validate`)."""
    trial = Trial(ref.task, kind, step)
    run_dir, killed, resumed = root / "run", root / "killed.jsonl", root / "resumed.jsonl"
    child = Child.start(fit_argv(ref.task, run_dir, ref.steps), {TRACE_SAMPLES_ENV: str(killed)}, fork,
                        slow_writes=kind == "write")
    stop_when(child, killed, step, kind, run_dir, trial)
    trial.exit_code = child.wait()
    if trial.problems:
        return trial
    if trial.exit_code != EXIT[kind]:
        trial.problems.append(f"exit code {trial.exit_code}, expected {EXIT[kind]}: {child.stderr()[-1000:]}")
    trial.problems += unreadable_checkpoints(run_dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    if not last.exists():
        trial.problems.append("no last.ckpt to resume from")
        return trial
    trial.resumed_from = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
    run_to_end(fit_argv(ref.task, run_dir, ref.steps, "--ckpt_path", "last"), {TRACE_SAMPLES_ENV: str(resumed)},
               fork)
    final = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
    if final != ref.steps:
        trial.problems.append(f"ended at step {final}, the uninterrupted run at {ref.steps}")
    seen = resumed_trace(read_trace(killed), read_trace(resumed))
    if [(r["step"], r["index"]) for r in seen] != [(r["step"], r["index"]) for r in ref.trace]:
        first = next((i for i, (a, b) in enumerate(zip(seen, ref.trace)) if a != b), min(len(seen), len(ref.trace)))
        trial.problems.append(f"trained on other examples than the uninterrupted run from record {first} on "
                              f"({len(seen)} records vs {len(ref.trace)})")
    difference = weight_difference(last, ref.checkpoint)
    if difference != 0.0:
        trial.problems.append(f"weights differ from the uninterrupted run's by up to {difference:.3g}")
    metrics = validation_metrics(ref.task, last, root / "validate", fork) if validate else ref.metrics
    if not same_metrics(metrics, ref.metrics):
        trial.problems.append(f"validation metrics {metrics} vs uninterrupted {ref.metrics}")
    return trial


# ---- the benchmark ------------------------------------------------------------------------------------------
KINDS = ("kill", "write", "kill", "write", "kill", "write", "kill", "write", "sigint", "sigterm")


def trials_of(task: str, trials: int, steps: int, seed: int, workdir: Path) -> tuple[Reference, list[Trial]]:
    rng = random.Random(f"{seed}-{task}")
    root = workdir / task
    ref = reference_run(task, root, steps, fork=False)
    out = []
    for i in range(trials):
        kind = KINDS[i % len(KINDS)]
        step = rng.randrange(1, steps - 1)
        trial_root = root / f"trial_{i}"
        trial = run_trial(ref, trial_root, kind, step, fork=False)
        shutil.rmtree(trial_root, ignore_errors=True)
        out.append(trial)
        print(f"{task} trial {i}: {kind} at step {step} -> resumed from {trial.resumed_from}, exit {trial.exit_code}"
              + (f", {trial.partial_bytes} bytes half-written" if trial.partial_bytes else "")
              + (": equal" if trial.passed else ": " + "; ".join(trial.problems)), flush=True)
    return ref, out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="*", default=list(run.TASKS))
    p.add_argument("--trials", type=int, default=10, help="stopped-and-resumed runs per task")
    p.add_argument("--steps", type=int, default=14, help="optimizer steps of every run")
    p.add_argument("--seed", type=int, default=0, help="seeds the choice of stop steps (the runs use their config's)")
    p.add_argument("--record", action="store_true", help="append the trial counts to benchmarks/results.jsonl")
    args = p.parse_args()
    failed = 0
    with tempfile.TemporaryDirectory(prefix="kill_resume_") as workdir:
        for task in args.tasks:
            start = time.perf_counter()
            try:
                _, trials = trials_of(task, args.trials, args.steps, args.seed, Path(workdir))
            except RuntimeError as e:
                print(f"{task}: the uninterrupted run failed: {run.one_line(e)}", flush=True)
                failed += 1
                continue
            equal = sum(t.passed for t in trials)
            failed += equal < len(trials)
            kinds = {k: sum(t.kind == k for t in trials) for k in dict.fromkeys(KINDS)}
            print(f"{task}: {equal}/{len(trials)} trials equal to the uninterrupted run ({kinds})", flush=True)
            if args.record:
                from benchmarks.record import record
                record(task, run.TASKS[task].default_config, "kill_resume_trials_equal", equal,
                       time.perf_counter() - start, trials=len(trials), steps=args.steps, kinds=kinds,
                       stop_steps=[t.stop_step for t in trials], resumed_from=[t.resumed_from for t in trials],
                       problems=[p for t in trials for p in t.problems])
    return 1 if failed else 0


def child_main(argv: list[str]) -> int:
    """`kill_resume.py --child [--slow-writes] -- run.py's arguments`: run.py in this process, on a slow disk."""
    if argv and argv[0] == "--slow-writes":
        slow_checkpoint_writes()
        argv = argv[1:]
    run.lightning_notes_to_stdout()
    return run.main(argv[1:] if argv and argv[0] == "--" else argv)


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[2:]) if sys.argv[1:2] == ["--child"] else main())
