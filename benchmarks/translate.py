"""Multi30k en->de from scratch (issue 13): `run.py translate fit`, then `run.py translate test` of the same
checkpoint decoded greedily (beam 1: beam search's greedy path, tested equal to greedy) and with beam 5; and, when
the config keeps snapshots, of the average of the last ones (`run.py translate average`) with beam 5.

Records for each decoding sacreBLEU (cased, detokenised, 13a) and the literature's Multi30k BLEU (lowercased,
international tokenisation), the sacreBLEU signature, the training time (wall and CPU seconds of `fit`, which
includes the greedy validations) and whether beam search beat greedy on the same checkpoint.

    flock /tmp/heavy.lock python benchmarks/translate.py                 # configs/translate/multi30k_256.yaml
    python benchmarks/translate.py --config configs/translate/default.yaml --no_record -- --trainer.max_steps 5
                                                                          # smoke test (fixtures, seconds)
Extra run.py options after `--` apply to fit and test; the run is then not recorded.
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

TARGET = {"bleu": 32.0, "bleu_lowercase_intl": 36.0}      # issue 13: sacreBLEU >= 32, lowercased tokenised >= 36


def test(config: str, ckpt: str, beam_size: int, run_dir: Path, overrides: list[str]) -> dict:
    """`run.py translate test` of one checkpoint with one beam size -> test_scores.json (+ seconds)."""
    start = time.perf_counter()
    code = run.main(["translate", "test", "--config", config, "--ckpt_path", ckpt, "--model.beam_size", str(beam_size),
                     "--run_dir", str(run_dir), "--trainer.enable_progress_bar", "false", *overrides])
    if code:
        sys.exit(code)
    result = json.loads((run_dir / "test_scores.json").read_text())
    result["seconds"] = time.perf_counter() - start
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/translate/multi30k_256.yaml")
    parser.add_argument("--run_dir", default=None)
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--no_record", action="store_true", help="print only; append nothing to results.jsonl")
    parser.add_argument("overrides", nargs="*", help="extra run.py options (after --); the run is then not recorded")
    args = parser.parse_args()
    name = Path(args.config).stem
    run_dir = Path(args.run_dir or f"runs/translate/bench_{name}_{int(time.time())}")
    os.environ.setdefault("WANDB_MODE", "offline")

    start, start_cpu = time.perf_counter(), time.process_time()
    code = run.main(["translate", "fit", "--config", args.config, "--run_dir", str(run_dir), "--wandb", "false",
                     "--trainer.enable_progress_bar", "false", *args.overrides])
    if code:
        sys.exit(code)
    train_wall, train_cpu = time.perf_counter() - start, time.process_time() - start_cpu
    fit = json.loads((run_dir / "fit_metrics.json").read_text())
    best = fit.get("best_checkpoint") or fit["last_checkpoint"]

    results = {"greedy": test(args.config, best, 1, run_dir / "test_greedy", args.overrides),
               f"beam{args.beam}": test(args.config, best, args.beam, run_dir / f"test_beam{args.beam}",
                                        args.overrides)}
    snapshots = sorted((run_dir / "snapshots").glob("*.ckpt"))
    if len(snapshots) >= 2:
        averaged = run_dir / "averaged.ckpt"
        if run.main(["translate", "average", "--ckpts", *map(str, snapshots), "--out", str(averaged)]):
            sys.exit(2)
        results[f"average{len(snapshots)}_beam{args.beam}"] = test(args.config, str(averaged), args.beam,
                                                                   run_dir / "test_average", args.overrides)
    greedy, beam = results["greedy"]["scores"], results[f"beam{args.beam}"]["scores"]
    beam_wins = beam["bleu"] > greedy["bleu"] and beam["bleu_lowercase_intl"] > greedy["bleu_lowercase_intl"]

    print(f"\n{name}: training {train_wall:.0f} s wall, {train_cpu:.0f} s CPU, {fit['global_step']} steps "
          f"({run_dir})")
    for decoding, result in results.items():
        s = result["scores"]
        marks = {k: "ok" if s[k] >= TARGET[k] else "below target" for k in TARGET}
        print(f"  {decoding:<16} sacreBLEU {s['bleu']:6.2f} ({marks['bleu']})   lowercased tokenised "
              f"{s['bleu_lowercase_intl']:6.2f} ({marks['bleu_lowercase_intl']})   test {result['seconds']:.0f} s")
    print(f"  beam {args.beam} beats greedy on the same checkpoint: {beam_wins}")
    print(f"  signature: {results['greedy']['bleu_signature']}")
    if args.no_record or args.overrides:
        print("not recorded" + (" (extra overrides given)" if args.overrides else ""))
        return
    command = f"flock /tmp/heavy.lock python benchmarks/translate.py --config {args.config}"
    for decoding, result in results.items():
        for metric in ("bleu", "bleu_lowercase_intl"):
            record("translate", f"{name} {decoding}", "sacrebleu" if metric == "bleu" else metric,
                   round(result["scores"][metric], 2), train_wall, command=command,
                   baseline="issue 13's target", baseline_value=TARGET[metric],
                   signature=result[f"{metric}_signature"], train_cpu_s=round(train_cpu, 1),
                   steps=fit["global_step"], test_s=round(result["seconds"], 1), decoding=result["decoding"],
                   beam_beats_greedy=beam_wins, threads=torch.get_num_threads(), run_dir=str(run_dir),
                   load_avg_end=round(os.getloadavg()[0], 2))


if __name__ == "__main__":
    main()
