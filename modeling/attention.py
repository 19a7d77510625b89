"""Scaled dot-product and multi-head attention (Vaswani et al. 2017, section 3.2).

    Attention(Q, K, V) = softmax(Q Kᵀ / √d_k) V
    MultiHead(Q, K, V) = Concat(head_1, …, head_h) Wᴼ,  head_i = Attention(Q W_iQ, K W_iK, V W_iV)

Shapes: B batch, T query positions, S key/value positions, H heads, D = d_model, Dh = D / H.
Masks are boolean with True meaning "may attend", broadcastable to (B, H, T, S).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .dropout import dropout, use_fast_dropout


def attention_weights(q: Tensor, k: Tensor, mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
    """softmax(Q Kᵀ / √d_k) written out, for inspection: (B, H, T, Dh), (B, H, S, Dh) -> (B, H, T, S)."""
    scores = (q / math.sqrt(q.size(-1))) @ k.transpose(-2, -1)               # (B, H, T, S)
    if is_causal:
        scores.add_(mask_bias(causal_mask(q.size(-2), k.size(-2), q.device), scores.dtype))
    if mask is not None:
        scores.add_(mask_bias(mask, scores.dtype))
    return scores.softmax(dim=-1)


def mask_bias(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """A boolean mask (True: may attend) as what to add to the scores: 0 or -inf, in the mask's own small shape.

    Adding it in place gives the scores of `masked_fill` exactly (x + 0 = x), without a copy of the (B, H, T, S)
    scores, and adds nothing to the backward pass (a sum passes its gradient through; masked_fill's backward is
    another (B, H, T, S) pass). Without both copies a MiniLM layer's forward and backward pass on the CPU (32 x 176
    tokens) takes 0.94x the time (median of 5 rounds in turns, spread 0.92-1.00x)."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))


def scaled_dot_product_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None,
                                 is_causal: bool = False, dropout_p: float = 0.0) -> Tensor:
    """softmax(Q Kᵀ / √d_k) V through PyTorch's fused kernels: (B,H,T,Dh),(B,H,S,Dh),(B,H,S,Dh) -> (B,H,T,Dh).

    With dropout on the CPU, PyTorch falls back to an unfused path with a slow Bernoulli sampler; there the same
    math is written out with our dropout instead (modeling/dropout.py).
    """
    if dropout_p > 0.0 and use_fast_dropout(q):          # our CPU dropout (modeling/dropout.py): written out
        return dropout(attention_weights(q, k, mask, is_causal), dropout_p) @ v
    # the stock path: PyTorch's fused kernels (and its own dropout)
    if is_causal and mask is not None:                   # fused kernels take one or the other: merge them
        mask = mask & causal_mask(q.size(-2), k.size(-2), q.device)
        is_causal = False
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal)


def causal_mask(num_queries: int, num_keys: int, device=None) -> Tensor:
    """(T, S) lower-triangular mask aligned to the end: query t sees keys up to S - T + t (a cache of S - T before it)."""
    return torch.ones(num_queries, num_keys, dtype=torch.bool, device=device).tril(diagonal=num_keys - num_queries)


def padding_mask(attention_mask: Tensor | None) -> Tensor | None:
    """(B, S) with 1 for real tokens -> (B, 1, 1, S) boolean key mask, or None when nothing is padded."""
    if attention_mask is None or bool(attention_mask.all()):
        return None
    return attention_mask.bool()[:, None, None, :]


class KVCache:
    """Keys and values of the positions decoded so far, for one attention layer.

    Preallocated to `max_len` so each decoding step writes one slice instead of concatenating.
    """

    def __init__(self, batch_size: int, num_heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device=None):
        self.k = torch.empty(batch_size, num_heads, max_len, head_dim, dtype=dtype, device=device)
        self.v = torch.empty_like(self.k)
        self.length = 0

    def append(self, k_new: Tensor, v_new: Tensor) -> tuple[Tensor, Tensor]:
        """Store (B, H, t, Dh) new keys/values; return all keys/values so far, (B, H, length, Dh)."""
        t = k_new.size(2)
        if self.length + t > self.k.size(2):
            raise ValueError(f"KV cache full: {self.length} + {t} positions > max_len {self.k.size(2)}")
        self.k[:, :, self.length:self.length + t] = k_new
        self.v[:, :, self.length:self.length + t] = v_new
        self.length += t
        return self.k[:, :, :self.length], self.v[:, :, :self.length]

    def reorder(self, index: Tensor) -> None:
        """Keep batch rows `index` (beam search: follow the surviving hypotheses)."""
        self.k = self.k.index_select(0, index)
        self.v = self.v.index_select(0, index)


class ProjectedMemory:
    """The encoder memory projected to the keys and values of every cross-attention layer, once.

    While decoding, the memory does not change from one step to the next, so neither do its keys and values: projecting
    the (B, S, D) memory in every layer at every step is repeated work (most of a beam-search step's time). This holds
    each layer's (B, H, S, Dh) keys and values; a cross-attention layer given it as `memory` reads them.
    """

    def __init__(self, keys_values: dict[nn.Module, tuple[Tensor, Tensor]]):
        self.keys_values = keys_values

    @classmethod
    def project(cls, memory: Tensor, layers) -> "ProjectedMemory":
        """(B, S, D) memory -> each cross-attention layer's keys and values."""
        return cls({layer: layer.memory_keys_values(memory) for layer in layers})

    def repeat_interleave(self, repeats: int) -> "ProjectedMemory":
        """Each batch row `repeats` times in a row (beam search: one copy per beam)."""
        return ProjectedMemory({layer: (k.repeat_interleave(repeats, dim=0), v.repeat_interleave(repeats, dim=0))
                                for layer, (k, v) in self.keys_values.items()})


class MultiHeadAttention(nn.Module):
    """Multi-head attention with one fused Q/K/V projection (self-attention) or separate Q and K/V
    projections (cross-attention: queries from the decoder, keys and values from the encoder)."""

    def __init__(self, d_model: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 cross: bool = False):
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model {d_model} is not divisible by num_heads {num_heads}")
        self.num_heads, self.head_dim, self.cross = num_heads, d_model // num_heads, cross
        if cross:
            self.q_proj = nn.Linear(d_model, d_model, bias=bias)          # W^Q
            self.kv_proj = nn.Linear(d_model, 2 * d_model, bias=bias)     # [W^K; W^V]
        else:
            self.qkv_proj = nn.Linear(d_model, 3 * d_model, bias=bias)    # [W^Q; W^K; W^V]
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)            # W^O
        self.dropout = dropout
        self.keep_weights = False        # set True to keep the last attention weights in .weights
        self.weights: Tensor | None = None

    def split_heads(self, x: Tensor) -> Tensor:
        """(B, T, D) -> (B, H, T, Dh)"""
        B, T, _ = x.shape
        return x.view(B, T, self.num_heads, self.head_dim).transpose(1, 2)

    def memory_keys_values(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        """Cross-attention: the encoder output (B, S, D) as keys and values, (B, H, S, Dh) each."""
        k, v = (self.split_heads(t) for t in self.kv_proj(memory).chunk(2, dim=-1))
        return k, v

    def forward(self, x: Tensor, memory: Tensor | ProjectedMemory | None = None, mask: Tensor | None = None,
                is_causal: bool = False, cache: KVCache | None = None) -> Tensor:
        """x: (B, T, D) queries; memory: for cross-attention, the (B, S, D) encoder output, or its keys and values
        projected once (`ProjectedMemory`, for decoding) -> (B, T, D)."""
        if self.cross:
            q = self.split_heads(self.q_proj(x))
            k, v = memory.keys_values[self] if isinstance(memory, ProjectedMemory) else self.memory_keys_values(memory)
        else:
            q, k, v = (self.split_heads(t) for t in self.qkv_proj(x).chunk(3, dim=-1))
            if cache is not None:
                past = cache.length
                k, v = cache.append(k, v)
                if is_causal and past > 0:          # new queries see the whole past plus their own prefix
                    is_causal = False
                    if q.size(2) > 1:
                        mask = causal_mask(q.size(2), k.size(2), q.device) if mask is None \
                            else mask & causal_mask(q.size(2), k.size(2), q.device)
        if self.keep_weights:
            self.weights = attention_weights(q, k, mask, is_causal).detach()        # (B, H, T, S)
        dropout_p = self.dropout if self.training else 0.0
        heads = scaled_dot_product_attention(q, k, v, mask, is_causal, dropout_p)  # (B, H, T, Dh)
        B, H, T, Dh = heads.shape
        return self.out_proj(heads.transpose(1, 2).reshape(B, T, H * Dh))         # concat heads, W^O
