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

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .attention import attention_weights, padding_mask


@dataclass
class CopySource:
    """What the copy layer reads of one batch of sources; computed once per batch, kept while decoding."""
    memory: Tensor              # (B, S, D) encoder output
    keys: Tensor                # (B, S, D) memory W_k
    ids: Tensor                 # (B, S) source token ids
    mask: Tensor | None         # (B, 1, 1, S) True = real token, None when nothing is padded

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
        return CopySource(memory, self.key(memory), src_ids, padding_mask(src_mask))

    def attention(self, states: Tensor, source: CopySource) -> Tensor:
        """(B, T, D) decoder states -> (B, T, S) copy attention a_t."""
        q, k = self.query(states)[:, None], source.keys[:, None]                    # one head: (B, 1, T|S, D)
        return attention_weights(q, k, source.mask)[:, 0]                            # softmax(q kᵀ / √D)

    def forward(self, states: Tensor, vocab_logits: Tensor, source: CopySource) -> Tensor:
        """(B, T, D) decoder states, (B, T, V) output-layer logits -> (B, T, V) log P of the mixture."""
        attn = self.attention(states, source)                                         # (B, T, S)
        context = attn @ source.memory                                                # (B, T, D)
        p_gen = torch.sigmoid(self.gate(torch.cat([states, context], dim=-1)))        # (B, T, 1)
        probs = p_gen * vocab_logits.softmax(dim=-1)                                  # (B, T, V)
        src_ids = source.ids[:, None, :].expand(-1, states.size(1), -1)               # (B, T, S)
        probs = probs.scatter_add(-1, src_ids, (1 - p_gen) * attn)                    # + copy mass per source id
        return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()
