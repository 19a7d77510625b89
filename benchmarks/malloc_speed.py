"""What `run.reuse_freed_memory` (glibc keeps freed memory for reuse) does to a CPU training step, in turns.

glibc serves every block over 32 MB with its own mmap and unmaps it when freed, so each training step faults in its
activations' pages anew; in a virtual machine a page fault is dear. run.py turns that off on the CPU (mallopt: no
mmap, no trimming). This script measures the effect on two steps, each in a fresh process per turn (malloc's mode is
per process), the switch off and on alternately, `--rounds` times:

- ours: all-MiniLM-L6-v2 (modeling.BERT) + a span head, 32 windows of 176 tokens (the mean window of the SQuAD
  split, a third of them padded from 150), dropout on, gradient clipping, fused AdamW: a `run.py qa` step;
- the loop: transformers' BertForQuestionAnswering, 32 windows padded to 384, AdamW: benchmarks/qa_hf_baseline.py's
  step, with the same switch (what the loop would gain from it: issue 12's baseline itself runs without it);
- fit: a whole `run.py qa fit --config configs/qa/squad_minilm.yaml` command cut to its first `--fit_batches`
  batches (real windows of every length; start-up and data loading included, no validation): its wall time.

Prints per round the median step time of each (off / on) and their ratio, then the median ratio and its spread,
and the peak resident memory; records the median ratios (on / off, lower is faster).

    flock /tmp/heavy.lock python benchmarks/malloc_speed.py            # ~10 minutes alone on 2 cores; recorded
    python benchmarks/malloc_speed.py --rounds 1 --steps 1 --fit_batches 2 --no_record  # smoke test
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT.parent / "shared" / "data" / "models" / "all-MiniLM-L6-v2"


def child(which: str, steps: int, warmup: int, threads: int) -> None:
    """One process: `warmup` untimed steps, then `steps` timed; prints {"step_s", "maxrss_mb", "applied"}."""
    sys.path.insert(0, str(ROOT))
    import torch

    import run
    applied = run.reuse_freed_memory()          # off when NLP_REUSE_FREED_MEMORY=0
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    if which == "ours":
        from tasks.encoders import load_encoder
        bert, _ = load_encoder(str(MODEL), pooler=False)
        head = torch.nn.Linear(bert.config.hidden_size, 2)
        params = [*bert.parameters(), *head.parameters()]
        optimizer = torch.optim.AdamW(params, lr=1e-4, fused=True)
        B, T = 32, 176
        mask = torch.ones(B, T, dtype=torch.long)
        mask[::3, 150:] = 0

        def step() -> None:
            ids = torch.randint(1000, 20000, (B, T))
            logits = head(bert(ids, torch.zeros_like(ids), mask).last_hidden_state)        # (B, T, 2)
            target = torch.randint(0, 140, (B,))
            loss = (torch.nn.functional.cross_entropy(logits[..., 0], target)
                    + torch.nn.functional.cross_entropy(logits[..., 1], target)) / 2
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        bert.train()
    else:
        from transformers import BertForQuestionAnswering
        model = BertForQuestionAnswering.from_pretrained(str(MODEL)).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        B, T = 32, 384

        def step() -> None:
            ids = torch.randint(1000, 20000, (B, T))
            target = torch.randint(0, 300, (B,))
            loss = model(input_ids=ids, token_type_ids=torch.zeros_like(ids), attention_mask=torch.ones_like(ids),
                         start_positions=target, end_positions=target).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    print(json.dumps({"step_s": statistics.median(times), "applied": applied,
                      "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def fit_turn(reuse: bool, args, env: dict) -> dict:
    """Wall time of a `run.py qa fit` cut to its first batches; the peak RSS of the process."""
    run_dir = ROOT / "runs" / "bench" / f"malloc_fit_{int(reuse)}"
    cmd = [sys.executable, "run.py", "qa", "fit", "--config", "configs/qa/squad_minilm.yaml", "--run_dir", str(run_dir),
           "--trainer.max_epochs", "1", "--trainer.limit_train_batches", str(args.fit_batches),
           "--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar", "false", "--trainer.callbacks", "null",
           "--trainer.enable_checkpointing", "false", "--wandb", "false"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)                  # this child's own peak RSS
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)         # reaped here, not by Popen
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{stderr[-2000:]}")
    return {"step_s": wall, "applied": reuse, "maxrss_mb": usage.ru_maxrss / 1024}


def turn(which: str, reuse: bool, args) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env["NLP_REUSE_FREED_MEMORY"] = "1" if reuse else "0"
    if which == "fit":
        return fit_turn(reuse, args, env)
    cmd = [sys.executable, __file__, "--child", which, "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if out["applied"] != reuse:
        raise SystemExit(f"{which}: the switch was {'not ' if reuse else ''}applied as asked")
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=4, help="timed steps per turn (the median is kept)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--which", nargs="+", default=["ours", "loop", "fit"], choices=["ours", "loop", "fit"])
    p.add_argument("--fit_batches", type=int, default=24, help="training batches of the `fit` turns")
    p.add_argument("--child", choices=["ours", "loop"], help=argparse.SUPPRESS)
    p.add_argument("--no_record", action="store_true")
    args = p.parse_args()
    if args.child:
        child(args.child, args.steps, args.warmup, args.threads)
        return 0
    start = time.perf_counter()
    rounds: dict[str, list[tuple[dict, dict]]] = {w: [] for w in args.which}
    for r in range(args.rounds):
        for which in args.which:
            off, on = turn(which, False, args), turn(which, True, args)
            rounds[which].append((off, on))
            unit = "s the command" if which == "fit" else "s a step"
            print(f"round {r + 1} {which}: {off['step_s']:.2f} {unit} off, {on['step_s']:.2f} on: "
                  f"{on['step_s'] / off['step_s']:.3f}x; peak RSS {off['maxrss_mb']:.0f} / {on['maxrss_mb']:.0f} MB",
                  flush=True)
    wall_s = time.perf_counter() - start
    for which, pairs in rounds.items():
        ratios = [on["step_s"] / off["step_s"] for off, on in pairs]
        rss = statistics.median(on["maxrss_mb"] / off["maxrss_mb"] for off, on in pairs)
        median = statistics.median(ratios)
        print(f"{which}: step time with the switch on / off: median {median:.3f}x, spread {min(ratios):.3f}-"
              f"{max(ratios):.3f} over {len(ratios)} rounds; peak RSS {rss:.3f}x", flush=True)
        if not args.no_record:
            sys.path.insert(0, str(ROOT))
            from benchmarks.record import record
            config = {"ours": "modeling.BERT MiniLM + span head, 32 x 176 tokens, fused AdamW, clipping",
                      "loop": "transformers BertForQuestionAnswering MiniLM, 32 x 384 tokens, AdamW",
                      "fit": f"run.py qa fit squad_minilm, first {args.fit_batches} batches, whole command"}[which]
            record("qa", f"reuse_freed_memory on vs off: {config}", "step_time_ratio", round(median, 3), wall_s,
                   command=" ".join(["flock /tmp/heavy.lock python benchmarks/malloc_speed.py", *sys.argv[1:]]),
                   baseline="the same step with glibc's default malloc (NLP_REUSE_FREED_MEMORY=0)", baseline_value=1.0,
                   spread=[round(min(ratios), 3), round(max(ratios), 3)], rounds=len(ratios),
                   off_step_s=[round(off["step_s"], 3) for off, _ in pairs],
                   on_step_s=[round(on["step_s"], 3) for _, on in pairs], peak_rss_ratio=round(rss, 3))
    return 0


if __name__ == "__main__":
    sys.exit(main())
