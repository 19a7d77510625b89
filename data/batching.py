"""Batches: length-grouped (optionally by a token budget), sharded across processes, padded dynamically.

`LengthGroupedSampler` is a batch sampler: it yields lists of example indices. For training: shuffle, cut into
chunks of `group_size` batches, sort each chunk by length, cut it into batches (a fixed `batch_size`, or as many
examples as fit `max_tokens` padded tokens), and shuffle the batches, so padding costs almost nothing while the
model still sees lengths in random order. For evaluation (`shuffle=False`): the whole split sorted by length.

Distributed: every process builds the same batches (the order depends only on seed and epoch) and takes batches
rank, rank + W, ... For training each process gets the same number of batches (DDP steps together), so a few are
repeated; for evaluation nothing is repeated or dropped (a process may get one batch fewer), so metrics summed
over processes count every example exactly once. Lightning must not add its own DistributedSampler
(`use_distributed_sampler: false`, run.py's default).

Resuming mid-epoch: `skip_batches(epoch, n)` makes the next pass over `epoch` start after its first `n` batches, so a
resumed run sees exactly the batches an uninterrupted one would.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Iterator, Optional

import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import Sampler


def world() -> tuple[int, int]:
    """(number of processes, this process's rank), (1, 0) outside torch.distributed."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0


class LengthGroupedSampler(Sampler[list[int]]):
    def __init__(self, lengths: Sequence[int], batch_size: Optional[int] = None, *, max_tokens: Optional[int] = None,
                 shuffle: bool = True, group_by_length: bool = True, group_size: int = 64, seed: int = 0,
                 num_replicas: Optional[int] = None, rank: Optional[int] = None):
        if batch_size is None and max_tokens is None:
            raise ValueError("give batch_size, max_tokens or both")
        if max_tokens is not None and max(lengths, default=0) > max_tokens:
            raise ValueError(f"an example of {max(lengths)} tokens does not fit max_tokens {max_tokens}")
        default_world, default_rank = world()
        self.lengths = torch.as_tensor(list(lengths))
        self.batch_size, self.max_tokens = batch_size, max_tokens
        self.shuffle, self.group_by_length, self.group_size, self.seed = shuffle, group_by_length, group_size, seed
        self.num_replicas = default_world if num_replicas is None else num_replicas
        self.rank = default_rank if rank is None else rank
        self.epoch = 0
        self._skip: tuple[int, int] | None = None
        self._current_epoch: Optional[Callable[[], int]] = None

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of every epoch (through `sampler`)."""
        self.epoch = epoch

    def follow(self, current_epoch: Callable[[], int]) -> None:
        """Take the epoch from `current_epoch()` at the start of every pass instead of `set_epoch`. Lightning (2.6)
        passes set_epoch a count that runs one ahead of its current_epoch after a resume from a checkpoint written
        at the last batch of an epoch (e.g. after the epoch's validation): the resumed run would skip an epoch's
        order."""
        self._current_epoch = current_epoch

    @property
    def sampler(self) -> "LengthGroupedSampler":
        """Lightning calls `set_epoch` on `loader.batch_sampler.sampler` (torch's BatchSampler wraps a sampler), not
        on the batch sampler itself: this one is its own sampler, so every epoch gets its own order."""
        return self

    def _cut(self, order: list[int]) -> list[list[int]]:
        """Consecutive batches of `order`: `batch_size` examples, or as many as fit the token budget."""
        if self.max_tokens is None:
            return [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        batches, batch, longest = [], [], 0
        for i in order:
            longest_if_added = max(longest, int(self.lengths[i]))
            full = self.batch_size is not None and len(batch) == self.batch_size
            if batch and (full or longest_if_added * (len(batch) + 1) > self.max_tokens):
                batches.append(batch)
                batch, longest_if_added = [], int(self.lengths[i])
            batch.append(i)
            longest = longest_if_added
        return batches + ([batch] if batch else [])

    def global_batches(self) -> list[list[int]]:
        """All batches of this epoch, before sharding across processes; a short batch, if any, comes last."""
        n = len(self.lengths)
        g = torch.Generator().manual_seed(self.seed + self.current_epoch())
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        if not self.group_by_length:
            return self._cut(order.tolist())
        chunk = (self.batch_size or 1) * self.group_size if self.shuffle and self.max_tokens is None else n
        if self.shuffle and self.max_tokens is not None:       # a chunk holds about group_size budgets of tokens
            chunk = max(1, int(self.max_tokens * self.group_size / max(1.0, float(self.lengths.float().mean()))))
        batches = []
        for start in range(0, n, chunk):
            idx = order[start:start + chunk]
            batches += self._cut(idx[torch.argsort(self.lengths[idx], descending=True, stable=True)].tolist())
        if self.shuffle and len(batches) > 1:
            short = self.max_tokens is None and len(batches[-1]) < self.batch_size
            full, last = (batches[:-1], batches[-1:]) if short else (batches, [])      # the short batch stays last
            batches = [full[i] for i in torch.randperm(len(full), generator=g).tolist()] + last
        return batches

    def rank_batches(self) -> list[list[int]]:
        batches = self.global_batches()
        w = self.num_replicas
        if w > 1 and self.shuffle:           # training: the same number of batches on every process
            batches = batches + batches[:math.ceil(len(batches) / w) * w - len(batches)]
        while w > 1 and len(batches) < w and max(map(len, batches)) > 1:   # evaluation: every process gets one
            largest = max(range(len(batches)), key=lambda i: len(batches[i]))
            b = batches.pop(largest)
            batches[largest:largest] = [b[:len(b) // 2], b[len(b) // 2:]]
        return batches[self.rank::w]

    def current_epoch(self) -> int:
        """The epoch whose batches this sampler gives: the followed trainer's, else the last `set_epoch`."""
        return self._current_epoch() if self._current_epoch is not None else self.epoch

    def skip_batches(self, epoch: int, n: int) -> None:
        self._skip = (epoch, n) if n > 0 else None

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.rank_batches()
        if self._skip is not None and self._skip[0] == self.current_epoch():
            batches = batches[self._skip[1]:]
        self._skip = None
        yield from batches

    def __len__(self) -> int:
        """Batches this process sees in a full pass over the current epoch (a resumed epoch yields fewer; by token
        budget each epoch has its own number: TaskDataModule.reload_every_epoch)."""
        return len(self.rank_batches())


def pad_collate(pad: dict[str, int], masks: Optional[dict[str, str]] = None):
    """A collate function for examples that are dicts: every key in `pad` holds a sequence, padded to the longest in
    the batch with that key's value; every other key holds a number, stacked. `masks` maps a sequence key to the
    name of its mask (1 = real position); default {"input_ids": "attention_mask"} when input_ids is padded."""
    if masks is None:
        masks = {"input_ids": "attention_mask"} if "input_ids" in pad else {}

    def collate(examples: list[dict]) -> dict[str, torch.Tensor]:
        batch = {}
        for key, value in pad.items():
            rows = [torch.as_tensor(e[key], dtype=torch.long) for e in examples]
            batch[key] = pad_sequence(rows, batch_first=True, padding_value=value)            # (B, T)
            if key in masks:
                lengths = torch.tensor([len(r) for r in rows])                                # (B,)
                batch[masks[key]] = (torch.arange(batch[key].shape[1]) < lengths[:, None]).long()
        for key in examples[0]:
            if key not in pad:
                values = [e[key] for e in examples]
                batch[key] = torch.as_tensor(values, dtype=torch.float if isinstance(values[0], float) else torch.long)
        return batch

    return collate
