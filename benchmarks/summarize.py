"""AESLC email -> subject line (issue 14), on the 1,906 test emails, ROUGE-1/2/L/Lsum F with stemming against the
original subject (the headline, as PEGASUS reports) and against all four human subjects beside it:

- `lead`: the lead baseline, the email's first sentence cut to the mean training subject length, scored by the
  same metric code (tasks/rouge.py);
- `scratch`: `run.py summarize fit` with configs/summarize/aeslc_scratch.yaml, then `test` of the best checkpoint;
- `minilm`: the same with configs/summarize/aeslc_minilm.yaml (encoder warm-started from all-MiniLM-L6-v2).

Records each score with the training time (wall and CPU seconds of `fit`, validations included).

    flock /tmp/heavy.lock python benchmarks/summarize.py                       # all three
    flock /tmp/heavy.lock python benchmarks/summarize.py --which minilm
    python benchmarks/summarize.py --which scratch --scratch_config configs/summarize/default.yaml \\
        --test_file tests/fixtures/aeslc_dev_head.jsonl --no_record -- --trainer.max_steps 3     # smoke test
Extra run.py options after `--` apply to fit and test; the run is then not recorded.

    flock /tmp/heavy.lock python benchmarks/summarize.py --which minilm --retest runs/summarize/<recorded run>
tests the best checkpoint of a recorded run again with the decoding settings the config has now (chosen on dev with
`run.py summarize validate --model.val_beam_size ...`), recorded with that run's training time and steps.

    flock /tmp/heavy.lock python benchmarks/summarize.py --which minilm --finish runs/summarize/<unrecorded run>
tests and records a run whose fit finished but whose test did not (a crash, a kill): its training time is the one
`fit` wrote to bench_fit.json, or, for a run older than that file, the time from the stamp in the directory's name
(taken just before fit started, when the invocation fitted only this one model) to fit_metrics.json's last write
(when fit ended); CPU time is then unknown.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import run  # noqa: E402
from benchmarks.record import record  # noqa: E402
from data.seq2seq import read_aeslc  # noqa: E402
from tasks.rouge import ROUGE, ROUGE_TYPES, lead_baseline  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "aeslc"
# Published, quoted (not re-run): PEGASUS (Zhang et al. 2020, appendix) Transformer-base from scratch on AESLC, and the
# AESLC paper's best model (Zhang & Tetreault 2019), ROUGE-1/2/L.
QUOTED = {"scratch": ("PEGASUS paper, Transformer-base from scratch (quoted)", {"rouge1": 15.04, "rouge2": 7.39,
                                                                               "rougeL": 14.93}),
          "minilm": ("AESLC paper's best model (quoted); issue 14 asks rouge1 >= 24", {"rouge1": 23.67, "rouge2": 10.29,
                                                                                       "rougeL": 23.44})}


def lead_scores(train_file: Path, test_file: Path) -> tuple[dict[str, float], int]:
    """ROUGE of the lead baseline (single and multi reference) and the number of words it keeps."""
    train, test = read_aeslc(train_file), read_aeslc(test_file)
    words = round(sum(len(t.split()) for t in train.targets) / len(train))
    leads = [lead_baseline(email, words) for email in test.sources]
    single, multi = ROUGE(), ROUGE()
    single.update(leads, test.targets)
    multi.update(leads, test.references)
    return {**single.compute(), **{f"{k}_multi_ref": v for k, v in multi.compute().items()}}, words


def fit_and_test(config: str, test_file: Path, run_dir: Path, overrides: list[str]) -> dict:
    start, start_cpu = time.perf_counter(), time.process_time()
    if run.main(["summarize", "fit", "--config", config, "--run_dir", str(run_dir), "--wandb", "false",
                 "--trainer.enable_progress_bar", "false", *overrides]):
        sys.exit(2)
    wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    fit = json.loads((run_dir / "fit_metrics.json").read_text())
    timing = {"train_wall": wall, "train_cpu": cpu, "steps": fit["global_step"]}
    (run_dir / "bench_fit.json").write_text(json.dumps(timing, indent=1))    # what --finish reads if test fails
    return {**test_best(config, test_file, run_dir, overrides), **timing, "run_dir": str(run_dir)}


def test_best(config: str, test_file: Path, run_dir: Path, overrides: list[str], out: str = "test") -> dict:
    """`run.py summarize test` of a fitted run's best checkpoint (its last without one) into run_dir / out: scores
    and decoding settings."""
    fit = json.loads((run_dir / "fit_metrics.json").read_text())
    best = fit.get("best_checkpoint") or fit["last_checkpoint"]
    if run.main(["summarize", "test", "--config", config, "--ckpt_path", best, "--data.test_file", str(test_file),
                 "--run_dir", str(run_dir / out), "--trainer.enable_progress_bar", "false", *overrides]):
        sys.exit(2)
    result = json.loads((run_dir / out / "test_scores.json").read_text())
    return {"scores": result["scores"], "decoding": result["decoding"]}


def finish(config: str, test_file: Path, run_dir: Path) -> dict:
    """`fit_and_test`'s result for a run whose fit finished and whose test did not (see the module doc)."""
    run_dir = run_dir.resolve()
    metrics = run_dir / "fit_metrics.json"
    fit = json.loads(metrics.read_text()) if metrics.exists() else {}
    if fit.get("subcommand") != "fit":
        sys.exit(f"--finish {run_dir}: no finished fit there (fit_metrics.json missing or not a fit's)")
    saved = run_dir / "bench_fit.json"
    if saved.exists():
        timing = json.loads(saved.read_text())
    else:
        stamp = run_dir.name.rsplit("_", 1)[-1]
        if not stamp.isdigit():
            sys.exit(f"--finish {run_dir}: no bench_fit.json, and the name ends in no start stamp "
                     "(bench_<config>_<unix time>)")
        stamp = int(stamp)
        timing = {"train_wall": metrics.stat().st_mtime - stamp, "train_cpu": None,
                  "steps": fit["global_step"], "train_wall_from": "run directory stamp to fit_metrics.json's write"}
    return {**test_best(config, test_file, run_dir, []), **timing, "run_dir": str(run_dir)}


def retest(config: str, test_file: Path, run_dir: Path) -> dict:
    """`fit_and_test`'s result for an earlier recorded run: its best checkpoint tested again with `config`'s decoding
    settings; the training time and steps are the ones recorded for that run."""
    rows = [json.loads(line) for line in (ROOT / "benchmarks" / "results.jsonl").read_text().splitlines()]
    row = next((r for r in reversed(rows) if r.get("run_dir") == str(run_dir.resolve())), None)
    if row is None:
        sys.exit(f"--retest {run_dir}: no recorded run in benchmarks/results.jsonl")
    result = test_best(config, test_file, run_dir, [], out=f"retest_{int(time.time())}")
    return {**result, "train_wall": row["wall_s"],
            "train_cpu": row["train_cpu_s"], "steps": row["steps"], "run_dir": str(run_dir.resolve()),
            "retest_of": {"git_commit": row["git_commit"], "date": row["date"], "decoding": row["decoding"]}}


def show(name: str, scores: dict[str, float]) -> None:
    print(f"  {name:<8} single reference " + " ".join(f"{t} {scores[t]:5.2f}" for t in ROUGE_TYPES) +
          " | all four " + " ".join(f"{t} {scores[t + '_multi_ref']:5.2f}" for t in ROUGE_TYPES))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--which", default="lead,scratch,minilm", help="comma-separated: lead, scratch, minilm")
    parser.add_argument("--scratch_config", default="configs/summarize/aeslc_scratch.yaml")
    parser.add_argument("--minilm_config", default="configs/summarize/aeslc_minilm.yaml")
    parser.add_argument("--train_file", type=Path, default=DATA / "train.jsonl", help="for the lead's length")
    parser.add_argument("--test_file", type=Path, default=DATA / "test.jsonl")
    parser.add_argument("--no_record", action="store_true", help="print only; append nothing to results.jsonl")
    parser.add_argument("--retest", type=Path, help="a recorded run directory: test its best checkpoint again")
    parser.add_argument("--finish", type=Path, help="a run directory whose fit finished and whose test did not")
    parser.add_argument("overrides", nargs="*", help="extra run.py options (after --); the run is then not recorded")
    args = parser.parse_args()
    which = args.which.split(",")
    os.environ.setdefault("WANDB_MODE", "offline")
    stamp = int(time.time())
    recording = not (args.no_record or args.overrides)
    command = f"flock /tmp/heavy.lock python benchmarks/summarize.py --which {args.which}"
    for option in ("retest", "finish"):
        if getattr(args, option):
            if len(which) != 1 or which[0] == "lead":
                sys.exit(f"--{option}: name the one kind of model it ran, --which scratch or --which minilm")
            command += f" --{option} {getattr(args, option)}"

    print(f"AESLC test: {args.test_file}")
    if "lead" in which:
        start = time.perf_counter()
        scores, words = lead_scores(args.train_file, args.test_file)
        show("lead", scores)
        if recording:
            for metric, value in scores.items():
                record("summarize", f"aeslc lead baseline ({words} words)", metric, round(value, 2),
                       time.perf_counter() - start, command=command)
    for kind, config in (("scratch", args.scratch_config), ("minilm", args.minilm_config)):
        if kind not in which:
            continue
        if args.retest:
            run_dir = args.retest
            result = retest(config, args.test_file, run_dir)
        elif args.finish:
            run_dir = args.finish
            result = finish(config, args.test_file, run_dir)
        else:
            run_dir = ROOT / "runs" / "summarize" / f"bench_{Path(config).stem}_{stamp}"
            result = fit_and_test(config, args.test_file, run_dir, args.overrides)
        show(kind, result["scores"])
        cpu = "unknown" if result["train_cpu"] is None else f"{result['train_cpu']:.0f} s"
        print(f"           training {result['train_wall']:.0f} s wall, {cpu} CPU, {result['steps']} steps ({run_dir})")
        if not recording:
            continue
        baseline, quoted = QUOTED[kind]
        for metric, value in result["scores"].items():
            record("summarize", Path(config).stem, metric, round(value, 2), result["train_wall"], command=command,
                   baseline=baseline if metric in quoted else None, baseline_value=quoted.get(metric),
                   train_cpu_s=None if result["train_cpu"] is None else round(result["train_cpu"], 1),
                   steps=result["steps"], decoding=result["decoding"],
                   threads=torch.get_num_threads(), run_dir=result["run_dir"],
                   load_avg_end=round(os.getloadavg()[0], 2),
                   **{key: result[key] for key in ("retest_of", "train_wall_from") if key in result})
    if not recording:
        print("not recorded" + (" (extra overrides given)" if args.overrides else ""))


if __name__ == "__main__":
    main()
