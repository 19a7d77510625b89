"""Encoder and decoder layers (Vaswani et al. 2017, section 3.1 and 3.3).

Each sub-layer is wrapped in a residual connection and LayerNorm, in one of two placements:
    post-norm (the original Transformer, BERT):  x = LayerNorm(x + Dropout(Sublayer(x)))
    pre-norm  (GPT-2):                           x = x + Dropout(Sublayer(LayerNorm(x)))
"""
from __future__ import annotations

from typing import Callable

import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .attention import KVCache, MultiHeadAttention
from .dropout import Dropout

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": F.relu,
    "gelu": F.gelu,                                              # exact, erf-based (BERT)
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),       # GPT-2's "gelu_new"
}


class FeedForward(nn.Module):
    """FFN(x) = act(x W1 + b1) W2 + b2, applied to each position separately."""

    def __init__(self, d_model: int, d_ff: int, activation: str = "relu", bias: bool = True):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}: expected one of {sorted(ACTIVATIONS)}")
        self.up = nn.Linear(d_model, d_ff, bias=bias)
        self.down = nn.Linear(d_ff, d_model, bias=bias)
        self.act = ACTIVATIONS[activation]

    def forward(self, x: Tensor) -> Tensor:
        return self.down(self.act(self.up(x)))                  # (B, T, D) -> (B, T, d_ff) -> (B, T, D)


class Residual(nn.Module):
    """Residual connection with LayerNorm before (pre-norm) or after (post-norm) the sub-layer. `bias=False`
    leaves the LayerNorm without its additive term (nanoGPT's `LayerNorm(ndim, bias)`)."""

    def __init__(self, d_model: int, dropout: float, norm_first: bool, eps: float, bias: bool = True):
        super().__init__()
        self.norm = nn.LayerNorm(d_model, eps=eps, bias=bias)
        self.dropout = Dropout(dropout)
        self.norm_first = norm_first

    def forward(self, x: Tensor, sublayer: Callable[[Tensor], Tensor]) -> Tensor:
        if self.norm_first:
            return x + self.dropout(sublayer(self.norm(x)))
        return self.norm(x + self.dropout(sublayer(x)))


class Block(nn.Module):
    """Self-attention then feed-forward: the Transformer's encoder layer and BERT's layer (bidirectional), and with
    `causal=True` GPT's block (masked self-attention, no encoder to attend to)."""

    def __init__(self, d_model: int, num_heads: int, d_ff: int, dropout: float = 0.1,
                 attention_dropout: float = 0.1, activation: str = "relu", norm_first: bool = False,
                 eps: float = 1e-5, bias: bool = True, causal: bool = False):
        super().__init__()
        self.self_attn = MultiHeadAttention(d_model, num_heads, attention_dropout, bias)
        self.ffn = FeedForward(d_model, d_ff, activation, bias)
        self.attn_residual = Residual(d_model, dropout, norm_first, eps, bias)
        self.ffn_residual = Residual(d_model, dropout, norm_first, eps, bias)
        self.causal = causal

    def forward(self, x: Tensor, mask: Tensor | None = None, cache: KVCache | None = None) -> Tensor:
        x = self.attn_residual(x, lambda h: self.self_attn(h, mask=mask, is_causal=self.causal, cache=cache))
        return self.ffn_residual(x, self.ffn)


class DecoderBlock(nn.Module):
    """The Transformer's decoder layer: masked self-attention, encoder-decoder attention, feed-forward."""

    def __init__(self, d_model: int, num_heads: int, d_ff: int, dropout: float = 0.1,
                 attention_dropout: float = 0.1, activation: str = "relu", norm_first: bool = False,
                 eps: float = 1e-5, bias: bool = True):
        super().__init__()
        self.self_attn = MultiHeadAttention(d_model, num_heads, attention_dropout, bias)
        self.cross_attn = MultiHeadAttention(d_model, num_heads, attention_dropout, bias, cross=True)
        self.ffn = FeedForward(d_model, d_ff, activation, bias)
        self.self_residual = Residual(d_model, dropout, norm_first, eps, bias)
        self.cross_residual = Residual(d_model, dropout, norm_first, eps, bias)
        self.ffn_residual = Residual(d_model, dropout, norm_first, eps, bias)

    def forward(self, x: Tensor, memory: Tensor, memory_mask: Tensor | None = None,
                cache: KVCache | None = None) -> Tensor:
        """x: (B, T, D) target so far; memory: (B, S, D) encoder output; memory_mask: (B, 1, 1, S)."""
        x = self.self_residual(x, lambda h: self.self_attn(h, is_causal=True, cache=cache))
        x = self.cross_residual(x, lambda h: self.cross_attn(h, memory=memory, mask=memory_mask))
        return self.ffn_residual(x, self.ffn)


def run_layers(layers: nn.ModuleList, x: Tensor, *args, checkpointing: bool = False, caches=None,
               all_states: list[Tensor] | None = None, **kwargs) -> Tensor:
    """Apply `layers` in order. With `checkpointing` (training only) each layer's activations are recomputed
    in the backward pass instead of stored. `all_states`, when given, collects every layer's output."""
    for i, layer in enumerate(layers):
        cache = caches[i] if caches is not None else None
        if checkpointing and x.requires_grad and cache is None:
            x = checkpoint(layer, x, *args, use_reentrant=False, **kwargs)
        else:
            x = layer(x, *args, cache=cache, **kwargs)
        if all_states is not None:
            all_states.append(x)
    return x
