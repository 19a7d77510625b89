"""Throughput of our BERT and GPT against `transformers`, in one run on one machine.

For each model: a training step (forward + backward + AdamW) and inference (forward, no grad), ours (eager and
torch.compile) against Hugging Face (eager and sdpa attention, the better one is the baseline), with the same
configuration, batch, precision and dropout. Then GPT greedy decoding: with and without our KV cache, and
`transformers.generate` on the same weights. Prints tokens/s, our/HF ratios, and achieved FLOP/s as a fraction of
this machine's matmul peak (in the same precision) measured in the same run.

    python benchmarks/throughput.py            # full run (~15 min on 2 CPU cores), appends to results.jsonl
    python benchmarks/throughput.py --quick    # tiny shapes, smoke test, records nothing
    python benchmarks/throughput.py --only bert --no-compile   # one model, records nothing
    python benchmarks/throughput.py --device cuda --precision bf16 --shapes base   # on a GPU: BERT-base, GPT-2 small

On a GPU every timed call ends with `torch.cuda.synchronize()`; `--precision bf16` runs every variant, ours and
HF's, under `torch.autocast(dtype=torch.bfloat16)` with float32 weights (as Lightning's `bf16-mixed`).

Each variant is timed `--rounds` times in turns (ours, HF eager, HF sdpa, ours, ...), each time the median of
`--repeat` steps after `--warmup`; the best of the rounds counts.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.record import record  # noqa: E402
from modeling import BERT, GPT, BertConfig, GPTConfig  # noqa: E402
from modeling.generation import generate  # noqa: E402
from modeling.hf import save_gpt2  # noqa: E402

DEVICE = torch.device("cpu")
DTYPE = torch.float32                       # the autocast dtype; float32 = no autocast


def autocast():
    """Mixed precision for every variant alike (a no-op in float32)."""
    if DTYPE == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(DEVICE.type, dtype=DTYPE)


def synchronize() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(n: int = 2048, seconds: float = 3.0) -> float:
    a, b = (torch.randn(n, n, device=DEVICE, dtype=DTYPE) for _ in range(2))
    for _ in range(3):
        a @ b
    best, start = 0.0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        synchronize()
        t = time.perf_counter()
        a @ b
        synchronize()
        best = max(best, 2 * n ** 3 / (time.perf_counter() - t))
    return best


def seconds_per_call(fn, warmup: int, repeat: int) -> float:
    """Median seconds of `repeat` calls after `warmup` untimed ones, all in the run's precision (so the warm-up
    compiles and picks the kernels the timed calls use)."""
    times = []
    with autocast():
        for _ in range(warmup):
            fn()
        for _ in range(repeat):
            synchronize()
            t = time.perf_counter()
            fn()
            synchronize()
            times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]                                   # median


def matmul_params(model: torch.nn.Module) -> int:
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def flops_per_token(n_matmul: int, layers: int, seq_len: int, d: int, train: bool) -> float:
    forward = 2 * n_matmul + 2 * 2 * layers * seq_len * d                # weights, then QKᵀ and AV
    return 3 * forward if train else forward


# ------------------------------------------------------------------------------------------------ step builders

def bert_steps(shape, compile_ours: bool):
    from transformers import BertConfig as HFConfig, BertForSequenceClassification
    B, T, layers, d, heads, ff = shape
    x = torch.randint(1000, 30000, (B, T), device=DEVICE)
    mask = torch.ones(B, T, dtype=torch.long, device=DEVICE)
    y = torch.randint(0, 2, (B,), device=DEVICE)
    config = BertConfig(num_layers=layers, hidden_size=d, num_heads=heads, ffn_size=ff)
    steps = {}

    def ours(compiled: bool):
        bert, head = BERT(config).to(DEVICE), torch.nn.Linear(d, 2, device=DEVICE)
        params = list(bert.parameters()) + list(head.parameters())
        opt = torch.optim.AdamW(params, lr=1e-4, fused=True)

        def loss_fn():
            pooled = bert(x, attention_mask=mask).pooled
            return F.cross_entropy(head(F.dropout(pooled, 0.1, training=True)), y)

        loss_fn = torch.compile(loss_fn) if compiled else loss_fn

        def train():
            loss_fn().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        infer_model = torch.compile(bert) if compiled else bert

        def infer():
            bert.eval()
            with torch.no_grad():
                infer_model(x, attention_mask=mask)
            bert.train()
        return train, infer, matmul_params(bert) + matmul_params(head)

    def hf(impl: str):
        model = BertForSequenceClassification(HFConfig(num_hidden_layers=layers, hidden_size=d, num_attention_heads=heads,
                                                       intermediate_size=ff, attn_implementation=impl)).to(DEVICE)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def train():
            model(input_ids=x, attention_mask=mask, labels=y).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        def infer():
            model.eval()
            with torch.no_grad():
                model(input_ids=x, attention_mask=mask)
            model.train()
        return train, infer, matmul_params(model)

    steps["ours eager"] = ours(False)
    if compile_ours:
        steps["ours compiled"] = ours(True)
    steps["HF eager"] = hf("eager")
    steps["HF sdpa"] = hf("sdpa")
    return steps, B * T, (layers, T, d)


def gpt_steps(shape, compile_ours: bool):
    from transformers import GPT2Config, GPT2LMHeadModel
    B, T, layers, d, heads, vocab = shape
    x = torch.randint(0, vocab, (B, T), device=DEVICE)
    targets = torch.cat([x[:, 1:], torch.full((B, 1), -100, device=DEVICE)], dim=1)        # same T-1 scored tokens as HF's shift
    config = GPTConfig(vocab_size=vocab, max_positions=1024, num_layers=layers, num_heads=heads, hidden_size=d, dropout=0.1)
    steps = {}

    def ours(compiled: bool):
        gpt = GPT(config).to(DEVICE)
        opt = torch.optim.AdamW(gpt.parameters(), lr=1e-4, fused=True)
        loss_fn = torch.compile(gpt.loss) if compiled else gpt.loss

        def train():
            loss_fn(x, targets).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        infer_model = torch.compile(gpt) if compiled else gpt

        def infer():
            gpt.eval()
            with torch.no_grad():
                infer_model(x)
            gpt.train()
        return train, infer, matmul_params(gpt) + vocab * d                  # + the tied LM head

    def hf(impl: str):
        model = GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=1024, n_embd=d, n_layer=layers, n_head=heads,
                                           attn_implementation=impl)).to(DEVICE)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        n = sum(m.weight.numel() for m in model.modules() if type(m).__name__ == "Conv1D") + vocab * d

        def train():
            model(input_ids=x, labels=x).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        def infer():
            model.eval()
            with torch.no_grad():
                model(input_ids=x)
            model.train()
        return train, infer, n

    steps["ours eager"] = ours(False)
    if compile_ours:
        steps["ours compiled"] = ours(True)
    steps["HF eager"] = hf("eager")
    steps["HF sdpa"] = hf("sdpa")
    return steps, B * T, (layers, T, d)


# ------------------------------------------------------------------------------------------------ runs

def compare(name: str, builder, shape, args, peak: float, results: dict):
    steps, tokens, (layers, T, d) = builder(shape, not args.no_compile)
    print(f"\n## {name}: batch {shape[0]} x length {shape[1]}, {layers} layers, width {d}")
    print(f"{'variant':<15}{'mode':<7}{'tokens/s':>11}{'TFLOP/s':>9}{'of peak':>9}")
    for mode, index in (("train", 0), ("infer", 1)):
        best = {variant: float("inf") for variant in steps}
        for _ in range(args.rounds):        # variants take turns, so drift in the machine's speed hits all alike
            for variant, built in steps.items():
                best[variant] = min(best[variant], seconds_per_call(built[index], args.warmup, args.repeat))
        for variant in steps:
            tps = tokens / best[variant]
            flops = flops_per_token(built[2], layers, T, d, mode == "train") * tps
            results[(name, mode, variant)] = tps
            print(f"{variant:<15}{mode:<7}{tps:>11,.0f}{flops / 1e12:>9.3f}{flops / peak:>9.1%}", flush=True)
            results[(name, mode, variant, "mfu")] = flops / peak


def generation(args, results: dict):
    from transformers import GPT2LMHeadModel
    vocab = 50257 if not args.quick else 1000
    config = GPTConfig(vocab_size=vocab, max_positions=1024, num_layers=6 if not args.quick else 2, num_heads=6,
                       hidden_size=384 if not args.quick else 96)
    torch.manual_seed(0)
    gpt = GPT(config).eval()
    with tempfile.TemporaryDirectory() as tmp:
        save_gpt2(gpt, tmp)
        hf = GPT2LMHeadModel.from_pretrained(tmp).eval().to(DEVICE)
    gpt = gpt.to(DEVICE)
    prompt = torch.randint(0, vocab, (1, 16), device=DEVICE)
    new = args.new_tokens
    timings = {
        "ours, KV cache": lambda: generate(gpt, prompt, new),
        "ours, no cache": lambda: generate(gpt, prompt, new, use_cache=False),
        "HF generate": lambda: hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new,
                                           min_new_tokens=new, do_sample=False, pad_token_id=0),
    }
    with autocast():
        same = torch.equal(generate(gpt, prompt, new), timings["HF generate"]())
    print(f"\n## GPT greedy decoding: {new} new tokens after a 16-token prompt (same tokens as HF: {same})")
    for name, fn in timings.items():
        sec = seconds_per_call(fn, 1, args.gen_repeat)
        results[("generate", name)] = new / sec
        print(f"{name:<16}{new / sec:>9.1f} tokens/s")
    return same


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny shapes, a smoke test; records nothing")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--gen-repeat", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2,
                        help="each variant is timed this many times, in turns; the best median counts")
    parser.add_argument("--only", choices=("bert", "gpt"), default=None,
                        help="one model's training and inference only (no generation); records nothing")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="bf16: every variant under torch.autocast(bfloat16), float32 weights")
    parser.add_argument("--shapes", choices=("small", "base"), default="small",
                        help="small: MiniLM's shape (BERT b32xT128, 6L-384d; GPT b8xT256); base: BERT-base "
                             "b32xT512 12L-768d and GPT-2 small b8xT1024, GPU-sized")
    args = parser.parse_args()
    global DEVICE, DTYPE
    DEVICE, DTYPE = torch.device(args.device), {"fp32": torch.float32, "bf16": torch.bfloat16}[args.precision]
    if args.quick:
        args.warmup, args.repeat, args.new_tokens, args.gen_repeat = 1, 2, 16, 1
    torch.manual_seed(0)
    start = time.time()
    peak = matmul_peak(512 if args.quick else 2048 if DEVICE.type == "cpu" else 8192, 1.0 if args.quick else 3.0)
    where = torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"{args.precision} matmul peak: {peak / 1e9:.1f} GFLOP/s, {where}, torch {torch.__version__}")
    bert_shape = ((4, 32, 2, 96, 12, 384) if args.quick else (32, 128, 6, 384, 12, 1536) if args.shapes == "small"
                  else (32, 512, 12, 768, 12, 3072))
    gpt_shape = ((2, 32, 2, 96, 6, 1000) if args.quick else (8, 256, 6, 384, 6, 50257) if args.shapes == "small"
                 else (8, 1024, 12, 768, 12, 50257))
    results: dict = {}
    if args.only != "gpt":
        compare("BERT", bert_steps, bert_shape, args, peak, results)
    if args.only != "bert":
        compare("GPT", gpt_steps, gpt_shape, args, peak, results)
    if args.only:
        return
    same = generation(args, results)

    print("\n## Summary (ours / best of HF eager and sdpa)")
    rows = []
    for name in ("BERT", "GPT"):
        for mode in ("train", "infer"):
            hf_best = max(results[(name, mode, "HF eager")], results[(name, mode, "HF sdpa")])
            hf_which = "eager" if results[(name, mode, "HF eager")] >= results[(name, mode, "HF sdpa")] else "sdpa"
            for variant in [v for v in ("ours eager", "ours compiled") if (name, mode, v) in results]:
                ours = results[(name, mode, variant)]
                print(f"{name} {mode:<6}{variant:<15}{ours:>9,.0f} tok/s vs HF {hf_which} {hf_best:>9,.0f}: "
                      f"{ours / hf_best:.2f}x  (MFU {results[(name, mode, variant, 'mfu')]:.1%})")
                rows.append((name, mode, variant, ours, hf_which, hf_best))
    cached, uncached = results[("generate", "ours, KV cache")], results[("generate", "ours, no cache")]
    hf_gen = results[("generate", "HF generate")]
    print(f"GPT greedy {args.new_tokens} tokens: cache {cached / uncached:.1f}x faster than no cache; "
          f"{cached / hf_gen:.2f}x transformers.generate")
    if args.quick:
        return
    wall = time.time() - start
    cmd = " ".join(["python", "benchmarks/throughput.py", *sys.argv[1:]])
    on_gpu = DEVICE.type == "cuda"
    suffix = f" {args.precision}" + (" cuda" if on_gpu else "")
    extra = {"machine": f"{where}, torch {torch.__version__}"} if on_gpu else {}
    for name, mode, variant, ours, hf_which, hf_best in rows:
        shape = bert_shape if name == "BERT" else gpt_shape
        record("modeling", f"{name} {shape[2]}L-{shape[3]}d b{shape[0]}xT{shape[1]}{suffix} {variant}",
               f"{mode} tokens/s ratio ours/HF", round(ours / hf_best, 3), wall, command=cmd,
               baseline=f"transformers {hf_which}", baseline_value=round(hf_best, 1), ours_tokens_per_s=round(ours, 1),
               mfu=round(results[(name, mode, variant, 'mfu')], 4), matmul_peak_gflops=round(peak / 1e9, 1), **extra)
    gen = f"GPT 6L-384d greedy {args.new_tokens} new tokens" + suffix.replace(" fp32", "")
    record("modeling", gen, "KV-cache speedup (x)",
           round(cached / uncached, 2), wall, command=cmd, baseline="ours without cache",
           baseline_value=round(uncached, 1), ours_tokens_per_s=round(cached, 1), **extra)
    record("modeling", gen, "tokens/s ratio ours/HF generate",
           round(cached / hf_gen, 3), wall, command=cmd, baseline="transformers generate",
           baseline_value=round(hf_gen, 1), ours_tokens_per_s=round(cached, 1), same_tokens=same, **extra)


if __name__ == "__main__":
    main()
