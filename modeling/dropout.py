"""Dropout (Srivastava et al. 2014), inverted: zero each element with probability p, scale the rest by 1/(1-p).

On the CPU, `torch.nn.functional.dropout` draws one Bernoulli sample per element, and drawing them costs more than
the multiply that uses them (about 13 % of a BERT training step). Here the random bits come 64 at a time and are
cut into 16-bit uniforms: an element is dropped when its uniform u ∈ {0, …, 65535} is below round(p · 65536),
i.e. with probability p to within 1/131072. PyTorch's CPU generator (a Mersenne Twister) is sequential, so large
masks are drawn in fixed chunks of 2^18 words, each from its own generator seeded by the default generator, on a
small thread pool: `torch.manual_seed` still fixes every mask, whatever the number of threads. Elsewhere (CUDA, or
inside `torch.compile`, whose generated kernels draw their own numbers) the stock `F.dropout` runs.

One switch turns the fast path off everywhere (then every dropout, attention's included, is PyTorch's own):
`set_fast_cpu_dropout(False)`, or the environment variable NLP_FAST_CPU_DROPOUT=0.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_LEVELS = 1 << 16          # 16-bit uniforms
_CHUNK_WORDS = 1 << 18     # 64-bit words per generator stream
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_pool: ThreadPoolExecutor | None = None
_fast_cpu_dropout = os.environ.get("NLP_FAST_CPU_DROPOUT", "1") != "0"


def set_fast_cpu_dropout(enabled: bool) -> None:
    """The one switch between our CPU dropout (True, the default) and PyTorch's stock dropout (False)."""
    global _fast_cpu_dropout
    _fast_cpu_dropout = bool(enabled)


def _reset_pool() -> None:
    global _pool
    _pool = None


os.register_at_fork(after_in_child=_reset_pool)    # a forked child (DataLoader worker) has no pool threads


def random_words(num_words: int, device=None) -> Tensor:
    """`num_words` uniformly random int64 (all 64 bits random), reproducible under `torch.manual_seed`."""
    if torch.device(device or "cpu").type != "cpu" or num_words <= _CHUNK_WORDS:
        return torch.randint(_INT64_MIN, _INT64_MAX, (num_words,), dtype=torch.int64, device=device)
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1)), thread_name_prefix="dropout")
    num_chunks = -(-num_words // _CHUNK_WORDS)
    seeds = torch.randint(0, 1 << 62, (num_chunks,)).tolist()        # from the default generator
    words = torch.empty(num_words, dtype=torch.int64)

    def fill(i: int) -> None:
        chunk = words[i * _CHUNK_WORDS:(i + 1) * _CHUNK_WORDS]
        chunk.random_(_INT64_MIN, _INT64_MAX, generator=torch.Generator().manual_seed(seeds[i]))

    list(_pool.map(fill, range(num_chunks)))                            # torch releases the GIL while filling
    return words


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, dtype: torch.dtype = torch.float32,
              device=None) -> Tensor:
    """1.0 (keep) with probability 1 - p and 0.0 (drop) with probability p, independently per element."""
    n = 1
    for size in shape:
        n *= size
    words = random_words((n + 3) // 4, device)
    uniforms = words.view(torch.int16)[:n].view(shape)     # signed 16-bit: u - 32768 for u ∈ {0, …, 65535}
    threshold = round(p * _LEVELS) - _LEVELS // 2
    keep = torch.empty(shape, dtype=dtype, device=device)
    return torch.ge(uniforms, threshold, out=keep)          # compare and convert in one pass


def use_fast_dropout(x: Tensor) -> bool:
    """Whether dropout of `x` takes the fast CPU path (switched on, a CPU tensor, not inside torch.compile)."""
    return _fast_cpu_dropout and x.device.type == "cpu" and not torch.compiler.is_compiling()


def dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """Inverted dropout of any tensor; identity when not training or p == 0."""
    if not training or p == 0.0:
        return x
    if not use_fast_dropout(x) or p >= 1.0:
        return F.dropout(x, p, training=True)                # the stock path
    keep = keep_mask(x.shape, p, x.dtype, x.device)
    if x.dtype in (torch.float32, torch.float64):
        return x * keep.mul_(1.0 / (1.0 - p))         # one multiply forward, one backward
    return (x * keep).mul_(1.0 / (1.0 - p))          # low precision: scale the product, round once


class Dropout(nn.Module):
    """Drop-in for `nn.Dropout` that uses `dropout` above."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability must be in [0, 1], got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
