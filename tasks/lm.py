"""Decoder-only language modelling over the shared `GPT`: `run.py lm fit|validate|test` and `run.py lm generate`.

The GPT is built from `model.config` once the data module knows its tokenizer (vocabulary size), or from a Hugging
Face GPT-2 directory (`model.pretrained`). Checkpoints carry the GPT config and the tokenizer, so `lm test` and
`lm generate` need nothing but the `.ckpt`.

Training follows nanoGPT: AdamW with decay on matrices only, linear warm-up then cosine decay to
`min_lr_ratio * lr` at `decay_steps` (default `trainer.max_steps`), gradient clipping (trainer), random-offset
batches. Validation reports token-weighted mean cross-entropy (`val/loss`) and perplexity, and writes a few
sampled continuations to `<run dir>/samples.txt` (and wandb, when it logs).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from pytorch_lightning import Callback
from torchmetrics import MeanMetric, SumMetric

from data.errors import ConfigError, check_fields, check_overrides
from data.lm_tokenizer import TextTokenizer
from modeling import GPT, GPTConfig
from modeling.generation import generate
from tasks.base import Task
from tasks.checkpoint import Blueprint, blueprint, read_checkpoint


# ---------------------------------------------------------------------------------------------------------
# Text generation shared by validation samples and `lm generate`
# ---------------------------------------------------------------------------------------------------------
def prompt_ids(tokenizer: TextTokenizer, prompt: str, where: str = "--prompt") -> list[int]:
    """Token ids of `prompt`; an empty prompt starts from the end-of-text token (GPT-2's unconditional start)."""
    ids = tokenizer.encode(prompt, where) if prompt else []
    return ids or [tokenizer.eot_id]


@torch.no_grad()
def generate_ids(model: GPT, ids: list[int], max_new_tokens: int, *, num_samples: int = 1,
                 temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                 seed: int | None = None, on_token: Callable[[torch.Tensor], None] | None = None) -> torch.Tensor:
    """(num_samples, len(ids) + n) ids. `temperature` 0 is greedy. The KV cache is used while the whole sequence
    fits the model's context; longer outputs re-read the last `block_size` tokens at each step."""
    block = model.config.max_positions
    ids = ids[-block:]
    device = next(model.parameters()).device
    x = torch.tensor([ids] * num_samples, dtype=torch.long, device=device)
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    was_training = model.training
    model.eval()
    try:
        return generate(model, x, max_new_tokens, do_sample=temperature > 0, temperature=temperature or 1.0,
                        top_k=top_k, top_p=top_p, generator=generator, on_token=on_token,
                        use_cache=len(ids) + max_new_tokens <= block, max_context=block)
    finally:
        model.train(was_training)


class TextStreamer:
    """`on_token` callback printing decoded text as it comes. Byte-level BPE tokens may end inside a UTF-8
    character; text ending in the replacement character is held back until the next token completes it."""

    def __init__(self, tokenizer: TextTokenizer, out=None):
        self.tokenizer, self.out = tokenizer, out or sys.stdout
        self.ids: list[int] = []
        self.printed = 0

    def __call__(self, next_ids: torch.Tensor) -> None:
        self.ids.append(int(next_ids[0]))
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):
            return
        self.out.write(text[self.printed:])
        self.out.flush()
        self.printed = len(text)

    def finish(self) -> None:
        text = self.tokenizer.decode(self.ids)
        self.out.write(text[self.printed:] + "\n")
        self.out.flush()


class FlushDenormals(Callback):
    """CPU float math flushes denormals to zero while a run lasts. The flag is the process's: it is cleared when the
    run ends, by an error too (a LightningModule's teardown is not called then), so later code is not affected."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        torch.set_flush_denormal(True)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        torch.set_flush_denormal(False)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        torch.set_flush_denormal(False)


# ---------------------------------------------------------------------------------------------------------
# LightningModule
# ---------------------------------------------------------------------------------------------------------
class LMTask(Task):
    """GPT language model.

    `config` is the GPT's shape (GPTConfig fields: num_layers, num_heads, hidden_size, dropout, bias, activation
    "gelu_tanh" (GPT-2's) or "gelu" (exact, nanoGPT's), tie_embeddings, max_positions (default: data.block_size));
    `pretrained` a Hugging Face GPT-2 directory to start from (its tokenizer must be the data's).

    Args:
        compile: `torch.compile` the training loss.
        flush_denormal: on CPU, flush denormal floats to zero (they make float math many times slower and appear
            as a trained model grows confident, e.g. tiny softmax probabilities).
        num_samples, sample_tokens, sample_prompt, sample_temperature, sample_top_k, sample_seed: the continuations
            sampled and logged after each validation (0 samples: none).
    """

    name = "lm"
    monitor = "val/loss"
    monitor_mode = "min"
    decoding = ("num_samples", "sample_tokens", "sample_prompt", "sample_temperature", "sample_top_k", "sample_seed")

    def __init__(self, compile: bool = False, flush_denormal: bool = True, num_samples: int = 1,
                 sample_tokens: int = 100, sample_prompt: str = "\n", sample_temperature: float = 0.8,
                 sample_top_k: int | None = 200, sample_seed: int = 1234, **kwargs):
        super().__init__(**kwargs)
        # float64 sums: the mean over all tokens is then the same, digit for digit, however DDP splits the batches
        self.val_loss, self.test_loss = MeanMetric().set_dtype(torch.float64), MeanMetric().set_dtype(torch.float64)
        self.test_tokens = SumMetric()

    # model construction ------------------------------------------------------------------------------------
    def create(self, data) -> Blueprint:
        h = self.hparams
        tokenizer = data.tokenizer
        if h.pretrained:
            from modeling.hf import load_gpt2
            try:
                model = load_gpt2(h.pretrained)
            except (ValueError, KeyError, OSError) as e:
                raise ConfigError(f"{h.pretrained}: cannot load a GPT-2 model: {str(e).splitlines()[0]}") from None
            check_overrides(dataclasses.asdict(model.config), h.config, h.pretrained)   # GPT-2's architecture stays
        else:
            check_fields(GPTConfig, h.config or {}, "model.config", "GPT setting")
            config = {"max_positions": data.block_size, **(h.config or {}), "vocab_size": tokenizer.vocab_size}
            model = GPT(GPTConfig(**config))
        if model.config.vocab_size < tokenizer.vocab_size:
            raise ConfigError(f"the model's vocabulary ({model.config.vocab_size}) is smaller than the tokenizer's "
                              f"({tokenizer.vocab_size})")
        bp = Blueprint(self.name, "gpt", dataclasses.asdict(model.config), data.tokenizer_json())
        self.build(bp, model)
        return bp

    def build(self, bp: Blueprint, model: GPT | None = None) -> None:
        self.model = model or GPT(GPTConfig(**bp.model_config))
        self.tokenizer = TextTokenizer.from_str(bp.tokenizer)
        self._loss = torch.compile(self.model.loss) if self.hparams.compile else self.model.loss

    def check_data(self, data) -> None:
        if data.block_size > self.model.config.max_positions:
            raise ConfigError(f"data.block_size {data.block_size} is longer than the model's context "
                              f"({self.model.config.max_positions}); pass --data.block_size "
                              f"{self.model.config.max_positions}")

    def configure_callbacks(self) -> list[Callback]:
        return [FlushDenormals()] if self.hparams.flush_denormal else []

    # training ----------------------------------------------------------------------------------------------
    def on_train_start(self) -> None:
        self._train_start = (time.perf_counter(), self.global_step)

    def on_train_end(self) -> None:
        """Write <run dir>/timing.json: optimizer steps, seconds in the training loop (validation included) and
        steps per second, for benchmarks."""
        start, first_step = self._train_start
        seconds = time.perf_counter() - start
        steps = self.global_step - first_step
        if self.trainer.global_rank == 0:
            path = Path(self.trainer.default_root_dir) / "timing.json"
            path.write_text(json.dumps({"steps": steps, "train_loop_s": round(seconds, 3),
                                        "steps_per_s": round(steps / seconds, 3) if seconds else None}) + "\n")

    def training_step(self, batch, batch_idx):
        loss = self._loss(batch["input_ids"], batch["targets"])
        self.log("train/loss", loss, prog_bar=True)
        return loss

    # evaluation --------------------------------------------------------------------------------------------
    def _scored_loss(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        targets = batch["targets"]
        return self.model.loss(batch["input_ids"], targets), (targets != -100).sum()

    def validation_step(self, batch, batch_idx):
        loss, n = self._scored_loss(batch)
        self.val_loss.update(loss, n)

    def on_validation_epoch_end(self) -> None:
        loss = self.val_loss.compute()
        self.val_loss.reset()
        self.log_dict({"val/loss": loss, "val/ppl": torch.exp(loss)}, prog_bar=True)
        if not self.trainer.sanity_checking:
            self.print(f"step {self.global_step}: val loss {float(loss):.4f}")
            self._log_samples()

    def test_step(self, batch, batch_idx):
        loss, n = self._scored_loss(batch)
        self.test_loss.update(loss, n)
        self.test_tokens.update(n)

    def on_test_epoch_end(self) -> None:
        loss = self.test_loss.compute()
        self.log_dict({"test/loss": loss, "test/ppl": torch.exp(loss), "test/tokens": self.test_tokens.compute()})
        self.test_loss.reset()
        self.test_tokens.reset()

    def predict_step(self, batch: list[dict], batch_idx: int) -> list[dict]:
        """A continuation of each prompt: `sample_tokens` tokens at `sample_temperature` / `sample_top_k`, seeded
        by `sample_seed` and the prompt's line, so a rerun gives the same text."""
        h = self.hparams
        rows = []
        for row in batch:
            ids = row["ids"] or [self.tokenizer.eot_id]       # encoded by the data module; empty: as prompt_ids
            out = generate_ids(self.model, ids, h.sample_tokens, temperature=h.sample_temperature,
                               top_k=h.sample_top_k, seed=h.sample_seed + row["index"])
            rows.append({"line": row["index"] + 1, "prompt": row["prompt"],
                         "continuation": self.tokenizer.decode(out[0, len(ids):].tolist())})
        return rows

    def _log_samples(self) -> None:
        h = self.hparams
        if not h.num_samples or self.trainer.global_rank != 0:
            return
        ids = prompt_ids(self.tokenizer, h.sample_prompt, "model.sample_prompt")
        out = generate_ids(self.model, ids, h.sample_tokens, num_samples=h.num_samples,
                           temperature=h.sample_temperature, top_k=h.sample_top_k, seed=h.sample_seed)
        texts = [self.tokenizer.decode(row.tolist()) for row in out]
        step = self.global_step
        path = Path(self.trainer.default_root_dir) / "samples.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as f:
            f.writelines(f"===== step {step} sample {i} =====\n{text}\n" for i, text in enumerate(texts))
        self.log_table("samples", ["step", "sample"], [[step, t] for t in texts])


# ---------------------------------------------------------------------------------------------------------
# `run.py lm generate`
# ---------------------------------------------------------------------------------------------------------
def load_checkpoint(path: str | Path) -> tuple[GPT, TextTokenizer]:
    """GPT (in eval mode) and tokenizer from a `lm fit` checkpoint (read safely, tasks/checkpoint.py)."""
    from tasks.export import network           # the export machinery (safetensors, HF layouts) only for this verb
    ckpt = read_checkpoint(path, task=LMTask.name)
    bp = blueprint(ckpt, path)
    return network(bp, ckpt["state_dict"]), TextTokenizer.from_str(bp.tokenizer)


def main_generate(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="run.py lm generate",
                                description="Continue a prompt with a trained GPT, streaming tokens as they come.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--ckpt_path", help="checkpoint written by `run.py lm fit`")
    src.add_argument("--hf_dir", help="a Hugging Face GPT-2 directory (config.json + model.safetensors)")
    p.add_argument("--tokenizer_path", help="with --hf_dir: directory of the tokenizer files (default: --hf_dir)")
    p.add_argument("--prompt", default="", help="text to continue (default: start from end-of-text)")
    p.add_argument("--max_new_tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    p.add_argument("--greedy", action="store_true", help="argmax decoding (same as --temperature 0)")
    p.add_argument("--top_k", type=int, default=None)
    p.add_argument("--top_p", type=float, default=None)
    p.add_argument("--num_samples", type=int, default=1)
    p.add_argument("--seed", type=int, default=1337)
    args = p.parse_args(argv)
    try:
        if args.max_new_tokens < 1 or args.num_samples < 1:
            raise ValueError("--max_new_tokens and --num_samples must be at least 1")
        if args.top_p is not None and not 0 < args.top_p <= 1:
            raise ValueError(f"--top_p must be in (0, 1], got {args.top_p}")
        if args.temperature < 0:
            raise ValueError(f"--temperature must be >= 0 (0: greedy), got {args.temperature}")
        if args.top_k is not None and args.top_k < 1:
            raise ValueError(f"--top_k must be at least 1, got {args.top_k}")
        if args.ckpt_path:
            if not Path(args.ckpt_path).is_file():
                raise ValueError(f"--ckpt_path {args.ckpt_path}: no such file")
            model, tokenizer = load_checkpoint(args.ckpt_path)
        else:
            from modeling.hf import load_gpt2
            model = load_gpt2(args.hf_dir).eval()
            tokenizer = TextTokenizer.gpt2(args.tokenizer_path or args.hf_dir)
        ids = prompt_ids(tokenizer, args.prompt)
    except (ValueError, OSError) as e:
        print(f"run.py lm generate: error: {e}", file=sys.stderr)
        return 2
    temperature = 0.0 if args.greedy else args.temperature
    for i in range(args.num_samples):
        if args.num_samples > 1:
            print(f"----- sample {i} -----")
        sys.stdout.write(args.prompt)
        streamer = TextStreamer(tokenizer)
        generate_ids(model, ids, args.max_new_tokens, temperature=temperature, top_k=args.top_k, top_p=args.top_p,
                     seed=args.seed + i, on_token=streamer)
        streamer.finish()
    return 0


VERBS = {"generate": main_generate}
