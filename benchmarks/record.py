"""Append one real run to benchmarks/results.jsonl and rebuild benchmarks/RESULTS.md.

Every benchmark script calls `record(...)` once per number it measured. RESULTS.md is regenerated
from the JSON lines: the latest line for each (task, config, metric) wins.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS_JSONL = HERE / "results.jsonl"
RESULTS_MD = HERE / "RESULTS.md"


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True)
        # the files this module writes do not count: a run recording several rows would otherwise mark all but
        # its first "+dirty"
        ours = [f":(top,exclude){path.relative_to(HERE.parent)}" for path in (RESULTS_JSONL, RESULTS_MD)]
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ":/", *ours],
                               cwd=HERE, capture_output=True, text=True).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except OSError:
        return "unknown"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()}"


def record(task: str, config: str, metric: str, value: float, wall_s: float | None, *,
           command: str | None = None, baseline: str | None = None, baseline_value: float | None = None,
           **extra) -> dict:
    row = {
        "task": task, "config": config, "command": command or " ".join(sys.argv), "metric": metric,
        "value": value, "wall_s": None if wall_s is None else round(wall_s, 1),
        "baseline": baseline, "baseline_value": baseline_value, "git_commit": _git_commit(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
    }
    row.update(extra)
    with RESULTS_JSONL.open("a") as f:
        f.write(json.dumps(row) + "\n")
    write_markdown()
    return row


def _fmt(x) -> str:
    if x is None:
        return ""
    if isinstance(x, float):
        return f"{x:,.4g}" if abs(x) < 1e4 else f"{x:,.0f}"
    return str(x)


def write_markdown() -> None:
    rows = [json.loads(line) for line in RESULTS_JSONL.read_text().splitlines() if line.strip()] \
        if RESULTS_JSONL.exists() else []
    latest: dict[tuple, dict] = {}
    for row in rows:
        latest[(row["task"], row["config"], row["metric"])] = row
    lines = [
        "# Results",
        "",
        "Generated from `results.jsonl` by `benchmarks/record.py` (latest run per task, config and metric).",
        "Every number was measured by the command beside it; baselines ran in the same session on the same machine.",
        "",
        "| task | config | metric | value | baseline | baseline value | wall s | commit | date | command |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in sorted(latest.values(), key=lambda r: (r["task"], r["config"], r["metric"])):
        lines.append("| " + " | ".join([
            row["task"], row["config"], row["metric"], _fmt(row["value"]), _fmt(row.get("baseline")),
            _fmt(row.get("baseline_value")), _fmt(row.get("wall_s")), row.get("git_commit", ""),
            row.get("date", "")[:10], f"`{row.get('command', '')}`",
        ]) + " |")
    machines = sorted({r.get("machine", "") for r in latest.values()})
    if machines:
        lines += ["", "Machines: " + "; ".join(machines)]
    RESULTS_MD.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    write_markdown()
    print(RESULTS_MD.read_text())
