"""Token, segment and position embeddings (Vaswani et al. 2017, section 3.4-3.5; Devlin et al. 2019)."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .dropout import Dropout


def sinusoidal_table(max_len: int, d_model: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """PE(pos, 2k) = sin(pos / 10000^(2k/d)),  PE(pos, 2k+1) = cos(pos / 10000^(2k/d))  -> (max_len, d_model)."""
    position = torch.arange(max_len, dtype=torch.float64)[:, None]                 # (L, 1)
    inv_freq = torch.exp(-math.log(10000.0) * torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)
    angles = position * inv_freq                                                    # (L, d/2)
    table = torch.zeros(max_len, d_model, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angles)
    table[:, 1::2] = torch.cos(angles[:, : d_model // 2])
    return table.to(dtype)


class SinusoidalPositionalEncoding(nn.Module):
    """Fixed positional encoding added to the scaled token embeddings; not a parameter."""

    def __init__(self, d_model: int, max_len: int = 5000):
        super().__init__()
        self.register_buffer("table", sinusoidal_table(max_len, d_model), persistent=False)

    def forward(self, seq_len: int, offset: int = 0) -> Tensor:
        return self.table[offset:offset + seq_len]                                  # (T, D)


class TransformerEmbedding(nn.Module):
    """Token embedding × √d_model + sinusoidal position, then dropout (the original Transformer)."""

    def __init__(self, vocab_size: int, d_model: int, max_len: int, dropout: float, pad_token_id: int | None = None):
        super().__init__()
        self.token = nn.Embedding(vocab_size, d_model, padding_idx=pad_token_id)
        self.position = SinusoidalPositionalEncoding(d_model, max_len)
        self.scale = math.sqrt(d_model)
        self.dropout = Dropout(dropout)

    def forward(self, input_ids: Tensor, offset: int = 0) -> Tensor:
        tokens = self.token(input_ids) * self.scale                                        # (B, T, D)
        # the fixed table follows the embeddings' dtype: DeepSpeed's bf16 casts parameters, not this buffer
        x = tokens + self.position(input_ids.size(1), offset).to(tokens.dtype)             # (B, T, D)
        return self.dropout(x)


class BertEmbeddings(nn.Module):
    """token + segment + learned position embeddings, then LayerNorm and dropout."""

    def __init__(self, vocab_size: int, d_model: int, max_positions: int, type_vocab_size: int,
                 dropout: float, eps: float, pad_token_id: int = 0):
        super().__init__()
        self.token = nn.Embedding(vocab_size, d_model, padding_idx=pad_token_id)
        self.position = nn.Embedding(max_positions, d_model)
        self.segment = nn.Embedding(type_vocab_size, d_model)
        self.norm = nn.LayerNorm(d_model, eps=eps)
        self.dropout = Dropout(dropout)

    def forward(self, input_ids: Tensor, token_type_ids: Tensor | None = None, offset: int = 0) -> Tensor:
        """`offset`: the position of the first id (a decoder reading one new token after a cache of `offset`)."""
        T = input_ids.size(1)
        if offset + T > self.position.num_embeddings:
            raise ValueError(f"sequence of {offset + T} tokens is longer than max_positions "
                             f"{self.position.num_embeddings}")
        positions = torch.arange(offset, offset + T, device=input_ids.device)
        x = self.token(input_ids) + self.position(positions)                       # (B, T, D)
        x = x + (self.segment(token_type_ids) if token_type_ids is not None else self.segment.weight[0])
        return self.dropout(self.norm(x))


class GPTEmbeddings(nn.Module):
    """token + learned position embeddings, then dropout (GPT-2)."""

    def __init__(self, vocab_size: int, d_model: int, max_positions: int, dropout: float):
        super().__init__()
        self.token = nn.Embedding(vocab_size, d_model)
        self.position = nn.Embedding(max_positions, d_model)
        self.dropout = Dropout(dropout)

    def forward(self, input_ids: Tensor, offset: int = 0) -> Tensor:
        T = input_ids.size(1)
        if offset + T > self.position.num_embeddings:
            raise ValueError(f"position {offset + T} is past max_positions {self.position.num_embeddings}")
        positions = torch.arange(offset, offset + T, device=input_ids.device)
        return self.dropout(self.token(input_ids) + self.position(positions))     # (B, T, D)
