"""Baseline for the qa task: a plain `transformers` fine-tuning loop on SQuAD v1.1.

Only SQuAD v1.1 dev is here, so it trains on articles 0-37 of dev-v1.1.json (8,582 questions) and evaluates
on articles 38-47 (1,988 questions). The recipe of the Hugging Face course's question-answering chapter:
BertForQuestionAnswering from all-MiniLM-L6-v2 (the span head newly initialised), BertTokenizerFast, every
question + context tokenised with truncation "only_second", max_length 384, stride 128 (tokens shared by
consecutive windows), overflowing windows and offsets, padded to 384; a training window is labelled with the
answer's first and last token, or [CLS] when it does not hold the whole answer. 2 epochs, batch 32, AdamW
lr 1e-4, linear decay after a 10 % warm-up, fp32. Evaluation: the 20 best start and end logits of every
window, pairs inside the context with end >= start and at most 30 tokens, the best over the windows of a
question; EM and F1 by tasks/squad_metric.py, the code that scores our qa task. Apart from that metric it
is independent of this project's code: it is the yardstick. Measured here before: EM 56.9 / F1 69.8 in
3,646 s (issue 12).

    flock /tmp/heavy.lock .venv/bin/python benchmarks/qa_hf_baseline.py
    .venv/bin/python benchmarks/qa_hf_baseline.py --max_steps 3 --limit_eval 50 --no_record   # smoke test
"""
from __future__ import annotations

import argparse
import json
import math
import random
import resource
import sys
import time
from pathlib import Path

START = time.perf_counter()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import BertForQuestionAnswering, BertTokenizerFast, get_linear_schedule_with_warmup  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.load import LoadMonitor  # noqa: E402
from benchmarks.record import record  # noqa: E402
from tasks.squad_metric import exact_match, f1  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
CONFIG = "hf_transformers_loop (all-MiniLM-L6-v2, 2 ep, lr1e-4, bs32, 384/128)"


def read_questions(path: Path, articles: range) -> list[dict]:
    """The questions of the given articles, flattened: id, question, context, answer texts and starts."""
    out = []
    for a, article in enumerate(json.loads(path.read_text())["data"]):
        if a not in articles:
            continue
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                out.append({"id": qa["id"], "question": qa["question"].lstrip(), "context": paragraph["context"],
                            "answers": [x["text"] for x in qa["answers"]],
                            "starts": [x["answer_start"] for x in qa["answers"]]})
    return out


def tokenize(tokenizer, questions: list[dict], args):
    return tokenizer([q["question"] for q in questions], [q["context"] for q in questions],
                     truncation="only_second", max_length=args.max_length, stride=args.doc_stride,
                     return_overflowing_tokens=True, return_offsets_mapping=True, padding="max_length")


def train_features(tokenizer, questions: list[dict], args) -> torch.utils.data.TensorDataset:
    """Windows with the answer's token positions ([CLS] = 0 when the window does not hold it)."""
    enc = tokenize(tokenizer, questions, args)
    starts, ends = [], []
    for i, offsets in enumerate(enc["offset_mapping"]):
        q = questions[enc["overflow_to_sample_mapping"][i]]
        answer_start = q["starts"][0]
        answer_end = answer_start + len(q["answers"][0])
        sequence_ids = enc.sequence_ids(i)
        context_start = sequence_ids.index(1)
        context_end = len(sequence_ids) - 1 - sequence_ids[::-1].index(1)
        if offsets[context_start][0] > answer_start or offsets[context_end][1] < answer_end:
            starts.append(0)
            ends.append(0)
            continue
        token = context_start
        while token <= context_end and offsets[token][0] <= answer_start:
            token += 1
        starts.append(token - 1)
        token = context_end
        while token >= context_start and offsets[token][1] >= answer_end:
            token -= 1
        ends.append(token + 1)
    return torch.utils.data.TensorDataset(
        torch.tensor(enc["input_ids"]), torch.tensor(enc["token_type_ids"]), torch.tensor(enc["attention_mask"]),
        torch.tensor(starts), torch.tensor(ends))


def eval_features(tokenizer, questions: list[dict], args):
    """Windows, their question index, and offsets with None outside the context."""
    enc = tokenize(tokenizer, questions, args)
    offsets = [[o if s == 1 else None for o, s in zip(offs, enc.sequence_ids(i))]
               for i, offs in enumerate(enc["offset_mapping"])]
    tensors = torch.utils.data.TensorDataset(torch.tensor(enc["input_ids"]), torch.tensor(enc["token_type_ids"]),
                                             torch.tensor(enc["attention_mask"]))
    return tensors, list(enc["overflow_to_sample_mapping"]), offsets


def best_spans(questions, question_of, offsets, start_logits, end_logits, n_best: int, max_answer_length: int):
    """The best answer text of every question: n-best start and end pairs of each of its windows."""
    best = [(-math.inf, "") for _ in questions]
    for w, q in enumerate(question_of):
        start_indexes = np.argsort(start_logits[w])[-1:-n_best - 1:-1]
        end_indexes = np.argsort(end_logits[w])[-1:-n_best - 1:-1]
        for s in start_indexes:
            for e in end_indexes:
                if offsets[w][s] is None or offsets[w][e] is None or e < s or e - s + 1 > max_answer_length:
                    continue
                score = start_logits[w][s] + end_logits[w][e]
                if score > best[q][0]:
                    best[q] = (score, questions[q]["context"][offsets[w][s][0]:offsets[w][e][1]])
    return [text for _, text in best]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(SHARED / "models" / "all-MiniLM-L6-v2"))
    p.add_argument("--data", default=str(SHARED / "squad" / "dev-v1.1.json"))
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--eval_batch_size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--warmup_ratio", type=float, default=0.1)
    p.add_argument("--max_length", type=int, default=384)
    p.add_argument("--doc_stride", type=int, default=128)
    p.add_argument("--n_best", type=int, default=20)
    p.add_argument("--max_answer_length", type=int, default=30)
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--max_steps", type=int, default=0, help="stop training after N steps (smoke test)")
    p.add_argument("--limit_eval", type=int, default=0, help="evaluate the first N questions only (smoke test)")
    p.add_argument("--no_record", action="store_true")
    args = p.parse_args(argv)
    start = START if argv is None else time.perf_counter()

    monitor = LoadMonitor()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    tokenizer = BertTokenizerFast.from_pretrained(args.model)
    model = BertForQuestionAnswering.from_pretrained(args.model).to(args.device)
    train_questions = read_questions(Path(args.data), range(0, 38))
    eval_questions = read_questions(Path(args.data), range(38, 48))
    if args.limit_eval:
        eval_questions = eval_questions[:args.limit_eval]
    train_set = train_features(tokenizer, train_questions, args)
    eval_set, question_of, offsets = eval_features(tokenizer, eval_questions, args)

    loader = torch.utils.data.DataLoader(train_set, batch_size=args.batch_size, shuffle=True,
                                         generator=torch.Generator().manual_seed(args.seed))
    steps = args.epochs * len(loader)
    if args.max_steps:
        steps = min(steps, args.max_steps)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(args.warmup_ratio * steps), steps)

    model.train()
    t_train, step, step_ends = time.perf_counter(), 0, []
    while step < steps:
        for batch in loader:
            input_ids, token_type_ids, attention_mask, start_positions, end_positions = (t.to(args.device)
                                                                                          for t in batch)
            loss = model(input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask,
                         start_positions=start_positions, end_positions=end_positions).loss
            loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            if step % 20 == 0:
                print(f"step {step}/{steps} loss {loss.item():.4f} elapsed {time.perf_counter() - t_train:.0f}s",
                      flush=True)
            step += 1
            step_ends.append(time.perf_counter())
            if step == steps:
                break
    train_s = time.perf_counter() - t_train

    model.eval()
    start_logits, end_logits = [], []
    with torch.no_grad():
        for batch in torch.utils.data.DataLoader(eval_set, batch_size=args.eval_batch_size):
            input_ids, token_type_ids, attention_mask = (t.to(args.device) for t in batch)
            out = model(input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask)
            start_logits.append(out.start_logits.cpu().numpy())
            end_logits.append(out.end_logits.cpu().numpy())
    predictions = best_spans(eval_questions, question_of, offsets, np.concatenate(start_logits),
                             np.concatenate(end_logits), args.n_best, args.max_answer_length)
    em = 100.0 * np.mean([exact_match(pred, q["answers"]) for pred, q in zip(predictions, eval_questions)])
    f1_score = 100.0 * np.mean([f1(pred, q["answers"]) for pred, q in zip(predictions, eval_questions)])
    wall_s = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = usage.ru_utime + usage.ru_stime
    load = monitor.stop()
    print(f"EM {em:.2f}  F1 {f1_score:.2f}  ({len(eval_questions)} questions, {len(question_of)} windows)  "
          f"train {train_s:.0f}s ({step} steps, {len(train_set)} windows)  wall {wall_s:.0f}s  cpu {cpu_s:.0f}s  "
          f"mean load {load:.2f}  threads {torch.get_num_threads()}  device {args.device}")
    step_s = [b - a for a, b in zip([t_train, *step_ends], step_ends)]
    result = {"exact_match": em, "f1": f1_score, "wall_s": wall_s, "train_s": train_s, "cpu_s": cpu_s,
              "mean_load": load, "steps": step, "full_steps": args.epochs * len(loader),
              "median_step_s": float(np.median(step_s)) if step_s else 0.0}
    if not args.no_record and not args.max_steps and not args.limit_eval:
        extra = dict(train_s=round(train_s, 1), cpu_s=round(cpu_s, 1), mean_load=round(load, 2), steps=steps,
                     epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, threads=torch.get_num_threads(),
                     train_windows=len(train_set), eval_windows=len(question_of), device=args.device)
        command = "flock /tmp/heavy.lock python benchmarks/qa_hf_baseline.py"
        record("qa", CONFIG, "exact_match", em, wall_s, command=command, **extra)
        record("qa", CONFIG, "f1", f1_score, wall_s, command=command, **extra)
    return result


if __name__ == "__main__":
    main()
