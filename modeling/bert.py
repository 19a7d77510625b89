"""BERT (Devlin et al. 2019): a post-norm Transformer encoder over token + segment + position embeddings,
a tanh pooler over [CLS], and the pre-training heads (masked LM tied to the word embeddings, next sentence)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .attention import padding_mask
from .blocks import ACTIVATIONS, Block, run_layers
from .embeddings import BertEmbeddings


@dataclass
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    ffn_size: int = 3072
    max_positions: int = 512
    type_vocab_size: int = 2
    dropout: float = 0.1
    attention_dropout: float = 0.1
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    activation: str = "gelu"
    activation_checkpointing: bool = False


@dataclass
class BertOutput:
    last_hidden_state: Tensor                       # (B, T, D)
    pooled: Tensor | None = None                    # (B, D)
    hidden_states: tuple[Tensor, ...] | None = None  # num_layers + 1 of (B, T, D): embeddings, then each layer


class MaskedLMHead(nn.Module):
    """dense -> gelu -> LayerNorm -> projection onto the (tied) word embeddings + bias."""

    def __init__(self, config: BertConfig, word_embeddings: nn.Embedding):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = ACTIVATIONS[config.activation]
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.word_embeddings = word_embeddings                                      # tied, not a copy
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden: Tensor) -> Tensor:
        h = self.norm(self.act(self.dense(hidden)))
        return h @ self.word_embeddings.weight.t() + self.bias                     # (..., V)


class BERT(nn.Module):
    def __init__(self, config: BertConfig, pooler: bool = True, pretraining_heads: bool = False):
        super().__init__()
        self.config = config
        c = config
        self.embeddings = BertEmbeddings(c.vocab_size, c.hidden_size, c.max_positions, c.type_vocab_size,
                                         c.dropout, c.layer_norm_eps, c.pad_token_id)
        self.layers = nn.ModuleList(
            Block(c.hidden_size, c.num_heads, c.ffn_size, c.dropout, c.attention_dropout, c.activation,
                         norm_first=False, eps=c.layer_norm_eps)
            for _ in range(c.num_layers))
        self.pooler = nn.Linear(c.hidden_size, c.hidden_size) if pooler else None
        if pretraining_heads:
            self.mlm_head = MaskedLMHead(c, self.embeddings.token)
            self.nsp_head = nn.Linear(c.hidden_size, 2)
        else:
            self.mlm_head = self.nsp_head = None
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        """BERT's initialisation: N(0, 0.02) weights, zero biases, unit LayerNorm."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            nn.init.zeros_(module.weight[module.padding_idx])
        if isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def forward(self, input_ids: Tensor, token_type_ids: Tensor | None = None,
                attention_mask: Tensor | None = None, output_hidden_states: bool = False) -> BertOutput:
        """input_ids, token_type_ids, attention_mask: (B, T); attention_mask is 1 for real tokens, 0 for padding."""
        x = self.embeddings(input_ids, token_type_ids)                              # (B, T, D)
        states = [x] if output_hidden_states else None
        x = run_layers(self.layers, x, padding_mask(attention_mask),
                       checkpointing=self.config.activation_checkpointing and self.training, all_states=states)
        pooled = torch.tanh(self.pooler(x[:, 0])) if self.pooler is not None else None   # (B, D) from [CLS]
        return BertOutput(x, pooled, tuple(states) if states is not None else None)

    def mlm_logits(self, hidden: Tensor) -> Tensor:
        """(..., D) hidden states of masked positions -> (..., V) vocabulary logits."""
        return self.mlm_head(hidden)

    def nsp_logits(self, pooled: Tensor) -> Tensor:
        """(B, D) pooled [CLS] -> (B, 2): is-next, not-next."""
        return self.nsp_head(pooled)


LAYER_COMBINATIONS = ("embeddings", "first", "last", "second_to_last", "sum_last_four", "concat_last_four")


def combine_layers(hidden_states: tuple[Tensor, ...], how: str) -> Tensor:
    """Feature-based BERT (Devlin et al. 2019, table 7): which layers' activations to use as features.

    hidden_states: embeddings output then every layer's, each (B, T, D). Returns (B, T, D), or (B, T, 4D) for
    the concatenation of the last four layers.
    """
    if how.endswith("_four") and len(hidden_states) < 5:
        raise ValueError(f"layer combination {how!r} needs at least 4 layers, the model has {len(hidden_states) - 1}")
    if how == "embeddings":
        return hidden_states[0]
    if how == "first":
        return hidden_states[1]
    if how == "last":
        return hidden_states[-1]
    if how == "second_to_last":
        return hidden_states[-2]
    if how == "sum_last_four":
        return torch.stack(hidden_states[-4:]).sum(0)
    if how == "concat_last_four":
        return torch.cat(hidden_states[-4:], dim=-1)
    raise ValueError(f"unknown layer combination {how!r}: expected one of {LAYER_COMBINATIONS}")


def combined_width(config: BertConfig, how: str) -> int:
    return 4 * config.hidden_size if how == "concat_last_four" else config.hidden_size
