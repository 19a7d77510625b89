"""Continued pretraining of all-MiniLM-L6-v2 (issue 15): its masked-LM loss on WikiText-2 test (never trained on)
before and after at most 30 minutes of masked LM + next sentence on the local corpus; recorded.

    flock /tmp/heavy.lock python benchmarks/pretrain_continue.py                 # the real run, recorded
    python benchmarks/pretrain_continue.py --probe_args="--trainer.max_steps 2" \\
        --continue_args="--trainer.max_steps 2" --test_file tests/fixtures/pretrain_wikitext.txt \\
        --data_args='--data.files ["tests/fixtures/tinyshakespeare_head.txt"]' --no_record           # smoke test

all-MiniLM-L6-v2 has no MLM or NSP heads, so "before" needs heads: with random ones the MLM loss is about ln(30522)
whatever the encoder knows. The steps, each a `run.py` command in a fresh process (printed before it runs):
1. `pretrain test` of MiniLM with its freshly created heads (reported, not the baseline);
2. the heads fitted with the encoder frozen (`--model.freeze_depth 7`: the embeddings and all 6 layers; lr 1e-3, `--probe_minutes`), then
   `pretrain test`: the BEFORE loss, MiniLM's encoder exactly as published;
3. `pretrain fit --config configs/pretrain/minilm_continue.yaml` from that checkpoint, every weight trained, at most
   30 minutes, then `pretrain test`: the AFTER loss. The probe's validation losses are recorded too, so a reader can
   see whether the heads alone had stopped improving (what is left is the encoder's doing).
Masks and sentence pairs of the test file are the same in every `pretrain test` (seeded per example).
"""
from __future__ import annotations

import argparse
import csv
import json
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.load import LoadMonitor  # noqa: E402
from benchmarks.pretrain_pays import QUIET, SHARED, metrics, run_py  # noqa: E402
from benchmarks.record import record  # noqa: E402


def test_metrics(run_dir: Path, data: list[str], *model: str) -> dict:
    """`pretrain test` of a checkpoint (`--ckpt_path`) or of a model built anew (`--model.*`)."""
    run_py("pretrain", "test", *data, *model, "--run_dir", str(run_dir), *QUIET)
    return metrics(run_dir, "test")


def validation_curve(run_dir: Path) -> list[tuple[int, float]]:
    """(step, val/mlm_loss) of every validation in a fit's metrics.csv."""
    path = run_dir / "metrics.csv"
    if not path.exists():
        return []
    with path.open() as f:
        return [(int(row["step"]), round(float(row["val/mlm_loss"]), 4)) for row in csv.DictReader(f)
                if row.get("val/mlm_loss")]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/pretrain/minilm_continue.yaml")
    p.add_argument("--test_file", default=str(SHARED / "text" / "wikitext-2" / "test.txt"))
    p.add_argument("--probe_minutes", type=int, default=10, help="time for fitting the heads, encoder frozen")
    p.add_argument("--freeze_depth", type=int, default=7,
                   help="the frozen encoder of the heads' fit: the embeddings + every layer (7 for MiniLM's 6 layers)")
    p.add_argument("--probe_steps", type=int, default=800, help="the heads' linear lr decay length")
    p.add_argument("--probe_args", default="", help="extra arguments of the heads' fit, one string")
    p.add_argument("--continue_args", default="", help="extra arguments of the continued pretraining, one string")
    p.add_argument("--data_args", default="", help="extra data arguments of every command, one string")
    p.add_argument("--run_root", default="runs/bench/pretrain_continue")
    p.add_argument("--no_record", action="store_true")
    args = p.parse_args(argv)
    root = ROOT / args.run_root
    data = ["--config", args.config, "--data.test_files", json.dumps([args.test_file]), *shlex.split(args.data_args)]
    monitor = LoadMonitor()

    fresh = test_metrics(root / "fresh_heads_test", data)
    probe = root / "heads_only"
    probe_s = run_py("pretrain", "fit", *data, "--model.freeze_depth", str(args.freeze_depth), "--model.lr", "1e-3",
                     "--trainer.max_steps", str(args.probe_steps),
                     "--trainer.max_time", f"00:00:{args.probe_minutes:02d}:00", "--run_dir", str(probe), *QUIET,
                     *shlex.split(args.probe_args))
    before = test_metrics(root / "before_test", data, "--ckpt_path", str(probe / "checkpoints" / "last.ckpt"))
    continued = root / "continued"
    continue_s = run_py("pretrain", "fit", *data, "--model.pretrained", str(probe / "checkpoints" / "last.ckpt"),
                        "--run_dir", str(continued), *QUIET, *shlex.split(args.continue_args))
    after = test_metrics(root / "after_test", data, "--ckpt_path", str(continued / "checkpoints" / "last.ckpt"))
    load = monitor.stop()

    print(f"WikiText-2 test MLM loss: fresh heads {fresh['test/mlm_loss']:.3f}; heads fitted, encoder as "
          f"published (BEFORE) {before['test/mlm_loss']:.3f} (acc {before['test/mlm_acc']:.4f}); after "
          f"{continue_s:.0f} s of continued pretraining (AFTER) {after['test/mlm_loss']:.3f} "
          f"(acc {after['test/mlm_acc']:.4f})")
    if not args.no_record:
        record("pretrain", f"{Path(args.config).stem} (all-MiniLM-L6-v2, WikiText-2 test)", "test_mlm_loss",
               after["test/mlm_loss"], continue_s,
               baseline=f"all-MiniLM-L6-v2 as published, new heads fitted with the encoder frozen "
                        f"({args.probe_minutes} min)",
               baseline_value=before["test/mlm_loss"], after_mlm_acc=after["test/mlm_acc"],
               before_mlm_acc=before["test/mlm_acc"], fresh_heads_mlm_loss=fresh["test/mlm_loss"],
               after_nsp_acc=after["test/nsp_acc"], before_nsp_acc=before["test/nsp_acc"],
               heads_only_s=round(probe_s, 1), heads_only_val_mlm_loss=validation_curve(probe),
               continued_val_mlm_loss=validation_curve(continued), continue_args=args.continue_args,
               mean_loadavg=round(load, 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
