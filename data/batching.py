"""Dynamic padding and length-grouped batches.

`LengthGroupedSampler` yields indices whose consecutive runs of `batch_size` form batches of similar
length: shuffle, cut into chunks of `group_size` batches, sort each chunk by length, cut into batches,
shuffle the batches (so the model still sees random lengths across steps). Padding to the longest example
in each batch then costs almost nothing, where random batches pay for their longest sentence.

It subclasses `DistributedSampler` so Lightning leaves it alone under DDP: it shards batches itself
(rank r takes batches r, r+W, ...). For training it repeats a few batches so every rank has the same
count (DDP needs that); for evaluation (`shuffle=False`) nothing is repeated or dropped, ranks may get
one batch fewer, and torchmetrics reduces exactly over the real examples.

Resuming mid-epoch: `skip_batches(epoch, n)` makes the next iteration of `epoch` start after its first
`n` batches (the order depends only on seed and epoch), so a resumed run sees the same batches as an
uninterrupted one.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch.utils.data import DistributedSampler


class LengthGroupedSampler(DistributedSampler):
    def __init__(self, lengths: Sequence[int], batch_size: int, *, shuffle: bool = True, group_by_length: bool = True,
                 group_size: int = 64, seed: int = 0, num_replicas: int = 1, rank: int = 0):
        super().__init__(range(len(lengths)), num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.lengths = torch.as_tensor(list(lengths))
        self.batch_size = batch_size
        self.group_by_length = group_by_length
        self.group_size = group_size
        self._skip: tuple[int, int] | None = None

    def global_batches(self) -> list[list[int]]:
        """All batches of this epoch, before sharding across ranks; a short batch, if any, comes last."""
        n = len(self.lengths)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        if self.group_by_length:
            chunk = self.batch_size * self.group_size if self.shuffle else n
            parts = []
            for start in range(0, n, chunk):
                idx = order[start:start + chunk]
                parts.append(idx[torch.argsort(self.lengths[idx], descending=True, stable=True)])
            order = torch.cat(parts) if parts else order
        batches = [order[i:i + self.batch_size].tolist() for i in range(0, n, self.batch_size)]
        if self.shuffle and len(batches) > 1:
            full, last = (batches[:-1], batches[-1:]) if len(batches[-1]) < self.batch_size else (batches, [])
            perm = torch.randperm(len(full), generator=g).tolist()
            batches = [full[i] for i in perm] + last
        return batches

    def rank_batches(self) -> list[list[int]]:
        batches = self.global_batches()
        w = self.num_replicas
        if w > 1 and self.shuffle:  # training: equal batch counts on every rank
            per_rank = math.ceil(len(batches) / w)
            extra = batches[:per_rank * w - len(batches)]
            if len(batches[-1]) < self.batch_size:  # keep the short batch last in its rank's stream
                batches = batches[:-1] + [b for b in extra] + batches[-1:]
            else:
                batches = batches + extra
        return batches[self.rank::w]

    def skip_batches(self, epoch: int, n: int) -> None:
        self._skip = (epoch, n) if n > 0 else None

    def __iter__(self):
        batches = self.rank_batches()
        if self._skip is not None and self._skip[0] == self.epoch:
            batches = batches[self._skip[1]:]
            self._skip = None
        for b in batches:
            yield from b

    def __len__(self) -> int:
        """Examples this rank sees in a full epoch (a resumed epoch yields fewer)."""
        return sum(len(b) for b in self.rank_batches())

    def num_batches(self) -> int:
        return len(self.rank_batches())


def pad_collate(pad_id: int):
    """Pads `input_ids`/`token_type_ids` to the longest example in the batch and builds `attention_mask`."""

    def collate(examples: list[dict]) -> dict[str, torch.Tensor]:
        longest = max(len(e["input_ids"]) for e in examples)
        n = len(examples)
        input_ids = torch.full((n, longest), pad_id, dtype=torch.long)
        token_type_ids = torch.zeros((n, longest), dtype=torch.long)
        attention_mask = torch.zeros((n, longest), dtype=torch.long)
        for i, e in enumerate(examples):
            k = len(e["input_ids"])
            input_ids[i, :k] = torch.as_tensor(e["input_ids"])
            token_type_ids[i, :k] = torch.as_tensor(e["token_type_ids"])
            attention_mask[i, :k] = 1
        batch = {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask,
                 "index": torch.as_tensor([e["index"] for e in examples])}
        if "label" in examples[0]:
            labels = [e["label"] for e in examples]
            batch["labels"] = torch.as_tensor(labels, dtype=torch.float if isinstance(labels[0], float) else torch.long)
        return batch

    return collate
