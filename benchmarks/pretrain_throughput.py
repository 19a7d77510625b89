"""BERT pre-training throughput (masked LM + next sentence, forward + backward + AdamW) of our BERT against
`transformers.BertForPreTraining` of the same shape, on the same real masked batches, in one run.

Ours computes the masked-LM logits only at the chosen positions (`pretraining_loss`: gather the ~15 % masked hidden
states, then the head), where BertForPreTraining projects every position onto the vocabulary. Both start from the
same weights (ours exported with `modeling.hf.bert_state_to_hf`), and before timing the two losses are checked equal
on one batch with dropout off. Timing: float32, dropout 0.1 (BERT's), fused AdamW for both; the variants take turns
for `--rounds` rounds (this machine's speed drifts by ±15 % over minutes), each round `--warmup` untimed steps then
`--steps` timed steps over the same batches. Tokens/s counts real (non-padding) tokens. Every round's ratio (ours /
the faster HF variant of that round) is printed and recorded with its min / median / max; the recorded value and
baseline are the medians over rounds (task "pretrain", metric "train_tokens_per_s"). The loss is the task's own
`tasks.pretrain.pretraining_loss`.

    python benchmarks/pretrain_throughput.py                                   # full run, records
    python benchmarks/pretrain_throughput.py --rounds 1 --steps 3 --no_record  # smoke test
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.record import record  # noqa: E402
from data.pretrain import (CorpusFile, PretrainingCollator, create_examples, read_corpus, special_ids,  # noqa: E402
                           tokenize_documents)
from data.tokenization import load_wordpiece  # noqa: E402
from modeling import BERT, BertConfig  # noqa: E402
from modeling.hf import bert_config_to_hf, bert_state_to_hf  # noqa: E402
from tasks.pretrain import pretraining_loss  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"


def hf_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(input_ids=batch["input_ids"], token_type_ids=batch["token_type_ids"],
                 attention_mask=batch["attention_mask"], labels=batch["mlm_labels"],
                 next_sentence_label=batch["nsp_labels"]).loss


def masked_batches(args) -> tuple[list[dict[str, torch.Tensor]], int]:
    """`--steps` real batches: corpus -> sentence pairs -> shuffled -> collated with a fresh mask each."""
    tokenizer = load_wordpiece(args.tokenizer)
    files = [CorpusFile(p, text_key="email") if p.endswith(".jsonl") else CorpusFile(p) for p in args.corpus]
    documents = tokenize_documents(read_corpus(files), tokenizer)
    examples, stats = create_examples(documents, special_ids(tokenizer), max_length=args.max_length, seed=args.seed)
    print(stats)
    random.Random(args.seed).shuffle(examples)
    collate = PretrainingCollator(tokenizer, seed=args.seed)
    n = args.batch_size
    batches = [collate([examples[(s * n + i) % len(examples)] for i in range(n)]) for s in range(args.steps)]
    return batches, tokenizer.get_vocab_size()


def build_models(args, vocab_size: int) -> dict[str, tuple[torch.nn.Module, object]]:
    """Ours and BertForPreTraining (one per attention implementation), all with our initial weights."""
    from transformers import BertConfig as HFConfig, BertForPreTraining
    config = BertConfig(vocab_size=vocab_size, hidden_size=args.width, num_layers=args.layers, num_heads=args.heads,
                        ffn_size=args.ffn, max_positions=max(512, args.max_length))
    ours = BERT(config, pretraining_heads=True)
    models = {"ours": (ours, pretraining_loss)}
    for impl in args.hf_attention:
        hf = BertForPreTraining(HFConfig(**bert_config_to_hf(config, heads=True), attn_implementation=impl))
        missing, unexpected = hf.load_state_dict(bert_state_to_hf(ours), strict=False)
        assert not unexpected and all("decoder" in k or "position_ids" in k for k in missing), (missing, unexpected)
        models[f"HF {impl}"] = (hf, hf_loss)
    return models


def check_same_loss(models: dict, batch: dict[str, torch.Tensor]) -> None:
    """Dropout off, same weights, same batch: every variant's loss must agree (the gather changes no number)."""
    losses = {}
    for name, (model, loss_fn) in models.items():
        model.eval()
        with torch.no_grad():
            losses[name] = loss_fn(model, batch).item()
        model.train()
    print("loss on the first batch, dropout off: " + ", ".join(f"{k} {v:.5f}" for k, v in losses.items()))
    assert max(losses.values()) - min(losses.values()) < 1e-3 * abs(losses["ours"]), losses


def tokens_per_second(model, loss_fn, optimizer, batches, warmup: int) -> float:
    for batch in batches[:warmup]:
        train_step(model, loss_fn, optimizer, batch)
    start = time.perf_counter()
    for batch in batches:
        train_step(model, loss_fn, optimizer, batch)
    return sum(b["attention_mask"].sum().item() for b in batches) / (time.perf_counter() - start)


def train_step(model, loss_fn, optimizer, batch) -> None:
    loss_fn(model, batch).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", nargs="+", default=[str(SHARED / "text" / "wikitext-2" / "valid.txt")],
                   help="corpus files (.jsonl files are read with the text key 'email', as AESLC)")
    p.add_argument("--tokenizer", default=str(SHARED / "models" / "all-MiniLM-L6-v2"))
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--ffn", type=int, default=1024)
    p.add_argument("--max_length", type=int, default=128)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--steps", type=int, default=6, help="timed steps per variant and round")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--hf_attention", nargs="+", default=["eager", "sdpa"], choices=["eager", "sdpa"],
                   help="BertForPreTraining attention implementations; the faster is the baseline")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no_record", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    batches, vocab_size = masked_batches(args)
    models = build_models(args, vocab_size)
    check_same_loss(models, batches[0])
    optimizers = {name: torch.optim.AdamW(m.parameters(), lr=1e-4, fused=True) for name, (m, _) in models.items()}
    print(f"{args.layers} layers, width {args.width}, {args.heads} heads, FFN {args.ffn}, vocab {vocab_size}, "
          f"batch {args.batch_size} x <= {args.max_length}, {args.threads} threads, float32")

    start = time.perf_counter()
    speeds: dict[str, list[float]] = {name: [] for name in models}
    for r in range(1, args.rounds + 1):
        for name, (model, loss_fn) in models.items():
            speeds[name].append(tokens_per_second(model, loss_fn, optimizers[name], batches, args.warmup))
        baseline = max(v[-1] for k, v in speeds.items() if k != "ours")
        print(f"round {r}: " + ", ".join(f"{k} {v[-1]:,.0f} tok/s" for k, v in speeds.items())
              + f"; ours / best HF {speeds['ours'][-1] / baseline:.3f}", flush=True)
    wall = time.perf_counter() - start

    baselines = [max(v[r] for k, v in speeds.items() if k != "ours") for r in range(args.rounds)]
    ratios = [ours / base for ours, base in zip(speeds["ours"], baselines)]
    spread = {"min": min(ratios), "median": statistics.median(ratios), "max": max(ratios)}
    print("ours / best HF per round: " + ", ".join(f"{r:.3f}" for r in ratios) + "; "
          + ", ".join(f"{k} {v:.3f}" for k, v in spread.items()))
    if not args.no_record:
        record("pretrain", f"bert {args.layers}L-{args.width} b{args.batch_size}x{args.max_length} fp32",
               "train_tokens_per_s", round(statistics.median(speeds["ours"]), 1), wall,
               baseline="transformers BertForPreTraining (the faster attention per round)",
               baseline_value=round(statistics.median(baselines), 1), ratio=round(spread["median"], 3),
               ratio_min=round(spread["min"], 3), ratio_max=round(spread["max"], 3),
               ratio_per_round=[round(x, 3) for x in ratios],
               tokens_per_s_per_round={k: [round(x, 1) for x in v] for k, v in speeds.items()},
               rounds=args.rounds, steps=args.steps, threads=args.threads, vocab_size=vocab_size)


if __name__ == "__main__":
    main()
