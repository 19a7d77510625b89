"""Feature-based NER (Devlin et al. 2019, table 7) with all-MiniLM-L6-v2 frozen: dev F1 per layer choice.

The frozen encoder runs once over CoNLL-2003 train and dev, with the same document windows as
configs/ner/conll_minilm.yaml (128 sub-tokens, evaluation windows overlapping by half); the first
sub-token's activations of every word are cached for the embedding output and the last four layers
(float16). Then, for each of the five combinations of `modeling.bert.combine_layers`, a tagger is
trained on the cached features: `tasks.ner.TaggerHead` with a one-layer BiLSTM (128 per direction, the
paper used two layers of 768 over BERT-base) and a linear output, over each sentence's words; Adam lr 1e-3,
batch 32 sentences, 3 epochs, no casing input. Dev entity F1 by `tasks.seqeval_metric.EntityF1`
(equal to seqeval's default mode).

    flock /tmp/heavy.lock python benchmarks/ner_features.py
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.record import record  # noqa: E402
from data.conll import build_windows, collate_windows, label_set, read_conll, window_example  # noqa: E402
from data.tokenization import load_wordpiece  # noqa: E402
from modeling.bert import combine_layers  # noqa: E402
from modeling.hf import load_bert  # noqa: E402
from tasks.ner import TaggerHead  # noqa: E402
from tasks.seqeval_metric import EntityF1  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
COMBINATIONS = ["embeddings", "second_to_last", "last", "sum_last_four", "concat_last_four"]


@torch.no_grad()
def cache_features(bert, tokenizer, sentences, max_length, stride, batch_size=32):
    """Per sentence: (words, 5, D) float16 features of [embeddings, last four layers] at first sub-tokens."""
    windows = build_windows(tokenizer, sentences, None, max_length=max_length, context="document", stride=stride)
    layers = [0] + list(range(bert.config.num_layers - 3, bert.config.num_layers + 1))
    feats = [torch.zeros(len(s.words), len(layers), bert.config.hidden_size, dtype=torch.float16)
             for s in sentences]
    for start in range(0, len(windows), batch_size):
        chunk = windows[start:start + batch_size]
        batch = collate_windows([window_example(w) for w in chunk])
        out = bert(batch["input_ids"], None, batch["attention_mask"], output_hidden_states=True)
        stacked = torch.stack([out.hidden_states[i] for i in layers], dim=2)        # (B, T, 5, D)
        for row, w in enumerate(chunk):
            for pos, si, wi in w.targets:
                feats[si][wi] = stacked[row, pos].half()
    return feats


def combine(feats: torch.Tensor, how: str) -> torch.Tensor:
    """(B, W, 5, D) cached [embeddings, L-3, L-2, L-1, L] -> combine_layers over a stand-in tuple."""
    states = tuple(feats[:, :, i].float() for i in range(feats.size(2)))
    # combine_layers indexes from the end ("last", "second_to_last", "*_last_four") or the start ("embeddings")
    return combine_layers(states, how)


def batches(feats, tags, label2id, batch_size, shuffle, rng):
    order = list(range(len(feats)))
    if shuffle:
        rng.shuffle(order)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        width = max(feats[i].size(0) for i in idx)
        x = torch.zeros(len(idx), width, *feats[idx[0]].shape[1:], dtype=torch.float16)
        y = torch.full((len(idx), width), -100, dtype=torch.long)
        mask = torch.zeros(len(idx), width, dtype=torch.long)
        for row, i in enumerate(idx):
            n = feats[i].size(0)
            x[row, :n], mask[row, :n] = feats[i], 1
            if tags is not None:
                y[row, :n] = torch.tensor([label2id[t] for t in tags[i]])
        yield idx, x, y, mask


def train_and_score(how, train_feats, train_tags, dev_feats, dev_tags, labels, args):
    torch.manual_seed(0)
    rng = random.Random(0)
    label2id = {t: i for i, t in enumerate(labels)}
    width = train_feats[0].size(-1) * (4 if how == "concat_last_four" else 1)
    head = TaggerHead(width, len(labels), "bilstm", args.lstm_hidden, dropout=0.1)
    optimizer = torch.optim.Adam(head.parameters(), lr=args.lr)
    head.train()
    for epoch in range(args.epochs):
        for _, x, y, mask in batches(train_feats, train_tags, label2id, 32, True, rng):
            logits = head(combine(x, how), mask)
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-100)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        print(f"  {how}: epoch {epoch} loss {loss.item():.4f}", flush=True)
    head.eval()
    metric = EntityF1(sorted({t[2:] for t in labels if t != "O"}))
    with torch.no_grad():
        for idx, x, _, mask in batches(dev_feats, None, label2id, 64, False, rng):
            best = head(combine(x, how), mask).argmax(-1)
            preds = [[labels[j] for j in best[row, :dev_feats[i].size(0)].tolist()] for row, i in enumerate(idx)]
            metric.update(preds, [dev_tags[i] for i in idx])
    return metric.compute()["f1"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(DATA / "models" / "all-MiniLM-L6-v2"))
    parser.add_argument("--data", default=str(DATA / "conll2003"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--lstm-hidden", type=int, default=128)
    parser.add_argument("--limit", type=int, default=0, help="first N train/dev sentences only (smoke runs)")
    args = parser.parse_args()

    start, start_cpu = time.perf_counter(), time.process_time()
    tokenizer = load_wordpiece(args.model)
    bert = load_bert(args.model, pooler=False).eval()
    train = read_conll(Path(args.data) / "train.txt")
    labels = label_set(train)
    dev = read_conll(Path(args.data) / "valid.txt", labels=labels)
    if args.limit:
        train, dev = train[:args.limit], dev[:args.limit]
    train_feats = cache_features(bert, tokenizer, train, 128, None)
    dev_feats = cache_features(bert, tokenizer, dev, 128, 63)
    cached = time.perf_counter() - start
    print(f"features cached in {cached:.0f}s", flush=True)
    results = {}
    for how in COMBINATIONS:
        t0 = time.perf_counter()
        results[how] = train_and_score(how, train_feats, [s.tags for s in train], dev_feats,
                                       [s.tags for s in dev], labels, args)
        print(f"{how}: dev F1 {results[how]:.4f} ({time.perf_counter() - t0:.0f}s)", flush=True)
    wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    print(f"wall {wall:.0f}s cpu {cpu:.0f}s")
    if args.limit:
        return
    command = "flock /tmp/heavy.lock python benchmarks/ner_features.py"
    for how, f1 in results.items():
        record("ner", f"features_minilm_{how}", "dev_f1", f1, wall, command=command, layers=how,
               tagger=f"BiLSTM {args.lstm_hidden}x2 + linear on frozen first-sub-token features",
               epochs=args.epochs, cpu_s=round(cpu, 1), cache_s=round(cached, 1),
               load_avg_end=round(os.getloadavg()[0], 2))
    table = ["| layers (frozen all-MiniLM-L6-v2) | dev F1 |", "|---|---|"]
    table += [f"| {how} | {100 * f1:.1f} |" for how, f1 in results.items()]
    (ROOT / "benchmarks" / "NER_FEATURES.md").write_text(
        "# Feature-based NER on CoNLL-2003 dev (issue 4)\n\n" + __doc__.split("\n\n")[1] + "\n\n"
        + "\n".join(table) + f"\n\nCommand: `{command}` (wall {wall:.0f} s, all five).\n")


if __name__ == "__main__":
    main()
