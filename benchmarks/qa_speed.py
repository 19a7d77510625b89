"""Training speed of `run.py qa` against the plain `transformers` loop (issue 12), in turns, in one process.

The full comparison (benchmarks/qa.py --which both) trains both for whole epochs: on this 2-core machine the loop
alone would take hours. This script measures what makes the difference, the cost of a training step on the real
split (SQuAD v1.1 dev articles 0-37, all-MiniLM-L6-v2, batch 32, fp32, the same torch threads):

- ours: a Lightning `fit` of configs/qa/squad_minilm.yaml (QATask and SquadDataModule as run.py builds them:
  windows of similar length batched together and padded to the longest; gradient clipping, fused AdamW);
- the loop: BertForQuestionAnswering on benchmarks/qa_hf_baseline.py's features (every window padded to 384),
  AdamW, as that script trains.

They alternate, `--steps` optimizer steps each per round, for `--rounds` rounds (ours, loop, ours, loop, ...),
after `--warmup` untimed steps each. Our batches vary in length, so each round's cost is normalised per padded token
and projected onto the epoch's exact padded token count (read from the data loader); the loop's batches are all
32 x 384. Prints per round: seconds per 1,000 padded tokens for each and the projected epoch-time ratio, then the
median and spread; records the median ratio (ours / loop, lower is better; issue 12 asks <= 0.6 of the wall time).

    flock /tmp/heavy.lock python benchmarks/qa_speed.py                # ~10 min alone on 2 cores; recorded
    python benchmarks/qa_speed.py --steps 1 --rounds 1 --warmup 1 --no_record    # smoke test
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks import qa_hf_baseline  # noqa: E402
from benchmarks.record import record  # noqa: E402
from data.squad import SquadDataModule  # noqa: E402
from tasks.qa import QATask  # noqa: E402


class LoopRounds:
    """The transformers loop's training steps, `steps` at a time, on its shuffled 384-token windows."""

    def __init__(self, config: dict, threads: int):
        from transformers import BertForQuestionAnswering, BertTokenizerFast
        args = argparse.Namespace(max_length=config["data"]["max_length"], doc_stride=config["data"]["doc_stride"])
        model_dir = config["model"]["pretrained"]
        questions = qa_hf_baseline.read_questions(Path(config["data"]["split_file"]),
                                                  range(*config["data"]["train_articles"]))
        self.windows = qa_hf_baseline.train_features(BertTokenizerFast.from_pretrained(model_dir), questions, args)
        self.model = BertForQuestionAnswering.from_pretrained(model_dir).train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config["model"]["lr"])
        self.batches = self._batches(config["data"]["batch_size"])

    def _batches(self, batch_size: int):
        while True:
            yield from torch.utils.data.DataLoader(self.windows, batch_size=batch_size, shuffle=True,
                                                   generator=torch.Generator().manual_seed(0))

    def epoch_tokens(self) -> int:
        return len(self.windows) * self.windows.tensors[0].shape[1]

    def run(self, steps: int) -> tuple[float, int]:
        """(seconds, padded tokens) of `steps` training steps."""
        seconds, tokens = 0.0, 0
        for _ in range(steps):
            input_ids, token_type_ids, attention_mask, start_positions, end_positions = next(self.batches)
            t = time.perf_counter()
            loss = self.model(input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask,
                              start_positions=start_positions, end_positions=end_positions).loss
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad()
            seconds += time.perf_counter() - t
            tokens += input_ids.numel()
        return seconds, tokens


class Alternate(pl.Callback):
    """Times our training steps (batch start to batch end: forward, backward, clipping, optimizer step) and runs a
    round of the loop after every `steps` of ours."""

    def __init__(self, loop: LoopRounds, steps: int, warmup: int):
        self.loop, self.steps, self.warmup = loop, steps, warmup
        self.ours: list[tuple[float, int]] = []       # per round: (seconds, padded tokens)
        self.theirs: list[tuple[float, int]] = []
        self._seconds = self._tokens = 0

    def on_train_batch_start(self, trainer, task, batch, batch_idx):
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, task, outputs, batch, batch_idx):
        elapsed = time.perf_counter() - self._start
        if batch_idx < self.warmup:
            if batch_idx == self.warmup - 1:
                self.loop.run(self.warmup)             # the loop's warm-up, untimed like ours
            return
        self._seconds += elapsed
        self._tokens += batch["input_ids"].numel()
        if (batch_idx - self.warmup + 1) % self.steps == 0:
            self.ours.append((self._seconds, self._tokens))
            self._seconds = self._tokens = 0
            self.theirs.append(self.loop.run(self.steps))
            (s1, n1), (s2, n2) = self.ours[-1], self.theirs[-1]
            print(f"round {len(self.ours)}: ours {1000 * s1 / n1:.3f} s / 1k padded tokens ({n1 / self.steps:.0f} a "
                  f"batch), loop {1000 * s2 / n2:.3f} ({n2 / self.steps:.0f} a batch)", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/qa/squad_minilm.yaml")
    p.add_argument("--steps", type=int, default=8, help="training steps of each per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2, help="untimed steps of each before the first round")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no_record", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    config = yaml.safe_load((ROOT / args.config).read_text())
    pl.seed_everything(config.get("seed_everything", 42))

    data = SquadDataModule(**config["data"])
    task = QATask(**config["model"])
    data.setup("fit")
    our_epoch_tokens = sum(batch["input_ids"].numel() for batch in data.train_dataloader())
    loop = LoopRounds(config, args.threads)
    timer = Alternate(loop, args.steps, args.warmup)
    trainer = pl.Trainer(accelerator="cpu", devices=1, precision="32-true", logger=False, callbacks=[timer],
                         enable_checkpointing=False, enable_progress_bar=False, num_sanity_val_steps=0,
                         limit_val_batches=0, max_steps=args.warmup + args.steps * args.rounds,
                         gradient_clip_val=config["trainer"].get("gradient_clip_val"))
    trainer.fit(task, datamodule=data)

    loop_epoch_tokens = loop.epoch_tokens()
    ratios = []        # projected epoch training time, ours / loop, per round
    for (s1, n1), (s2, n2) in zip(timer.ours, timer.theirs):
        ratios.append((s1 / n1 * our_epoch_tokens) / (s2 / n2 * loop_epoch_tokens))
    ours_epoch = statistics.median(s / n for s, n in timer.ours) * our_epoch_tokens
    loop_epoch = statistics.median(s / n for s, n in timer.theirs) * loop_epoch_tokens
    ratio = statistics.median(ratios)
    print(f"epoch padded tokens: ours {our_epoch_tokens:,} ({len(data.examples('train')[1]):,} windows), loop "
          f"{loop_epoch_tokens:,} ({len(loop.windows):,} windows)")
    print(f"projected training epoch: ours {ours_epoch:.0f} s, loop {loop_epoch:.0f} s; ours / loop per round "
          + " ".join(f"{r:.3f}" for r in ratios) + f"; median {ratio:.3f} (spread {min(ratios):.3f}-{max(ratios):.3f})")
    if not args.no_record:
        record("qa", Path(args.config).stem, "train_epoch_time_ratio_vs_transformers", round(ratio, 3),
               time.perf_counter() - start, command="flock /tmp/heavy.lock python benchmarks/qa_speed.py",
               baseline="transformers BertForQuestionAnswering loop, 384-token windows (same run, in turns)",
               baseline_value=1.0, ratios=[round(r, 3) for r in ratios], ours_epoch_s=round(ours_epoch),
               baseline_epoch_s=round(loop_epoch), our_epoch_tokens=our_epoch_tokens,
               baseline_epoch_tokens=loop_epoch_tokens, steps_per_round=args.steps, rounds=args.rounds,
               threads=args.threads)


if __name__ == "__main__":
    main()
