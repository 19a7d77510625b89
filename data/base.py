"""What every data module shares.

A data module subclasses `TaskDataModule` and reads its files in `setup`. From the base it gets:
- the tokenizer's one way into and out of a checkpoint: `tokenizer_json()` is what the task stores in its
  blueprint, and `adopt(blueprint)` (called before `setup` when a checkpoint is restored) makes the data use the
  checkpoint's tokenizer and label names, so predict, test and resume read text exactly as the model was trained;
- `loader(...)`: the one batch sampler (length-grouped or by token budget, sharded across processes; data/batching.py)
  with the one padding collate; a training loader by token budget is rebuilt every epoch (`reload_every_epoch`),
  because each epoch's shuffle gives it another number of batches;
- the position inside the epoch: saved in every checkpoint, and a resumed run's first training loader starts after
  the batches already done, so no example is skipped or repeated;
- the shared settings, checked once (a bad value is a one-line ConfigError).

A task reads what it needs from batches, from `tokenizer`, `labels`, `tokenizer_json()`, and from the documented
methods a data module adds for evaluation (e.g. CoNLLDataModule.examples(split)), never from private attributes.
"""
from __future__ import annotations

import warnings
from typing import Callable, Optional, Sequence

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from data.batching import LengthGroupedSampler
from data.errors import ConfigError
from data.tokenization import load_tokenizer, tokenizer_from_str


class TaskDataModule(pl.LightningDataModule):
    def __init__(self, batch_size: int = 32, eval_batch_size: Optional[int] = None, num_workers: int = 0,
                 seed: int = 42):
        """
        Args:
            batch_size: examples per training batch (per process).
            eval_batch_size: examples per evaluation / prediction batch (default: batch_size).
            num_workers: DataLoader worker processes (0: load in the training process).
            seed: seed of the batch order (epoch e shuffles with seed + e).
        """
        super().__init__()
        for key, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if value is not None and value < 1:
                raise ConfigError(f"data.{key} {value}: must be at least 1")
        if num_workers < 0:
            raise ConfigError(f"data.num_workers {num_workers}: must be >= 0")
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.num_workers, self.seed = num_workers, seed
        self.tokenizer = None
        self.labels: Optional[list[str]] = None
        self._resume: Optional[tuple[int, int]] = None

    # ---- the tokenizer and labels of a checkpoint ---------------------------------------------------------------
    @staticmethod
    def parse_tokenizer(text: str):
        """A tokenizer from its serialised form (`tokenizers` JSON here; a data module may use another kind)."""
        return tokenizer_from_str(text)

    def tokenizer_json(self) -> Optional[str]:
        return self.tokenizer.to_str() if self.tokenizer is not None else None

    def default_tokenizer(self, stored: Optional[str], pretrained: Optional[str]) -> None:
        """Without a configured tokenizer, a new run reads text as the model it starts from was trained to: with the
        tokenizer stored in our checkpoint (`stored`, its JSON), else the one in the `pretrained` directory."""
        if self.tokenizer is None and (stored or pretrained):
            self.tokenizer = self.parse_tokenizer(stored) if stored else load_tokenizer(pretrained)

    def adopt(self, blueprint) -> None:
        """Use a restored checkpoint's tokenizer and labels (called before `setup`)."""
        if blueprint.tokenizer is not None:
            self.tokenizer = self.parse_tokenizer(blueprint.tokenizer)
        if blueprint.labels is not None:
            self.labels = list(blueprint.labels)

    # ---- loaders ------------------------------------------------------------------------------------------------
    def split_loader(self, split: str, train: bool, keep_order: bool) -> DataLoader:
        """The loader of one split ("train", "val", "test", "predict"): what the four Lightning hooks below return.
        A module whose splits differ only in their data writes this; one whose splits differ more (lm, pretrain)
        writes the hooks instead."""
        raise NotImplementedError(f"{type(self).__name__} defines neither split_loader nor its *_dataloader hooks")

    def train_dataloader(self) -> DataLoader:
        return self.split_loader("train", train=True, keep_order=False)

    def val_dataloader(self) -> DataLoader:
        return self.split_loader("val", train=False, keep_order=False)

    def test_dataloader(self) -> DataLoader:
        return self.split_loader("test", train=False, keep_order=False)

    def predict_dataloader(self) -> DataLoader:
        return self.split_loader("predict", train=False, keep_order=True)      # input order: outputs line up

    def loader(self, dataset: Dataset, lengths: Sequence[int], collate: Callable, *, train: bool,
               max_tokens: Optional[int] = None, group_by_length: bool = True, keep_order: bool = False) -> DataLoader:
        """Training batches (shuffled, length-grouped, equal counts per process, resumable) or evaluation batches
        (sorted by length, each example on exactly one process); `keep_order` (predict) keeps the input order on
        one process, so outputs line up with inputs."""
        size = self.batch_size if train else self.eval_batch_size
        sampler = LengthGroupedSampler(lengths, size if max_tokens is None else None,
                                       max_tokens=max_tokens, shuffle=train,
                                       group_by_length=group_by_length and not keep_order, seed=self.seed,
                                       **({"num_replicas": 1, "rank": 0} if keep_order else {}))
        if train and self.trainer is not None:
            sampler.follow(lambda: self.trainer.current_epoch)
        if train and max_tokens is not None:
            self.reload_every_epoch("with data.max_tokens each epoch has its own number of batches")
        if train and self._resume is not None:
            sampler.skip_batches(*self.resume_position())
        return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0 and train, generator=self.loader_generator())

    def reload_every_epoch(self, why: str) -> None:
        """Make Lightning build the training loader anew at every epoch's start, and take its length then: `why`
        says what changes from epoch to epoch. Lightning reads the length once per loader and holds every epoch to
        it: an epoch with more batches would be cut short, one with fewer would skip its validation."""
        if self.trainer is None:
            return
        every = self.trainer.reload_dataloaders_every_n_epochs
        if every not in (0, 1):
            raise ConfigError(f"trainer.reload_dataloaders_every_n_epochs {every}: {why}, so it must be 1")
        self.trainer.reload_dataloaders_every_n_epochs = 1

    def loader_generator(self) -> torch.Generator:
        """A DataLoader's own generator. Every pass over a DataLoader draws its workers' base seed from it; from the
        global generator instead, a resumed run's first pass would draw once more than the uninterrupted run, and
        every dropout mask after it would differ."""
        return torch.Generator().manual_seed(self.seed)

    # ---- the position inside the epoch --------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The batches done in the last epoch started (after that epoch ended, current_epoch is already the next)."""
        trainer = self.trainer
        if trainer is None or trainer.state.fn != "fit":
            return {}
        return {"epoch": trainer.fit_loop.epoch_progress.current.started - 1,
                "batches_done": trainer.fit_loop.epoch_loop.batch_progress.current.processed}

    def load_state_dict(self, state: dict) -> None:
        if state.get("batches_done"):
            self._resume = (state["epoch"], state["batches_done"])
            # the sampler resumes mid-epoch (above); Lightning cannot see that and would warn that it won't
            warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch")

    def resume_position(self) -> Optional[tuple[int, int]]:
        """(epoch, batches done) of a restored checkpoint, once: for `loader` or a module's own training stream."""
        position, self._resume = self._resume, None
        return position
