"""Pretraining pays (issue 15): a small BERT pretrained from scratch for at most an hour on the local corpus, then
fine-tuned on SST-2 with one recipe twice: from the pretrained checkpoint, and from a randomly initialised copy of
the same architecture with the same tokenizer. Records both dev accuracies, the pretraining time and the held-out
MLM accuracy.

    flock /tmp/heavy.lock python benchmarks/pretrain_pays.py                     # the real run, recorded
    python benchmarks/pretrain_pays.py --config configs/pretrain/default.yaml --pretrain_args="--trainer.max_steps 5" \\
        --train_file tests/fixtures/sst2_train.tsv --dev_file tests/fixtures/sst2_dev.tsv --no_record    # smoke test

Steps, each a `run.py` command in a fresh process (printed before it runs):
1. `pretrain fit --config <config>` (configs/pretrain/scratch_small.yaml: 4 layers, width 256, capped at 60 minutes);
   its wall time, process start to exit, is the pretraining time (vocabulary training and validations included);
2. `pretrain validate` of the last checkpoint: the held-out MLM / NSP metrics of the final model, and
   `pretrain test` on WikiText-2 test (never trained on);
3. the checkpoint's vocabulary written to tokenizer.json, then `classify fit` on SST-2 twice with the same recipe
   (`--lr`, `--epochs`, `--batch_size`, `--max_length`, `--pooling`, `--dropout`, seed 42): `--model.pretrained
   <checkpoint>`, and `--model.config <the checkpoint's architecture>` (random weights), both with the same dropout.
   The dev accuracy after the last epoch counts (not the best epoch).
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.load import LoadMonitor  # noqa: E402
from benchmarks.record import record  # noqa: E402
from tasks.checkpoint import blueprint, read_checkpoint  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
QUIET = ["--trainer.enable_progress_bar", "false"]


def run_py(*args: str) -> float:
    """`python run.py <args>` from the repository root; its wall time in seconds (a failure stops the benchmark)."""
    cmd = [sys.executable, "run.py", *args]
    shown = shlex.join(["python", *cmd[1:]])
    print(f"$ {shown}", flush=True)
    start = time.perf_counter()
    if subprocess.run(cmd, cwd=ROOT).returncode != 0:
        raise SystemExit(f"failed: {shown}")
    return time.perf_counter() - start


def metrics(run_dir: Path, sub: str) -> dict:
    return json.loads((run_dir / f"{sub}_metrics.json").read_text())["metrics"]


def evaluate(ckpt: Path, run_dir: Path, config: str, test_file: str, *extra: str) -> tuple[dict, dict]:
    """(metrics on the held-out documents of `config`'s corpus, metrics on `test_file`) of a pretrain checkpoint."""
    data = ["--config", config, "--data.test_files", json.dumps([test_file]), *extra]
    run_py("pretrain", "validate", "--ckpt_path", str(ckpt), "--run_dir", str(run_dir / "validate"), *data, *QUIET)
    run_py("pretrain", "test", "--ckpt_path", str(ckpt), "--run_dir", str(run_dir / "test"), *data, *QUIET)
    return metrics(run_dir / "validate", "validate"), metrics(run_dir / "test", "test")


def fine_tune(args, run_dir: Path, tokenizer: Path, start: list[str]) -> tuple[float, float]:
    """(dev accuracy after the last epoch, wall seconds) of one SST-2 fine-tuning run with the recipe of `args`."""
    wall = run_py("classify", "fit", "--config", "configs/classify/default.yaml", *start,
                  "--data.train_file", args.train_file, "--data.val_file", args.dev_file,
                  "--data.tokenizer", str(tokenizer), "--data.max_length", str(args.max_length),
                  "--data.batch_size", str(args.batch_size), "--data.cache_dir", str(run_dir.parent / "cache"),
                  "--model.lr", str(args.lr), "--model.warmup_ratio", "0.1", "--model.pooling", args.pooling,
                  "--trainer.max_epochs", str(args.epochs), "--trainer.precision", args.precision,
                  "--run_dir", str(run_dir), *QUIET)
    return metrics(run_dir, "fit")["val/accuracy"], wall


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/pretrain/scratch_small.yaml", help="the pretraining config")
    p.add_argument("--pretrain_args", default="", help="extra `pretrain fit` arguments, one string")
    p.add_argument("--test_file", default=str(SHARED / "text" / "wikitext-2" / "test.txt"),
                   help="text never trained on, scored by `pretrain test`")
    p.add_argument("--train_file", default=str(SHARED / "glue" / "sst2" / "train.tsv"))
    p.add_argument("--dev_file", default=str(SHARED / "glue" / "sst2" / "dev.tsv"))
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--max_length", type=int, default=64)
    p.add_argument("--pooling", default="mean", choices=["cls", "mean"])
    p.add_argument("--precision", default="32-true")
    p.add_argument("--dropout", type=float, default=0.1,
                   help="fine-tuning dropout of both copies (the pretraining config may train without dropout)")
    p.add_argument("--run_root", default="runs/bench/pretrain_pays")
    p.add_argument("--no_record", action="store_true")
    args = p.parse_args(argv)
    root = ROOT / args.run_root
    monitor = LoadMonitor()

    pretrain_dir = root / "pretrain"
    pretrain_s = run_py("pretrain", "fit", "--config", args.config, "--run_dir", str(pretrain_dir), *QUIET,
                        *shlex.split(args.pretrain_args))
    ckpt = pretrain_dir / "checkpoints" / "last.ckpt"
    heldout, wikitext = evaluate(ckpt, root, args.config, args.test_file)
    bp = blueprint(read_checkpoint(ckpt, task="pretrain"), ckpt)
    tokenizer = root / "tokenizer.json"
    tokenizer.write_text(bp.tokenizer, encoding="utf-8")
    dropout = {"dropout": args.dropout, "attention_dropout": args.dropout}

    pretrained, pretrained_s = fine_tune(args, root / "sst2_pretrained", tokenizer,
                                         ["--model.pretrained", str(ckpt), "--model.config", json.dumps(dropout)])
    scratch, scratch_s = fine_tune(args, root / "sst2_random_init", tokenizer,
                                   ["--model.config", json.dumps({**bp.model_config, **dropout})])
    load = monitor.stop()
    recipe = (f"SST-2 train ({Path(args.train_file).name}), {args.epochs} epoch(s), batch {args.batch_size}, "
              f"lr {args.lr:g} (warm-up 10 %, linear), max_length {args.max_length}, {args.pooling} pooling, "
              f"dropout {args.dropout:g}, {args.precision}, seed 42")
    print(f"pretraining: {pretrain_s:.0f} s; held-out MLM acc {heldout['val/mlm_acc']:.4f} (loss "
          f"{heldout['val/mlm_loss']:.3f}), NSP acc {heldout['val/nsp_acc']:.4f}; WikiText-2 test MLM acc "
          f"{wikitext['test/mlm_acc']:.4f} (loss {wikitext['test/mlm_loss']:.3f})")
    print(f"SST-2 dev accuracy ({recipe}): pretrained {pretrained:.4f} ({pretrained_s:.0f} s), random init "
          f"{scratch:.4f} ({scratch_s:.0f} s): {100 * (pretrained - scratch):+.2f} points")
    if not args.no_record:
        name = Path(args.config).stem
        common = dict(pretrain_config=args.config, pretrain_args=args.pretrain_args, mean_loadavg=round(load, 2),
                      architecture=bp.model_config)
        record("pretrain", name, "heldout_mlm_acc", heldout["val/mlm_acc"], pretrain_s,
               heldout_mlm_loss=heldout["val/mlm_loss"], heldout_nsp_acc=heldout["val/nsp_acc"],
               wikitext2_test_mlm_acc=wikitext["test/mlm_acc"], wikitext2_test_mlm_loss=wikitext["test/mlm_loss"],
               **common)
        record("pretrain", f"{name} -> SST-2 fine-tune", "sst2_dev_accuracy", pretrained, pretrained_s,
               baseline="random init, same architecture and tokenizer, same recipe", baseline_value=scratch,
               baseline_wall_s=round(scratch_s, 1), gain_points=round(100 * (pretrained - scratch), 2),
               pretrain_s=round(pretrain_s, 1), heldout_mlm_acc=heldout["val/mlm_acc"], recipe=recipe, **common)
    return 0


if __name__ == "__main__":
    sys.exit(main())
