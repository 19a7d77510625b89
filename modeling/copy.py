"""Copying from the source: the pointer-generator output layer (See et al. 2017, "Get To The Point"), on a Transformer.

At each target position the decoder state h_t attends once more over the encoder memory m_1..m_S, with a single head:

    a_t = softmax_s( (h_t W_q) · (m_s W_k) / √D )                      copy attention over the source positions
    c_t = Σ_s a_ts m_s                                                  what it read
    p_gen = σ(w · [h_t; c_t] + b)                                       generate (1) or copy (0)
    P(w) = p_gen · softmax(h_t Eᵀ)_w + (1 − p_gen) · Σ_{s: x_s = w} a_ts

so a word of the source can be produced by pointing at it, however rare it is in the targets. Source and target
share one vocabulary (the copied ids are source ids). The layer returns log P(w), (B, T, V): its softmax is P again,
so greedy, sampling and beam search read it as they read logits.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class CopySource:
    """What the copy layer reads of one batch of sources; computed once per batch, kept while decoding."""
    memory: Tensor              # (B, S, D) encoder output
    keys: Tensor                # (B, S, D) memory W_k
    ids: Tensor                 # (B, S) source token ids
    mask: Tensor | None         # (B, S) True = real token, None when nothing is padded

    def repeat_interleave(self, repeats: int) -> "CopySource":
        """Each batch row `repeats` times in a row (beam search: one copy per beam)."""
        rep = lambda t: None if t is None else t.repeat_interleave(repeats, dim=0)  # noqa: E731
        return CopySource(rep(self.memory), rep(self.keys), rep(self.ids), rep(self.mask))


class PointerGenerator(nn.Module):
    def __init__(self, d_model: int):
        super().__init__()
        self.query = nn.Linear(d_model, d_model, bias=False)     # W_q
        self.key = nn.Linear(d_model, d_model, bias=False)       # W_k
        self.gate = nn.Linear(2 * d_model, 1)                    # w, b of p_gen

    def source(self, memory: Tensor, src_ids: Tensor, src_mask: Tensor | None) -> CopySource:
        """(B, S, D) memory, (B, S) ids and 1 = real token -> the projected source."""
        mask = None if src_mask is None or bool(src_mask.all()) else src_mask.bool()
        return CopySource(memory, self.key(memory), src_ids, mask)

    def attention(self, states: Tensor, source: CopySource) -> Tensor:
        """(B, T, D) decoder states -> (B, T, S) copy attention a_t."""
        scores = self.query(states) @ source.keys.transpose(1, 2) / math.sqrt(states.size(-1))    # (B, T, S)
        if source.mask is not None:
            scores = scores.masked_fill(~source.mask[:, None, :], float("-inf"))
        return scores.softmax(dim=-1)

    def forward(self, states: Tensor, vocab_logits: Tensor, source: CopySource) -> Tensor:
        """(B, T, D) decoder states, (B, T, V) output-layer logits -> (B, T, V) log P of the mixture."""
        attn = self.attention(states, source)                                         # (B, T, S)
        context = attn @ source.memory                                                # (B, T, D)
        p_gen = torch.sigmoid(self.gate(torch.cat([states, context], dim=-1)))        # (B, T, 1)
        probs = p_gen * vocab_logits.softmax(dim=-1)                                  # (B, T, V)
        src_ids = source.ids[:, None, :].expand(-1, states.size(1), -1)               # (B, T, S)
        probs = probs.scatter_add(-1, src_ids, (1 - p_gen) * attn)                    # + copy mass per source id
        return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()


def smoothed_nll(log_probs: Tensor, target: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Mean over N rows of (N, V) log-probabilities against (N,) targets, label-smoothed as
    `F.cross_entropy(..., label_smoothing=ε)`: (1 − ε) · (−log p_y) + ε · mean_w(−log p_w)."""
    nll = -log_probs.gather(1, target[:, None]).squeeze(1)                            # (N,)
    if label_smoothing == 0.0:
        return nll.mean()
    return ((1 - label_smoothing) * nll - label_smoothing * log_probs.mean(dim=-1)).mean()
