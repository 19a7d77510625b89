"""The encoder-decoder Transformer of "Attention Is All You Need" (Vaswani et al. 2017), and its warm start from a
pretrained BERT (Rothe et al. 2020, "Leveraging Pre-trained Checkpoints for Sequence Generation Tasks")."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from torch import Tensor, nn

from .attention import KVCache, ProjectedMemory, padding_mask
from .bert import BERT
from .blocks import Block, DecoderBlock, run_layers
from .copy import CopySource, PointerGenerator
from .embeddings import BertEmbeddings, TransformerEmbedding
from .losses import linear_cross_entropy, smoothed_nll

EMBEDDINGS = ("sinusoidal", "bert")


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
    # "sinusoidal": token embedding × √d_model + sinusoidal positions (the paper); "bert": token + learned position
    # (+ segment 0) embeddings, then LayerNorm, as BERT's, so that a BERT's weights can start the model
    embeddings: str = "sinusoidal"
    # copy words from the source: a pointer-generator output layer (modeling/copy.py); needs share_embeddings
    copy: bool = False


def embedding_layer(c: TransformerConfig, vocab_size: int) -> nn.Module:
    """The input embedding the config names; both kinds take `(ids, offset=...)` and keep the table in `.token`."""
    if c.embeddings == "sinusoidal":
        return TransformerEmbedding(vocab_size, c.hidden_size, c.max_positions, c.dropout, c.pad_token_id)
    if c.embeddings == "bert":          # one segment: BERT reads a single text as segment 0
        return BertEmbeddings(vocab_size, c.hidden_size, c.max_positions, 1, c.dropout, c.layer_norm_eps,
                              c.pad_token_id)
    raise ValueError(f"unknown embeddings {c.embeddings!r}: expected one of {', '.join(EMBEDDINGS)}")


class Transformer(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = c = config
        if c.share_embeddings and c.src_vocab_size != c.tgt_vocab_size:
            raise ValueError("share_embeddings needs src_vocab_size == tgt_vocab_size")
        if c.copy and not c.share_embeddings:
            raise ValueError("copy needs share_embeddings: the copied ids are source ids")
        self.tgt_embed = embedding_layer(c, c.tgt_vocab_size)
        self.src_embed = self.tgt_embed if c.share_embeddings else embedding_layer(c, c.src_vocab_size)
        layer_args = (c.hidden_size, c.num_heads, c.ffn_size, c.dropout, c.attention_dropout, c.activation,
                      c.norm_first, c.layer_norm_eps, c.bias)
        self.encoder = nn.ModuleList(Block(*layer_args) for _ in range(c.num_encoder_layers))
        self.decoder = nn.ModuleList(DecoderBlock(*layer_args) for _ in range(c.num_decoder_layers))
        # pre-norm stacks end un-normalised: a final LayerNorm closes each
        final_norm = lambda: nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps, bias=c.bias)  # noqa: E731
        self.encoder_norm = final_norm() if c.norm_first else nn.Identity()
        self.decoder_norm = final_norm() if c.norm_first else nn.Identity()
        self.copy = PointerGenerator(c.hidden_size) if c.copy else None
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def encode(self, src_ids: Tensor, src_mask: Tensor | None = None) -> Tensor:
        """(B, S) source ids, (B, S) 1 = real token -> (B, S, D) memory."""
        x = self.src_embed(src_ids)
        x = run_layers(self.encoder, x, padding_mask(src_mask),
                       checkpointing=self.config.activation_checkpointing and self.training)
        return self.encoder_norm(x)

    def decoder_states(self, tgt_ids: Tensor, memory: Tensor | ProjectedMemory, src_mask: Tensor | None = None,
                       cache: list[KVCache] | None = None) -> Tensor:
        """(B, T) target ids so far, the (B, S, D) memory (or its projected keys and values) -> (B, T, D) states."""
        offset = cache[0].length if cache else 0
        x = self.tgt_embed(tgt_ids, offset=offset)
        x = run_layers(self.decoder, x, memory, padding_mask(src_mask), caches=cache,
                       checkpointing=self.config.activation_checkpointing and self.training)
        return self.decoder_norm(x)

    def output(self, states: Tensor, source: CopySource | None = None) -> Tensor:
        """(B, T, D) decoder states -> (B, T, V) next-token scores: the logits of the output layer (tied to the
        embedding), or with `copy` the log-probabilities of the pointer-generator mixture over `source`."""
        logits = states @ self.tgt_embed.token.weight.t()
        return logits if self.copy is None else self.copy(states, logits, source)

    def copy_source(self, memory: Tensor, src_ids: Tensor, src_mask: Tensor | None = None) -> CopySource | None:
        """What the copy layer reads of a batch of sources; None for a model without it."""
        return None if self.copy is None else self.copy.source(memory, src_ids, src_mask)

    def decode(self, tgt_ids: Tensor, memory: Tensor | ProjectedMemory, src_mask: Tensor | None = None,
               cache: list[KVCache] | None = None, source: CopySource | None = None) -> Tensor:
        """(B, T) target ids so far, (B, S, D) memory -> (B, T, V) next-token scores (`output`)."""
        return self.output(self.decoder_states(tgt_ids, memory, src_mask, cache), source)

    def forward(self, src_ids: Tensor, tgt_ids: Tensor, src_mask: Tensor | None = None) -> Tensor:
        memory = self.encode(src_ids, src_mask)
        return self.decode(tgt_ids, memory, src_mask, source=self.copy_source(memory, src_ids, src_mask))

    def loss(self, src_ids: Tensor, tgt_in: Tensor, tgt_out: Tensor, src_mask: Tensor | None = None,
             label_smoothing: float = 0.0) -> Tensor:
        """Mean cross-entropy (label-smoothed) of `tgt_out` (B, T) after reading `tgt_in` (B, T), over the target
        tokens that are not padding. Without copying only those positions are projected onto the vocabulary, chunk
        by chunk (losses.linear_cross_entropy): the (B, T, V) logits are never held. With copying the mixture needs
        each position's own source, so the (B, T, V) log-probabilities are formed and the scored rows taken."""
        memory = self.encode(src_ids, src_mask)                                              # (B, S, D)
        states = self.decoder_states(tgt_in, memory, src_mask)                               # (B, T, D)
        scored = tgt_out != self.config.pad_token_id                                         # (B, T)
        if self.copy is not None:
            log_probs = self.output(states, self.copy_source(memory, src_ids, src_mask))     # (B, T, V)
            return smoothed_nll(log_probs[scored], tgt_out[scored], label_smoothing)
        return linear_cross_entropy(states[scored], self.tgt_embed.token.weight, tgt_out[scored],
                                    label_smoothing=label_smoothing)

    def new_cache(self, batch_size: int, max_len: int) -> list[KVCache]:
        c = self.config
        w = self.tgt_embed.token.weight
        return [KVCache(batch_size, c.num_heads, max_len, c.hidden_size // c.num_heads, w.dtype, w.device)
                for _ in self.decoder]

    def decoder_for(self, memory: Tensor, src_mask: Tensor | None = None,
                    src_ids: Tensor | None = None) -> "BoundDecoder":
        """The decoder with its encoder output fixed, in the shape `generation` expects (a copying model also needs
        the (B, S) source ids)."""
        if self.copy is not None and src_ids is None:
            raise ValueError("a copying model decodes with its source ids: decoder_for(memory, src_mask, src_ids)")
        return BoundDecoder(self, memory, src_mask, src_ids)


class BoundDecoder:
    """`decoder(ids, cache=...)` and `new_cache(...)` over a fixed memory. The memory is projected to every decoder
    layer's cross-attention keys and values once, here, and each step only reads them. Beam search asks for a cache
    of batch × beam rows: the keys, values and mask are then repeated per beam. Its reordering of the cache never
    has to move them, since the rows of one prompt's beams hold the same memory."""

    def __init__(self, model: Transformer, memory: Tensor, src_mask: Tensor | None, src_ids: Tensor | None = None):
        self.model, self.src_mask = model, src_mask
        self.source = model.copy_source(memory, src_ids, src_mask)
        self.memory = ProjectedMemory.project(memory, [layer.cross_attn for layer in model.decoder])
        self.rows = memory.size(0)

    def new_cache(self, batch_size: int, max_len: int) -> list[KVCache]:
        if batch_size != self.rows:                 # beam search: one copy of the memory per beam
            repeat = batch_size // self.rows
            self.memory = self.memory.repeat_interleave(repeat)
            if self.src_mask is not None:
                self.src_mask = self.src_mask.repeat_interleave(repeat, dim=0)
            if self.source is not None:
                self.source = self.source.repeat_interleave(repeat)
            self.rows = batch_size
        return self.model.new_cache(batch_size, max_len)

    def __call__(self, tgt_ids: Tensor, cache: list[KVCache] | None = None) -> Tensor:
        return self.model.decode(tgt_ids, self.memory, self.src_mask, cache, self.source)


# ---------------------------------------------------------------------------------------------------------
# Warm start from a pretrained BERT (Rothe et al. 2020)
# ---------------------------------------------------------------------------------------------------------
def config_from_bert(bert: BERT, **overrides) -> TransformerConfig:
    """The encoder-decoder of a BERT's shape: its width, heads, FFN, activation, LayerNorm epsilon, positions, dropout
    and vocabulary (shared by source and target), BERT-style embeddings, post-norm, as many decoder layers as encoder
    layers; `overrides` change any field that keeps the BERT's weights loadable (e.g. num_decoder_layers, dropout)."""
    b = bert.config
    config = TransformerConfig(
        src_vocab_size=b.vocab_size, tgt_vocab_size=b.vocab_size, hidden_size=b.hidden_size,
        num_encoder_layers=b.num_layers, num_decoder_layers=b.num_layers, num_heads=b.num_heads, ffn_size=b.ffn_size,
        dropout=b.dropout, attention_dropout=b.attention_dropout, activation=b.activation,
        max_positions=b.max_positions, share_embeddings=True, norm_first=False, layer_norm_eps=b.layer_norm_eps,
        pad_token_id=b.pad_token_id, embeddings="bert")
    return dataclasses.replace(config, **overrides)


def bert_weight_names(model: Transformer, bert: BERT, decoder: bool) -> dict[str, str]:
    """{our parameter: the BERT parameter it starts from}. The embeddings (both sides, when separate) and every encoder
    layer come from the BERT; with `decoder`, decoder layer i also takes BERT layer i's self-attention (now causal),
    feed-forward and their LayerNorms, while its cross-attention, which BERT does not have, starts new."""
    names = {}
    for side in ["tgt_embed"] + (["src_embed"] if model.src_embed is not model.tgt_embed else []):
        for part in ("token.weight", "position.weight", "segment.weight", "norm.weight", "norm.bias"):
            names[f"{side}.{part}"] = f"embeddings.{part}"
    bert_layer = [name for name, _ in bert.layers[0].named_parameters()]
    for i in range(model.config.num_encoder_layers):
        names.update({f"encoder.{i}.{n}": f"layers.{i}.{n}" for n in bert_layer})
    if decoder:
        renamed = {"attn_residual.": "self_residual."}           # BERT's one attention is the decoder's self-attention
        for i in range(model.config.num_decoder_layers):
            for n in bert_layer:
                ours = next((n.replace(a, b) for a, b in renamed.items() if n.startswith(a)), n)
                names[f"decoder.{i}.{ours}"] = f"layers.{i}.{n}"
    return names


def load_bert_weights(model: Transformer, bert: BERT, decoder: bool = False) -> dict[str, list[str]]:
    """Copy a BERT's weights into an encoder-decoder built by `config_from_bert` (see `bert_weight_names`).
    Returns {"loaded": our parameters that took BERT weights, "new": those that start from their initialisation}."""
    c = model.config
    if c.embeddings != "bert" or c.hidden_size != bert.config.hidden_size:
        raise ValueError("the model needs BERT embeddings of the BERT's width (build it with config_from_bert)")
    for kind, layers in (("encoder", c.num_encoder_layers), ("decoder", c.num_decoder_layers if decoder else 0)):
        if layers > bert.config.num_layers:
            raise ValueError(f"{layers} {kind} layers, but the BERT has only {bert.config.num_layers} to start them")
    names = bert_weight_names(model, bert, decoder)
    theirs = bert.state_dict()
    state = {ours: theirs[name][:1] if name.endswith("segment.weight") else theirs[name]    # segment 0: one text
             for ours, name in names.items()}
    model.load_state_dict(state, strict=False)       # the rest (a shared embedding's second name too) stays as is
    return {"loaded": list(names), "new": [n for n, _ in model.named_parameters() if n not in names]}
