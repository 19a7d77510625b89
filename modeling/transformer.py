"""The encoder-decoder Transformer of "Attention Is All You Need" (Vaswani et al. 2017)."""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from .attention import KVCache, padding_mask
from .blocks import Block, DecoderBlock, run_layers
from .embeddings import TransformerEmbedding


@dataclass
class TransformerConfig:
    src_vocab_size: int = 37000
    tgt_vocab_size: int = 37000
    hidden_size: int = 512          # d_model
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
    num_heads: int = 8
    ffn_size: int = 2048
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation: str = "relu"
    max_positions: int = 1024
    share_embeddings: bool = True     # one embedding for source and target (needs one shared vocabulary)
    norm_first: bool = False          # post-norm as in the paper; pre-norm trains more stably when deep
    layer_norm_eps: float = 1e-5
    bias: bool = True
    pad_token_id: int = 0
    activation_checkpointing: bool = False


class Transformer(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = c = config
        if c.share_embeddings and c.src_vocab_size != c.tgt_vocab_size:
            raise ValueError("share_embeddings needs src_vocab_size == tgt_vocab_size")
        self.tgt_embed = TransformerEmbedding(c.tgt_vocab_size, c.hidden_size, c.max_positions, c.dropout, c.pad_token_id)
        self.src_embed = self.tgt_embed if c.share_embeddings else \
            TransformerEmbedding(c.src_vocab_size, c.hidden_size, c.max_positions, c.dropout, c.pad_token_id)
        layer_args = (c.hidden_size, c.num_heads, c.ffn_size, c.dropout, c.attention_dropout, c.activation,
                      c.norm_first, c.layer_norm_eps, c.bias)
        self.encoder = nn.ModuleList(Block(*layer_args) for _ in range(c.num_encoder_layers))
        self.decoder = nn.ModuleList(DecoderBlock(*layer_args) for _ in range(c.num_decoder_layers))
        # pre-norm stacks end un-normalised: a final LayerNorm closes each
        final_norm = lambda: nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps, bias=c.bias)  # noqa: E731
        self.encoder_norm = final_norm() if c.norm_first else nn.Identity()
        self.decoder_norm = final_norm() if c.norm_first else nn.Identity()
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def encode(self, src_ids: Tensor, src_mask: Tensor | None = None) -> Tensor:
        """(B, S) source ids, (B, S) 1 = real token -> (B, S, D) memory."""
        x = self.src_embed(src_ids)
        x = run_layers(self.encoder, x, padding_mask(src_mask),
                       checkpointing=self.config.activation_checkpointing and self.training)
        return self.encoder_norm(x)

    def decode(self, tgt_ids: Tensor, memory: Tensor, src_mask: Tensor | None = None,
               cache: list[KVCache] | None = None) -> Tensor:
        """(B, T) target ids so far, (B, S, D) memory -> (B, T, V) next-token logits (output tied to embedding)."""
        offset = cache[0].length if cache else 0
        x = self.tgt_embed(tgt_ids, offset)
        x = run_layers(self.decoder, x, memory, padding_mask(src_mask), caches=cache,
                       checkpointing=self.config.activation_checkpointing and self.training)
        return self.decoder_norm(x) @ self.tgt_embed.token.weight.t()

    def forward(self, src_ids: Tensor, tgt_ids: Tensor, src_mask: Tensor | None = None) -> Tensor:
        return self.decode(tgt_ids, self.encode(src_ids, src_mask), src_mask)

    def loss(self, src_ids: Tensor, tgt_in: Tensor, tgt_out: Tensor, src_mask: Tensor | None = None,
             label_smoothing: float = 0.0) -> Tensor:
        logits = self(src_ids, tgt_in, src_mask)
        return F.cross_entropy(logits.view(-1, logits.size(-1)), tgt_out.reshape(-1),
                               ignore_index=self.config.pad_token_id, label_smoothing=label_smoothing)

    def new_cache(self, batch_size: int, max_len: int) -> list[KVCache]:
        c = self.config
        w = self.tgt_embed.token.weight
        return [KVCache(batch_size, c.num_heads, max_len, c.hidden_size // c.num_heads, w.dtype, w.device)
                for _ in self.decoder]

    def decoder_for(self, memory: Tensor, src_mask: Tensor | None = None) -> "BoundDecoder":
        """The decoder with its encoder output fixed, in the shape `generation` expects."""
        return BoundDecoder(self, memory, src_mask)


class BoundDecoder:
    """`decoder(ids, cache=...)` and `new_cache(...)` over a fixed memory; follows beam reordering of the cache
    by reading the memory rows that match the cache's batch size."""

    def __init__(self, model: Transformer, memory: Tensor, src_mask: Tensor | None):
        self.model, self.memory, self.src_mask = model, memory, src_mask

    def new_cache(self, batch_size: int, max_len: int) -> list[KVCache]:
        if batch_size != self.memory.size(0):       # beam search: one copy of the memory per beam
            repeat = batch_size // self.memory.size(0)
            self.memory = self.memory.repeat_interleave(repeat, dim=0)
            if self.src_mask is not None:
                self.src_mask = self.src_mask.repeat_interleave(repeat, dim=0)
        return self.model.new_cache(batch_size, max_len)

    def __call__(self, tgt_ids: Tensor, cache: list[KVCache] | None = None) -> Tensor:
        return self.model.decode(tgt_ids, self.memory, self.src_mask, cache)
