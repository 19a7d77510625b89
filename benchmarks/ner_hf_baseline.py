"""Baseline for the ner task: a plain `transformers` fine-tuning loop on CoNLL-2003.

BertForTokenClassification from all-MiniLM-L6-v2, sentence by sentence, first-sub-token labels (other
sub-tokens -100), 3 epochs, batch 32, AdamW lr 1e-4 with linear decay and no warm-up (the defaults of
transformers' run_ner_no_trainer example), dynamic padding. Dev and test entity F1 by seqeval (default
mode) after the last epoch. Deliberately independent of this project's code: it is the yardstick.

    flock /tmp/heavy.lock python benchmarks/ner_hf_baseline.py
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

import torch
from seqeval.metrics import f1_score
from transformers import AutoTokenizer, BertForTokenClassification, get_linear_schedule_with_warmup

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.record import record  # noqa: E402

DATA = ROOT.parent / "shared" / "data"


def read_conll(path: Path) -> list[tuple[list[str], list[str]]]:
    sentences, words, tags = [], [], []
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("-DOCSTART-"):
            if words:
                sentences.append((words, tags))
            words, tags = [], []
            continue
        cols = line.split()
        words.append(cols[0])
        tags.append(cols[-1])
    if words:
        sentences.append((words, tags))
    return sentences


def encode(tokenizer, sentences, label2id):
    out = []
    for words, tags in sentences:
        enc = tokenizer(words, is_split_into_words=True, truncation=True, max_length=512)
        labels, prev = [], None
        for wid in enc.word_ids():
            labels.append(-100 if wid is None or wid == prev else label2id[tags[wid]])
            prev = wid
        out.append((enc["input_ids"], labels, enc.word_ids()))
    return out


def collate(batch):
    width = max(len(ids) for ids, _, _ in batch)
    ids = torch.zeros(len(batch), width, dtype=torch.long)
    mask = torch.zeros(len(batch), width, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    for i, (x, y, _) in enumerate(batch):
        ids[i, :len(x)] = torch.tensor(x)
        mask[i, :len(x)] = 1
        labels[i, :len(y)] = torch.tensor(y)
    return ids, mask, labels


@torch.no_grad()
def evaluate(model, encoded, sentences, id2label, batch_size=64):
    model.eval()
    y_true, y_pred = [], []
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start:start + batch_size]
        ids, mask, _ = collate(chunk)
        logits = model(input_ids=ids, attention_mask=mask).logits
        best = logits.argmax(-1)
        for row, (_, _, word_ids), (words, tags) in zip(best, chunk, sentences[start:start + batch_size]):
            pred, prev = ["O"] * len(words), None
            for pos, wid in enumerate(word_ids):
                if wid is not None and wid != prev:
                    pred[wid] = id2label[int(row[pos])]
                prev = wid
            y_true.append(tags)
            y_pred.append(pred)
    model.train()
    return f1_score(y_true, y_pred)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(DATA / "models" / "all-MiniLM-L6-v2"))
    parser.add_argument("--data", default=str(DATA / "conll2003"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--limit", type=int, default=0, help="train on the first N sentences only (smoke runs)")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()

    start, start_cpu = time.perf_counter(), time.process_time()
    torch.manual_seed(0)
    random.seed(0)
    data = Path(args.data)
    train, dev, test = (read_conll(data / name) for name in ("train.txt", "valid.txt", "test.txt"))
    if args.limit:
        train, dev, test = train[:args.limit], dev[:args.limit], test[:args.limit]
    labels = sorted({t for _, tags in train for t in tags})
    label2id = {t: i for i, t in enumerate(labels)}
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = BertForTokenClassification.from_pretrained(
        args.model, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id=label2id)
    train_enc, dev_enc, test_enc = (encode(tokenizer, s, label2id) for s in (train, dev, test))

    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    steps_per_epoch = (len(train_enc) + args.batch_size - 1) // args.batch_size
    scheduler = get_linear_schedule_with_warmup(optimizer, 0, steps_per_epoch * args.epochs)
    model.train()
    for epoch in range(args.epochs):
        order = list(range(len(train_enc)))
        random.shuffle(order)
        t0 = time.perf_counter()
        for step in range(steps_per_epoch):
            ids, mask, y = collate([train_enc[i] for i in order[step * args.batch_size:(step + 1) * args.batch_size]])
            loss = model(input_ids=ids, attention_mask=mask, labels=y).loss
            loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            if step % 50 == 0:
                print(f"epoch {epoch} step {step}/{steps_per_epoch} loss {loss.item():.4f} "
                      f"{time.perf_counter() - t0:.0f}s", flush=True)
    dev_f1 = evaluate(model, dev_enc, dev, labels)
    test_f1 = evaluate(model, test_enc, test, labels)
    wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    print(f"dev F1 {dev_f1:.4f}  test F1 {test_f1:.4f}  wall {wall:.0f}s  cpu {cpu:.0f}s", flush=True)
    if not args.no_record and not args.limit:
        command = "flock /tmp/heavy.lock python benchmarks/ner_hf_baseline.py"
        extra = dict(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, threads=torch.get_num_threads(),
                     cpu_s=round(cpu, 1), load_avg_end=round(os.getloadavg()[0], 2))
        record("ner", "hf_baseline_minilm", "dev_f1", dev_f1, wall, command=command, **extra)
        record("ner", "hf_baseline_minilm", "test_f1", test_f1, wall, command=command, **extra)


if __name__ == "__main__":
    main()
