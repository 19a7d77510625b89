"""More processes, the same numbers, for every task in run.TASKS: the validation metrics of one checkpoint (the
task's default config fit for two steps on one process) computed by DDP on the CPU (gloo) over 2 devices, and over
2 simulated nodes of 1 process each, equal those of 1 process exactly. Every example is evaluated on exactly one
process (data/batching.py, Task.all_gather_uneven), so none is counted twice by padding and none is dropped.

- 2 devices: `--trainer.strategy ddp --trainer.devices 2`, as a user types it: Lightning's launcher starts the
  second process as `python run.py ...` again (a real subprocess; marked slow except for classify, ~20-50 s each on
  2 cores), and with `ddp_fork` (the same DDPStrategy, its processes forked: seconds) for every task.
- 2 nodes: `--trainer.num_nodes 2 --trainer.devices 1`, two processes started here as a cluster would start them.
  Lightning's LightningEnvironment reads MASTER_ADDR, MASTER_PORT and NODE_RANK (LOCAL_RANK must be unset, or it
  takes the processes for externally launched ones); the world size comes from num_nodes x devices, and WORLD_SIZE
  is written by Lightning, not read.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import run
from benchmarks.kill_resume import QUIET, Child, free_port, read_trace, run_to_end
from conftest import ROOT
from tasks.base import TRACE_SAMPLES_ENV

CPU_DDP = ["--trainer.accelerator", "cpu"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict:
    """task -> last.ckpt of its default config after two steps on one process."""
    out = {}
    for task in run.TASKS:
        run_dir = tmp_path_factory.mktemp(f"fit_{task}")
        run_to_end([task, "fit", "--trainer.max_steps", "2", "--run_dir", str(run_dir), *QUIET], {}, fork=True)
        out[task] = run_dir / "checkpoints" / "last.ckpt"
    return out


def validate_argv(task, checkpoint, run_dir, *args) -> list[str]:
    return [task, "validate", "--ckpt_path", str(checkpoint), "--run_dir", str(run_dir), *QUIET, *args]


def metrics(run_dir) -> dict[str, float]:
    return json.loads((run_dir / "validate_metrics.json").read_text())["metrics"]


def one_process(task, checkpoint, run_dir) -> dict[str, float]:
    run_to_end(validate_argv(task, checkpoint, run_dir), {}, fork=True)
    found = metrics(run_dir)
    assert found, f"{task}: validation logged no metrics"
    return found


@pytest.mark.parametrize("task", list(run.TASKS))
def test_two_devices_and_two_nodes_give_the_metrics_of_one_process(task, checkpoints, tmp_path):
    one = one_process(task, checkpoints[task], tmp_path / "one")
    devices = validate_argv(task, checkpoints[task], tmp_path / "devices", *CPU_DDP, "--trainer.strategy", "ddp_fork",
                            "--trainer.devices", "2")
    run_to_end(devices, {}, fork=True)
    assert metrics(tmp_path / "devices") == one, "2 devices"
    port = str(free_port())
    nodes = validate_argv(task, checkpoints[task], tmp_path / "nodes", *CPU_DDP, "--trainer.strategy", "ddp",
                          "--trainer.devices", "1", "--trainer.num_nodes", "2")
    children = [Child.start(nodes, {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "NODE_RANK": str(rank)},
                            fork=True) for rank in (0, 1)]
    assert [child.wait(timeout=300) for child in children] == [0, 0]
    assert metrics(tmp_path / "nodes") == one, "2 nodes"


@pytest.mark.parametrize("task", list(run.TASKS))
def test_two_processes_train_on_the_batches_of_one_each_once(task, tmp_path):
    """Process r of W trains on batches r, r + W, ... of the one-process order: 2 processes x 2 steps see the
    batches of 1 process x 4 steps, none twice, none left out (NLP_TRACE_SAMPLES records each step's examples)."""
    traces = {}
    for name, steps, args in (("one", 4, []), ("two", 2, [*CPU_DDP, "--trainer.strategy", "ddp_fork",
                                                           "--trainer.devices", "2"])):
        traces[name] = tmp_path / f"{name}.jsonl"
        run_to_end([task, "fit", "--trainer.max_steps", str(steps), "--run_dir", str(tmp_path / name), *QUIET, *args],
                   {TRACE_SAMPLES_ENV: str(traces[name])}, fork=True)
    one, two = (read_trace(traces[name]) for name in ("one", "two"))
    assert len(one) == 4 and len(two) == 4, (one, two)
    assert [r["index"] for r in sorted(two, key=lambda r: (r["step"], r["rank"]))] == [r["index"] for r in one]
    # the launching process reports the children's step count (Lightning leaves its own trainer at step 0)
    assert json.loads((tmp_path / "two" / "fit_metrics.json").read_text())["global_step"] == 2


@pytest.mark.parametrize("task", [t if t == "classify" else pytest.param(t, marks=pytest.mark.slow)
                                  for t in run.TASKS])
def test_the_ddp_command_line_gives_the_metrics_of_one_process(task, checkpoints, tmp_path):
    """`python run.py <task> validate ... --trainer.strategy ddp --trainer.devices 2 --trainer.accelerator cpu`."""
    one = one_process(task, checkpoints[task], tmp_path / "one")
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE")}
    argv = validate_argv(task, checkpoints[task], tmp_path / "two", *CPU_DDP, "--trainer.strategy", "ddp",
                         "--trainer.devices", "2")
    proc = subprocess.run([sys.executable, str(ROOT / "run.py"), *argv], capture_output=True, text=True, timeout=600,
                          env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert metrics(tmp_path / "two") == one
