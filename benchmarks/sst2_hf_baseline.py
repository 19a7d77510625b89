"""Baseline: a plain `transformers` fine-tuning loop for one epoch of SST-2.

The recipe every tutorial uses: BertForSequenceClassification from the all-MiniLM-L6-v2 directory,
batch 32, AdamW lr 5e-5 (no decay on biases and LayerNorm), linear warm-up (6 %) and decay, random
batches padded to the longest sentence in each batch, gradient clipping at 1.0. It then evaluates dev
accuracy and records accuracy and wall time (process start to the dev number) with benchmarks/record.py.

    flock /tmp/heavy.lock python benchmarks/sst2_hf_baseline.py
"""
from __future__ import annotations

import argparse
import csv
import math
import random
import resource
import sys
import time
from pathlib import Path

START = time.perf_counter()

import torch  # noqa: E402
from transformers import BertForSequenceClassification, BertTokenizerFast, get_linear_schedule_with_warmup  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.record import record  # noqa: E402
from benchmarks.load import LoadMonitor  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"


def read_tsv(path: Path) -> tuple[list[str], list[int]]:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [r["sentence"] for r in rows], [int(r["label"]) for r in rows]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(SHARED / "models" / "all-MiniLM-L6-v2"))
    p.add_argument("--data", default=str(SHARED / "glue" / "sst2"))
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--warmup_ratio", type=float, default=0.06)
    p.add_argument("--max_length", type=int, default=128)
    p.add_argument("--limit_train", type=int, default=0, help="use only the first N training rows (smoke test)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--no_record", action="store_true")
    args = p.parse_args(argv)
    start = START if argv is None else time.perf_counter()

    monitor = LoadMonitor()
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    tokenizer = BertTokenizerFast.from_pretrained(args.model)
    model = BertForSequenceClassification.from_pretrained(args.model, num_labels=2)
    train_x, train_y = read_tsv(Path(args.data) / "train.tsv")
    dev_x, dev_y = read_tsv(Path(args.data) / "dev.tsv")
    if args.limit_train:
        train_x, train_y = train_x[:args.limit_train], train_y[:args.limit_train]

    def batches(xs, ys, shuffle):
        order = list(range(len(xs)))
        if shuffle:
            random.shuffle(order)
        for i in range(0, len(order), args.batch_size):
            idx = order[i:i + args.batch_size]
            enc = tokenizer([xs[j] for j in idx], padding="longest", truncation=True,
                            max_length=args.max_length, return_tensors="pt")
            enc["labels"] = torch.tensor([ys[j] for j in idx])
            yield enc

    no_decay = ("bias", "LayerNorm.weight")
    groups = [
        {"params": [p for n, p in model.named_parameters() if not any(k in n for k in no_decay)],
         "weight_decay": 0.01},
        {"params": [p for n, p in model.named_parameters() if any(k in n for k in no_decay)],
         "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=args.lr)
    steps = math.ceil(len(train_x) / args.batch_size)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(args.warmup_ratio * steps), steps)

    model.train()
    t_train = time.perf_counter()
    for step, batch in enumerate(batches(train_x, train_y, shuffle=True)):
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        if step % 100 == 0:
            print(f"step {step}/{steps} loss {loss.item():.4f} elapsed {time.perf_counter() - t_train:.0f}s",
                  flush=True)
    train_s = time.perf_counter() - t_train

    model.eval()
    correct = 0
    with torch.no_grad():
        for batch in batches(dev_x, dev_y, shuffle=False):
            labels = batch.pop("labels")
            correct += (model(**batch).logits.argmax(-1) == labels).sum().item()
    accuracy = correct / len(dev_x)
    wall_s = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = usage.ru_utime + usage.ru_stime
    load = monitor.stop()
    print(f"dev accuracy {accuracy:.4f}  train {train_s:.0f}s  wall {wall_s:.0f}s  cpu {cpu_s:.0f}s  "
          f"mean load {load:.2f}  threads {torch.get_num_threads()}")
    result = {"accuracy": accuracy, "wall_s": wall_s, "train_s": train_s, "cpu_s": cpu_s, "mean_load": load}
    if not args.no_record and not args.limit_train:
        record("sst2", "hf_transformers_loop (all-MiniLM-L6-v2, bs32, lr5e-5)", "dev_accuracy", accuracy, wall_s,
               command="python benchmarks/sst2_hf_baseline.py", train_s=round(train_s, 1), cpu_s=round(cpu_s, 1),
               mean_loadavg=round(load, 2), steps=steps,
               torch_threads=torch.get_num_threads())
    return result


if __name__ == "__main__":
    main()
