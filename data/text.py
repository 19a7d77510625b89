"""Plain-text corpora for language modelling.

Pipeline: read UTF-8 files (one document each) -> deterministic train/validation split by character position
(nanoGPT's `data[:int(n * 0.9)]`) -> tokenise (characters, GPT-2 BPE or a byte-level BPE trained on the training
part only) with an end-of-text id between documents -> cache the ids as memory-mapped arrays keyed by a hash of
the file contents and the tokenizer, so a second run starts at once -> batches of blocks:

- `RandomBlocks`: nanoGPT's `get_batch` (uniform random offsets, seeded generator), whole batches at a time.
- `SlidingWindows`: perplexity with a sliding window; each window scores only its last `stride` tokens, so every
  token after the first window sees at least `block_size - stride + 1` tokens of context (exactly `block_size`
  with stride 1). With `stride = block_size` it is the block cutter: consecutive blocks over one split that score
  every target token exactly once.
"""
from __future__ import annotations

import functools
import hashlib
import itertools
import json
import warnings
from pathlib import Path
from typing import Callable, Iterator, Literal, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, default_collate

from data.base import TaskDataModule
from data.batching import world
from data.cache import cached_text, content_key, default_cache_dir, write_atomic
from data.errors import ConfigError, DataError
from data.hub import local_file
from data.readers import read_text, require_file
from data.lm_tokenizer import TextTokenizer

CACHE_VERSION = "1"
IGNORE_INDEX = -100


# ---------------------------------------------------------------------------------------------------------
# Reading and splitting
# ---------------------------------------------------------------------------------------------------------
def read_documents(paths: Sequence[str | Path]) -> list[str]:
    """One document per file: its UTF-8 text, Windows line ends read as "\\n" (data.readers.read_text)."""
    return [read_text(path).replace("\r\n", "\n") for path in paths]


def split_documents(docs: Sequence[str], val_fraction: float) -> tuple[list[str], list[str]]:
    """Cut the concatenated documents at character `int(n * (1 - val_fraction))`: the head trains, the tail
    validates. The document that straddles the cut is split in two. Deterministic, no shuffling."""
    total = sum(len(d) for d in docs)
    cut = int(total * (1.0 - val_fraction))
    train, val, seen = [], [], 0
    for doc in docs:
        if seen + len(doc) <= cut:
            train.append(doc)
        elif seen >= cut:
            val.append(doc)
        else:
            train.append(doc[: cut - seen])
            val.append(doc[cut - seen:])
        seen += len(doc)
    return train, [d for d in val if d]


def file_digest(path: str | Path) -> str:
    with open(require_file(path), "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# ---------------------------------------------------------------------------------------------------------
# Token cache
# ---------------------------------------------------------------------------------------------------------
def cached_tokens(cache_dir: Path, key: str, build) -> dict[str, np.ndarray]:
    """`{split: memmap}` from `cache_dir/key.*`, or `build()` -> {split: array} written there first (each file by
    write_atomic, the metadata last: an interrupted run never leaves a partial cache)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    meta_path = cache_dir / f"{key}.json"
    if not meta_path.exists():
        arrays = build()
        for split, arr in arrays.items():
            write_atomic(cache_dir / f"{key}.{split}.bin", arr.tofile)
        shapes = json.dumps({s: {"dtype": a.dtype.name, "length": int(a.size)} for s, a in arrays.items()})
        write_atomic(meta_path, lambda tmp: tmp.write_text(shapes))
    meta = json.loads(meta_path.read_text())
    return {split: np.memmap(cache_dir / f"{key}.{split}.bin", dtype=m["dtype"], mode="r", shape=(m["length"],))
            if m["length"] else np.zeros(0, dtype=m["dtype"])                # numpy cannot map an empty file
            for split, m in meta.items()}


# ---------------------------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------------------------
def _as_long(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(a, dtype=np.int64))


class RandomBlocks(IterableDataset):
    """Batches of `batch_size` blocks at random offsets, whole batches at once.

    sampling "random": every start uniformly at random, with replacement (nanoGPT's `get_batch`).
    sampling "shuffled": epochs without replacement: each epoch picks a random phase r < block_size and
    visits the blocks starting at r, r + block_size, r + 2·block_size, … in a random order, so every token
    is seen once per epoch before any is seen twice.

    `num_batches=None` streams forever (training by steps) from one generator seeded once; `skip` batches are
    drawn and dropped at its start, so a resumed run continues the stream where the checkpoint left it. Otherwise
    (evaluation) pass p yields `num_batches` batches from a generator seeded with (seed, p), or (seed, key()) when
    `key` is set (lm validation: the step of the weights validated): successive evaluations draw new batches, and
    the same key the same ones.

    One stream, shared: each of the W processes (DDP) and every DataLoader worker draws the same batches
    and keeps its own, process r the batches r, r + W, r + 2W, ... of the stream (so W processes train on what one
    would see in W times the steps, and evaluation counts each batch once), and worker k of K every K-th of those,
    in the order the DataLoader takes them from its workers. `skip` counts this process's batches. Each batch
    carries `index`, its blocks' start offsets: the examples it holds.
    """

    SAMPLING = ("random", "shuffled")

    def __init__(self, tokens: np.ndarray, block_size: int, batch_size: int, seed: int,
                 num_batches: int | None = None, sampling: str = "random", skip: int = 0):
        if len(tokens) < block_size + 1:
            raise ValueError(f"{len(tokens)} tokens cannot fill one block of {block_size} + 1")
        if sampling not in self.SAMPLING:
            raise ValueError(f"sampling {sampling!r} is not one of {self.SAMPLING}")
        self.tokens, self.block_size, self.batch_size = tokens, block_size, batch_size
        self.num_batches, self.seed, self.sampling, self.skip = num_batches, seed, sampling, skip
        self.num_replicas, self.rank = world()                # this process's share of the stream
        self.rng = np.random.default_rng(seed)
        self.passes = 0
        self.key: Callable[[], int] | None = None
        self._offsets = np.arange(block_size + 1)

    def __len__(self) -> int:
        if self.num_batches is None:
            raise TypeError("an endless RandomBlocks stream has no length")
        return self.num_batches

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        rng = self.rng
        if self.num_batches is not None:
            rng = np.random.default_rng([self.seed, self.key() if self.key is not None else self.passes])
            self.passes += 1
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        stream = self._random_starts(rng) if self.sampling == "random" else self._shuffled_starts(rng)
        stream = itertools.islice(stream, self.skip * self.num_replicas, None)
        self.skip = 0
        batches = itertools.count() if self.num_batches is None else range(self.num_batches)
        for g, starts in zip(batches, stream):           # g: batches of the shared stream drawn so far
            if g % self.num_replicas == self.rank and (g // self.num_replicas) % workers == worker:
                chunk = _as_long(self.tokens[starts[:, None] + self._offsets])         # (B, T + 1)
                yield {"input_ids": chunk[:, :-1], "targets": chunk[:, 1:], "index": _as_long(starts)}

    def _random_starts(self, rng: np.random.Generator) -> Iterator[np.ndarray]:
        high = len(self.tokens) - self.block_size  # starts 0 .. n - block_size - 1, as nanoGPT
        while True:
            yield rng.integers(0, high, self.batch_size)

    def _shuffled_starts(self, rng: np.random.Generator) -> Iterator[np.ndarray]:
        pending = np.empty(0, dtype=np.int64)
        while True:
            while len(pending) < self.batch_size:    # next epoch: new phase, new order
                phase = int(rng.integers(0, self.block_size))
                epoch = np.arange(phase, len(self.tokens) - self.block_size, self.block_size)
                pending = np.concatenate([pending, rng.permutation(epoch)])
            yield pending[:self.batch_size]
            pending = pending[self.batch_size:]


class SlidingWindows(Dataset):
    """Windows of `block_size` tokens advancing by `stride`; window 0 scores all its targets, every later
    window only its last `stride` targets (the others are -100). Each token 1..n-1 is scored exactly once, no
    window reaches outside `tokens`, and the last one is padded (`pad_id` in, -100 out)."""

    def __init__(self, tokens: np.ndarray, block_size: int, stride: int, pad_id: int = 0):
        if not 1 <= stride <= block_size:
            raise ValueError(f"stride must be in [1, block_size={block_size}], got {stride}")
        self.tokens, self.block_size, self.stride, self.pad_id = tokens, block_size, stride, pad_id

    def __len__(self) -> int:
        n_targets = len(self.tokens) - 1
        if n_targets <= 0:
            return 0
        return 1 + max(0, -(-(n_targets - self.block_size) // self.stride))

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        T = self.block_size
        start = i * self.stride
        chunk = _as_long(self.tokens[start:start + T + 1])
        n = len(chunk) - 1
        x = torch.full((T,), self.pad_id, dtype=torch.long)
        y = torch.full((T,), IGNORE_INDEX, dtype=torch.long)
        x[:n], y[:n] = chunk[:-1], chunk[1:]
        if i > 0:
            y[: T - self.stride] = IGNORE_INDEX
        return {"input_ids": x, "targets": y}


# ---------------------------------------------------------------------------------------------------------
# DataModule
# ---------------------------------------------------------------------------------------------------------
class TextDataModule(TaskDataModule):
    """Language-modelling data from plain-text files.

    Args:
        train_files: text files, one document each, concatenated with an end-of-text token between them;
            the head `1 - val_fraction` of the characters trains, the tail validates.
        test_file: a text file scored by `lm test` with a sliding window of `block_size` and `test_stride`.
        tokenizer: "char", "gpt2" (needs `tokenizer_path`) or "bpe" (a byte-level BPE of `bpe_vocab_size`
            trained on the training part). A model restored from a checkpoint brings its own tokenizer, which
            then wins.
        block_size: tokens per training example (the model's context is at least this long).
        batch_size: blocks per training batch; seed: seeds the training stream and the validation draws.
        val_batches: evaluate on this many random batches per validation, as nanoGPT's `estimate_loss`
            (`eval_iters`); 0 evaluates the whole validation split, every token once.
        train_sampling: "random" (uniform random offsets, nanoGPT's) or "shuffled" (epochs without
            replacement at a random phase); see `RandomBlocks`.
        predict_file: prompts for `lm predict`, one per line (an empty line: generate from the start of a text).
    """

    def __init__(self, train_files: list[str] | None = None, test_file: str | None = None,
                 tokenizer: str = "char", tokenizer_path: str | None = None, bpe_vocab_size: int = 4096,
                 block_size: int = 64, val_fraction: float = 0.1, val_batches: int = 20,
                 test_stride: int | None = None, train_sampling: Literal["random", "shuffled"] = "random",
                 predict_file: str | None = None, cache_dir: str | None = None, batch_size: int = 12,
                 seed: int = 1337, **kwargs):
        super().__init__(batch_size=batch_size, seed=seed, **kwargs)
        self.save_hyperparameters()
        self.train_files = [train_files] if isinstance(train_files, str) else list(train_files or [])
        self.test_file, self.predict_file = test_file, predict_file
        self.tokenizer_kind, self.tokenizer_path, self.bpe_vocab_size = tokenizer, tokenizer_path, bpe_vocab_size
        checks = [("block_size", block_size, block_size >= 1, "must be at least 1"),
                  ("val_fraction", val_fraction, 0 <= val_fraction < 1, "must be in [0, 1)"),
                  ("val_batches", val_batches, val_batches >= 0, "must be >= 0"),
                  ("test_stride", test_stride, test_stride is None or 1 <= test_stride <= block_size,
                   f"must be in [1, block_size={block_size}]"),
                  ("bpe_vocab_size", bpe_vocab_size, bpe_vocab_size >= 257, "must be at least 257 (the bytes + 1)")]
        for key, value, ok, rule in checks:
            if not ok:
                raise ConfigError(f"data.{key} {value}: {rule}")
        if train_sampling not in RandomBlocks.SAMPLING:
            raise ConfigError(f"data.train_sampling: {train_sampling!r} is not one of {RandomBlocks.SAMPLING}")
        self.block_size, self.val_fraction, self.val_batches = block_size, val_fraction, val_batches
        self.test_stride, self.train_sampling = test_stride, train_sampling
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.splits: dict[str, np.ndarray] = {}
        self._val_stream: RandomBlocks | None = None
        self._checkpoint_step = 0                # the step of a restored checkpoint's weights

    parse_tokenizer = staticmethod(TextTokenizer.from_str)

    def adopt(self, blueprint) -> None:
        """A checkpoint's tokenizer wins (for test/validate/resume of a trained model)."""
        if self.tokenizer is not None and self.tokenizer.to_str() != blueprint.tokenizer:
            self.splits, self._val_stream = {}, None
        super().adopt(blueprint)

    def prepare_corpus(self) -> None:
        """Tokenise (or load from the cache) the training files into `self.splits` = {"train", "val"}."""
        if self.splits:
            return
        if not self.train_files:
            raise DataError("data.train_files: no training text files given")
        self.train_files = [str(local_file(p, "text")) for p in self.train_files]      # a hub: split as a file
        corpus_key = content_key(*[file_digest(p) for p in self.train_files], str(self.val_fraction))

        @functools.cache
        def documents():                    # read once, and only if the tokenizer or the token cache needs them
            all_docs = read_documents(self.train_files)
            return (all_docs, *split_documents(all_docs, self.val_fraction))

        if self.tokenizer is None:
            self.tokenizer = self._new_tokenizer(documents, corpus_key)
        tok = self.tokenizer
        key = content_key(CACHE_VERSION, corpus_key, tok.to_str())

        def build():
            _, train_docs, val_docs = documents()
            return {"train": tok.encode_documents(train_docs, self.train_files),
                    "val": tok.encode_documents(val_docs, self.train_files[-len(val_docs):] if val_docs else None)}

        self.splits = cached_tokens(self.cache_dir, key, build)
        for split, tokens in self.splits.items():
            if len(tokens) < self.block_size + 1 and (split == "train" or self.val_batches):
                raise DataError(f"{', '.join(self.train_files)}: the {split} part has {len(tokens)} tokens, fewer than "
                                f"one block of data.block_size {self.block_size} + 1 (a longer text, a smaller "
                                f"block_size, or another val_fraction)")

    def _new_tokenizer(self, documents: Callable[[], tuple[list[str], ...]], corpus_key: str) -> TextTokenizer:
        """data.tokenizer "char" (vocabulary of every file, as nanoGPT), "gpt2" (from data.tokenizer_path) or "bpe"
        (trained on the training part only; cached so it is trained once). `documents()`: (all, train, val)."""
        kind = self.tokenizer_kind
        if kind == "char":
            return TextTokenizer.char_from_text(documents()[0])
        if kind == "gpt2":
            if not self.tokenizer_path:
                raise ConfigError("data.tokenizer_path: the GPT-2 tokenizer needs a directory with encoder.json + "
                                  "vocab.bpe (e.g. ../shared/data/tokenizers/gpt2)")
            return TextTokenizer.gpt2(self.tokenizer_path)
        if kind == "bpe":
            saved = self.cache_dir / f"bpe-{content_key(CACHE_VERSION, corpus_key, str(self.bpe_vocab_size))}.json"
            text = cached_text(saved, lambda: TextTokenizer.train_bpe(documents()[1], self.bpe_vocab_size).to_str(),
                               "byte-level BPE vocabulary")
            return TextTokenizer.from_str(text)
        raise ConfigError(f"data.tokenizer {kind!r}: unknown tokenizer, expected char, gpt2 or bpe")

    def setup(self, stage: str | None = None) -> None:
        if stage in ("fit", "validate", None):
            self.prepare_corpus()
        elif self.tokenizer is None and self.tokenizer_kind == "gpt2" and self.tokenizer_path:
            self.tokenizer = TextTokenizer.gpt2(self.tokenizer_path)  # test/predict of an imported GPT-2

    # loaders -----------------------------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        self.prepare_corpus()
        position = self.resume_position()                # (epoch, batches done): the stream is one endless epoch
        ds = RandomBlocks(self.splits["train"], self.block_size, self.batch_size, seed=self.seed,
                          sampling=self.train_sampling, skip=position[1] if position else 0)
        return DataLoader(ds, batch_size=None, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0, generator=self.loader_generator())

    def val_dataloader(self) -> DataLoader:
        self.prepare_corpus()
        val = self.splits["val"]
        if self.val_batches:      # each validation draws fresh batches, fixed by the seed and the step validated
            if self._val_stream is None:
                self._val_stream = RandomBlocks(val, self.block_size, self.eval_batch_size, seed=self.seed + 1,
                                                num_batches=self.val_batches)
                self._val_stream.key = self.validated_step
            # Lightning warns of any IterableDataset with a length that workers could duplicate it; RandomBlocks
            # gives each worker its own share of the stream
            warnings.filterwarnings("ignore", message="Your `IterableDataset` has `__len__` defined")
            return DataLoader(self._val_stream, batch_size=None, generator=self.loader_generator())
        return self._windows_loader(val, stride=self.block_size)

    def test_dataloader(self) -> DataLoader:
        if not self.test_file:
            raise DataError("data.test_file: `lm test` needs a text file to score")
        if self.tokenizer is None:
            raise DataError("lm test: no tokenizer; pass --ckpt_path of a trained model (its tokenizer is used)")
        path = str(local_file(self.test_file, "text"))
        tokens = self.tokenizer.encode_documents(read_documents([path]), [path])
        return self._windows_loader(tokens, stride=self.test_stride or max(1, self.block_size // 2))

    def _windows_loader(self, tokens: np.ndarray, stride: int) -> DataLoader:
        """`SlidingWindows` over `tokens` in consecutive batches, each on exactly one process (the base's sampler)."""
        windows = SlidingWindows(tokens, self.block_size, stride, pad_id=self.tokenizer.eot_id)
        return self.loader(windows, [self.block_size] * len(windows), default_collate, train=False,
                           group_by_length=False)

    def predict_dataloader(self) -> DataLoader:
        """Batches of {"index", "prompt", "ids"}: every line of the predict file, in order, with its token ids (a
        character outside the vocabulary is an error naming the file and line)."""
        if not self.predict_file:
            raise DataError("lm predict: give data.predict_file (prompts, one per line)")
        path = str(local_file(self.predict_file, "text"))
        lines = read_documents([path])[0].split("\n")
        if lines and lines[-1] == "":
            lines.pop()                                   # the file's final newline ends the last line
        if self.tokenizer is None:
            raise DataError("lm predict: no tokenizer; pass --ckpt_path of a trained model (its tokenizer is used)")
        rows = [{"index": i, "prompt": line, "ids": self.tokenizer.encode(line, path, i + 1)}
                for i, line in enumerate(lines)]
        return DataLoader(rows, batch_size=self.eval_batch_size, collate_fn=list)

    def validated_step(self) -> int:
        """The optimizer step of the weights being validated, which picks the validation batches: a fit's validation
        at step s, the same in a resumed fit, and `validate` of the checkpoint written at s score the same batches."""
        trainer = self.trainer
        return trainer.global_step if trainer is not None and trainer.state.fn == "fit" else self._checkpoint_step

    def state_dict(self) -> dict:
        state = super().state_dict()                       # empty outside fit
        return {**state, "step": self.trainer.global_step} if state else state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._checkpoint_step = state.get("step", 0)
