"""SST-2, one epoch of all-MiniLM-L6-v2: our `run.py` against a plain `transformers` loop, same machine.

    python benchmarks/sst2.py --which both   # the HF loop, then ours; both recorded (make bench)
    python benchmarks/sst2.py --which ours   # ours only; the baseline is the latest HF run recorded here
    python benchmarks/sst2.py --which hf     # the HF loop only (benchmarks/sst2_hf_baseline.py)

Wall time is the whole command, process start to the dev accuracy printed (imports, reading and tokenising
the data, the epoch, dev evaluation, checkpoints, logging): what a user waits for. Run it alone on the
machine (`flock /tmp/heavy.lock ...` here); CPU seconds and the mean load average are recorded beside it.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.load import LoadMonitor  # noqa: E402
from benchmarks.record import RESULTS_JSONL, record  # noqa: E402

HF_CONFIG = "hf_transformers_loop (all-MiniLM-L6-v2, bs32, lr5e-5)"


def latest_record(task: str, config: str) -> dict | None:
    if not RESULTS_JSONL.exists():
        return None
    rows = [json.loads(line) for line in RESULTS_JSONL.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r["task"] == task and r["config"] == config]
    return rows[-1] if rows else None


def run_ours(task: str, config: str, metric: str, extra_args: list[str] = (), baseline: dict | None = None,
             run_dir: str | None = None) -> dict:
    """Runs `python run.py classify fit --config <config>` in a fresh process, records the dev metric."""
    extra_args = list(extra_args)
    if "--run_dir" in extra_args:
        i = extra_args.index("--run_dir")
        run_dir = extra_args[i + 1]
        del extra_args[i:i + 2]
    run_dir = run_dir or f"runs/bench/{Path(config).stem}"
    cmd = [sys.executable, "run.py", "classify", "fit", "--config", config, "--run_dir", run_dir,
           "--trainer.enable_progress_bar", "false", *extra_args]
    shown = " ".join(["python", *cmd[1:]])
    print(f"$ {shown}", flush=True)
    monitor = LoadMonitor()
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT)
    wall_s = time.perf_counter() - start
    load = monitor.stop()
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{shown}: exit code {proc.returncode}")
    summary = json.loads((ROOT / run_dir / "fit_metrics.json").read_text())
    value = summary["metrics"][f"val/{metric}"]
    print(f"{task}: dev {metric} {value:.4f}  wall {wall_s:.0f}s  cpu {usage.ru_utime + usage.ru_stime:.0f}s  "
          f"mean load {load:.2f}", flush=True)
    label = " ".join([Path(config).stem, *extra_args])   # overrides stay in the name: a trial is never the config
    record(task, label, f"dev_{metric}", value, wall_s, command=shown,
           baseline=baseline["config"] if baseline else None,
           baseline_value=baseline["value"] if baseline else None,
           baseline_wall_s=baseline["wall_s"] if baseline else None,
           cpu_s=round(usage.ru_utime + usage.ru_stime, 1), mean_loadavg=round(load, 2),
           global_step=summary["global_step"])
    return {"value": value, "wall_s": wall_s}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--which", choices=["both", "ours", "hf"], default="both")
    p.add_argument("--config", default="configs/classify/sst2_minilm.yaml")
    args, extra = p.parse_known_args(argv)
    if args.which in ("both", "hf"):
        from benchmarks import sst2_hf_baseline
        sst2_hf_baseline.main([])
    if args.which in ("both", "ours"):
        baseline = latest_record("sst2", HF_CONFIG)
        if baseline is None:
            print("no HF baseline recorded yet: run with --which hf or both", file=sys.stderr)
        ours = run_ours("sst2", args.config, "accuracy", extra, baseline)
        if baseline:
            print(f"ours {ours['value']:.4f} in {ours['wall_s']:.0f} s vs transformers loop "
                  f"{baseline['value']:.4f} in {baseline['wall_s']:.0f} s (recorded {baseline['date']})")
    return 0


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())
