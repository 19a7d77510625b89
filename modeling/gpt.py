"""GPT (Radford et al. 2018, 2019): a decoder-only Transformer. Pre-norm blocks of causal self-attention and
a GELU feed-forward, a final LayerNorm, and a language-model head tied to the token embedding (GPT-2) or, with
`tie_embeddings=False`, a matrix of its own."""
from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor, nn

from .attention import KVCache
from .blocks import Block, run_layers
from .embeddings import GPTEmbeddings
from .losses import linear_cross_entropy


@dataclass
class GPTConfig:
    vocab_size: int = 50257
    max_positions: int = 1024      # the context length (nanoGPT's block_size)
    num_layers: int = 12
    num_heads: int = 12
    hidden_size: int = 768
    dropout: float = 0.0
    bias: bool = True              # False: no biases anywhere (linear layers and LayerNorms), as nanoGPT
    layer_norm_eps: float = 1e-5
    activation: str = "gelu_tanh"   # GPT-2's tanh approximation; "gelu" is the exact erf form (nanoGPT's)
    activation_checkpointing: bool = False
    tie_embeddings: bool = True    # LM head = token embedding matrix (GPT-2); False: a separate (V, D) matrix

    @property
    def ffn_size(self) -> int:
        return 4 * self.hidden_size


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = c = config
        self.embeddings = GPTEmbeddings(c.vocab_size, c.hidden_size, c.max_positions, c.dropout)
        self.layers = nn.ModuleList(
            Block(c.hidden_size, c.num_heads, c.ffn_size, c.dropout, c.dropout, c.activation,
                         norm_first=True, eps=c.layer_norm_eps, bias=c.bias, causal=True)
            for _ in range(c.num_layers))
        self.final_norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps, bias=c.bias)
        self.lm_head = None if c.tie_embeddings else nn.Linear(c.hidden_size, c.vocab_size, bias=False)
        self.apply(self._init_weights)
        for layer in self.layers:   # GPT-2: residual projections scaled by 1/√(2·layers)
            for proj in (layer.self_attn.out_proj, layer.ffn.down):
                nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * c.num_layers))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_parameters(self, exclude_positions: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.embeddings.position.weight.numel() if exclude_positions else n

    def hidden(self, input_ids: Tensor, cache: list[KVCache] | None = None) -> Tensor:
        """(B, T) token ids -> (B, T, D) final-normed hidden states. With a cache, positions continue after it."""
        offset = cache[0].length if cache else 0
        x = self.embeddings(input_ids, offset)
        x = run_layers(self.layers, x, caches=cache,
                       checkpointing=self.config.activation_checkpointing and self.training)
        return self.final_norm(x)

    @property
    def head_weight(self) -> Tensor:
        """(V, D) output projection: the token embedding when tied, else the LM head's own matrix."""
        return self.embeddings.token.weight if self.lm_head is None else self.lm_head.weight

    def forward(self, input_ids: Tensor, cache: list[KVCache] | None = None) -> Tensor:
        """(B, T) -> (B, T, V) next-token logits."""
        return self.hidden(input_ids, cache) @ self.head_weight.t()

    def loss(self, input_ids: Tensor, targets: Tensor) -> Tensor:
        """Mean cross-entropy of (B, T) `targets` (already shifted: targets[t] follows input_ids[t]; -100 ignored),
        computed chunk by chunk so the (B, T, V) logits never exist all at once."""
        hidden = self.hidden(input_ids)                                            # (B, T, D)
        return linear_cross_entropy(hidden.flatten(0, 1), self.head_weight, targets.reshape(-1),
                                    chunk_size=4096)

    def new_cache(self, batch_size: int, max_len: int) -> list[KVCache]:
        c = self.config
        if max_len > c.max_positions:
            raise ValueError(f"cache of {max_len} positions is longer than max_positions {c.max_positions}")
        w = self.embeddings.token.weight
        return [KVCache(batch_size, c.num_heads, max_len, c.hidden_size // c.num_heads, w.dtype, w.device)
                for _ in self.layers]
