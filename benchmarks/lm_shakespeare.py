"""Train an lm config end to end with `run.py lm fit`, time it, and record the numbers.

    flock /tmp/heavy.lock python benchmarks/lm_shakespeare.py --config configs/lm/shakespeare_char_cpu.yaml --record

Measures: the wall time of the whole `run.py lm fit` process (start-up, data, training, the 8 validations,
checkpoints), steps per second over that wall time and over the training loop alone (timing.json), the
validation loss the run reports at its last step (nanoGPT's estimate: 20 random validation batches), and then,
untimed, the loss over the whole validation split (every token scored once, `--data.val_batches 0`).

The baseline is nanoGPT with the same recipe as measured on this machine by the issue (val loss 1.886 at
iteration 2,000, 121 s wall); nanoGPT's code is not vendored here, so that number is quoted, not re-measured.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.load import LoadMonitor  # noqa: E402
from benchmarks.record import record  # noqa: E402

NANOGPT = {"baseline": "nanoGPT train.py, same recipe, measured by issue 5 on this machine (quoted)",
           "val_loss": 1.886, "wall_s": 121.0, "steps": 2000}


def run(cmd: list[str], env: dict) -> float:
    print("$ " + shlex.join(cmd), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)
    return time.perf_counter() - start


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True)
    p.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the run (default: torch's)")
    p.add_argument("--run_dir", default=None)
    p.add_argument("--record", action="store_true", help="append the numbers to benchmarks/results.jsonl")
    p.add_argument("--seed", type=int, default=None,
                   help="seed_everything for the run (model init); recorded as '<config> seed=N'")
    p.add_argument("extra", nargs="*", help="extra `--key value` overrides passed to run.py")
    args = p.parse_args()
    name = " ".join([Path(args.config).stem, *args.extra])    # overrides stay in the name: a trial is not the config
    if args.seed is not None:
        args.extra = ["--seed_everything", str(args.seed), *args.extra]
        name = f"{name} seed={args.seed}"
    slug = "".join(ch if ch.isalnum() or ch in "._=-" else "_" for ch in name.replace(" seed=", "_seed"))
    run_dir = Path(args.run_dir or ROOT / "runs" / "bench" / slug)
    if run_dir.exists():
        subprocess.run(["rm", "-rf", str(run_dir)], check=True)
    env = dict(os.environ, WANDB_MODE="disabled")
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    fit = [sys.executable, "run.py", "lm", "fit", "--config", args.config, "--run_dir", str(run_dir),
           "--wandb", "false", *args.extra]
    monitor = LoadMonitor(every_s=10)
    wall = run(fit, env)
    load = monitor.stop()
    summary = json.loads((run_dir / "fit_metrics.json").read_text())
    timing = json.loads((run_dir / "timing.json").read_text())
    steps = summary["global_step"]
    val_loss = summary["metrics"]["val/loss"]
    # untimed: the whole validation split, every token once
    full_dir = run_dir.with_name(run_dir.name + "_fullval")
    validate = [sys.executable, "run.py", "lm", "validate", "--config", args.config, "--run_dir", str(full_dir),
                "--ckpt_path", str(run_dir / "checkpoints" / "last.ckpt"), "--data.val_batches", "0",
                "--data.eval_batch_size", "64", "--model.num_samples", "0", *args.extra]
    run(validate, env)
    full_loss = json.loads((full_dir / "validate_metrics.json").read_text())["metrics"]["val/loss"]
    result = {"config": name, "steps": steps, "wall_s": round(wall, 1), "steps_per_s_wall": round(steps / wall, 2),
              "train_loop_s": timing["train_loop_s"], "steps_per_s_loop": timing["steps_per_s"],
              "val_loss_20_batches": val_loss, "val_loss_full_split": full_loss, "mean_load": round(load, 2),
              "threads": args.threads or "default"}
    print(json.dumps(result, indent=1))
    if args.record:
        command = "flock /tmp/heavy.lock " + shlex.join(["python", *sys.argv])
        common = dict(command=command, steps=steps, baseline_wall_s=NANOGPT["wall_s"], mean_load=round(load, 2), threads=result["threads"],
                      train_loop_s=timing["train_loop_s"])
        ng = NANOGPT
        record("lm", name, "val_loss (20 random val batches, nanoGPT estimate)", val_loss, wall,
               baseline=ng["baseline"], baseline_value=ng["val_loss"], **common)
        record("lm", name, "steps/s (over whole-run wall time)", round(steps / wall, 2), wall,
               baseline=ng["baseline"], baseline_value=round(ng["steps"] / ng["wall_s"], 2), **common)
        record("lm", name, "val_loss (whole val split, every token once)", full_loss, wall, **common)
    return 0


if __name__ == "__main__":
    sys.exit(main())
