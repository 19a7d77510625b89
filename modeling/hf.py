"""Hugging Face interop: load BERT and GPT-2 checkpoint directories into our models and write ours back.

A checkpoint directory holds `config.json` and `model.safetensors` (or `pytorch_model.bin`, read with
`weights_only=True`). Names are mapped explicitly, one table per model; anything our model has that the file
lacks is initialised and reported by name, anything the file has that we do not use is reported too.

Exports `transformers` loads and computes the same function with:
    save_bert         BertModel, BertForPreTraining (MLM + NSP heads), or with a task head
                      BertForSequenceClassification, BertForTokenClassification, BertForQuestionAnswering
    save_gpt2         GPT2LMHeadModel (a `bias=False` model gets zero biases: the same function)
    save_transformer  MarianMTModel (the post-norm encoder-decoder; see `marian_order`)
"""
from __future__ import annotations

import dataclasses
import json
import logging
import pickle
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .bert import BERT, BertConfig
from .gpt import GPT, GPTConfig
from .transformer import Transformer, TransformerConfig

log = logging.getLogger(__name__)

_HF_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}
_OUR_ACTIVATIONS = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu"}


def resolve_checkpoint_dir(name_or_path: str | Path) -> Path:
    """A local directory as is; otherwise a Hugging Face hub name, downloaded when online."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ValueError(f"{path}: expected a checkpoint directory (config.json + weights), got a file")
    try:
        from huggingface_hub import snapshot_download
        return Path(snapshot_download(str(name_or_path), allow_patterns=[
            "config.json", "model.safetensors", "pytorch_model.bin", "vocab.txt", "tokenizer.json",
            "vocab.json", "merges.txt"]))
    except Exception as err:  # offline, unknown repo, ...
        raise FileNotFoundError(f"{name_or_path}: not a local directory, and not loadable from the hub "
                                f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None


def read_config(directory: Path) -> dict:
    path = directory / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing config.json")
    return json.loads(path.read_text())


def read_weights(directory: Path) -> dict[str, Tensor]:
    """The weights file's tensors; a file that is unreadable, or a pickle holding code, is a ValueError naming it."""
    safetensors, pickled = directory / "model.safetensors", directory / "pytorch_model.bin"
    if safetensors.exists():
        try:
            return load_file(str(safetensors))
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
            raise ValueError(f"{safetensors}: not a readable safetensors file ({str(e).splitlines()[0]})") from None
    if pickled.exists():
        try:
            return torch.load(pickled, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            raise ValueError(f"{pickled}: holds Python objects that could run code, refused (weights_only=True)") \
                from None
        except Exception as e:  # noqa: BLE001 - a truncated or foreign file breaks in many ways
            raise ValueError(f"{pickled}: not a readable weights file ({str(e).splitlines()[0]})") from None
    raise FileNotFoundError(f"{directory}: no model.safetensors or pytorch_model.bin")


def _load_mapped(model: nn.Module, ours: dict[str, Tensor], ignored: list[str], source: str) -> nn.Module:
    result = model.load_state_dict(ours, strict=False)
    # a tied weight has several names (BERT's MLM decoder is the word embedding): it is loaded if one of them is
    tensors = model.state_dict(keep_vars=True)
    loaded = {id(tensors[k]) for k in ours if k in tensors}
    missing = [k for k in result.missing_keys if id(tensors[k]) not in loaded]
    if missing:
        log.warning("%s: not in the checkpoint, initialised from scratch: %s", source, ", ".join(missing))
    if ignored:
        log.warning("%s: checkpoint weights not used: %s", source, ", ".join(ignored))
    model.load_report = {"initialised": missing, "ignored": ignored}
    return model


# ---------------------------------------------------------------------------------------------------- BERT

def bert_config_from_hf(hf: dict) -> BertConfig:
    kind = hf.get("model_type", "bert")
    if kind not in ("bert", "roberta") or "hidden_size" not in hf:
        raise ValueError(f"config.json describes a {kind!r} model, not BERT")
    return BertConfig(
        vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"], num_layers=hf["num_hidden_layers"],
        num_heads=hf["num_attention_heads"], ffn_size=hf["intermediate_size"],
        max_positions=hf.get("max_position_embeddings", 512), type_vocab_size=hf.get("type_vocab_size", 2),
        dropout=hf.get("hidden_dropout_prob", 0.1), attention_dropout=hf.get("attention_probs_dropout_prob", 0.1),
        layer_norm_eps=hf.get("layer_norm_eps", 1e-12), pad_token_id=hf.get("pad_token_id") or 0,
        activation=_HF_ACTIVATIONS[hf.get("hidden_act", "gelu")])


def bert_config_to_hf(c: BertConfig, heads: bool) -> dict:
    return {
        "architectures": ["BertForPreTraining" if heads else "BertModel"], "model_type": "bert",
        "vocab_size": c.vocab_size, "hidden_size": c.hidden_size, "num_hidden_layers": c.num_layers,
        "num_attention_heads": c.num_heads, "intermediate_size": c.ffn_size, "hidden_act": _OUR_ACTIVATIONS[c.activation],
        "hidden_dropout_prob": c.dropout, "attention_probs_dropout_prob": c.attention_dropout,
        "max_position_embeddings": c.max_positions, "type_vocab_size": c.type_vocab_size,
        "initializer_range": 0.02, "layer_norm_eps": c.layer_norm_eps, "pad_token_id": c.pad_token_id,
        "position_embedding_type": "absolute",
    }


# (HF name, our name) for everything that maps one to one; {i} is the layer index.
_BERT_NAMES = [
    ("embeddings.word_embeddings.weight", "embeddings.token.weight"),
    ("embeddings.position_embeddings.weight", "embeddings.position.weight"),
    ("embeddings.token_type_embeddings.weight", "embeddings.segment.weight"),
    ("embeddings.LayerNorm.weight", "embeddings.norm.weight"),
    ("embeddings.LayerNorm.bias", "embeddings.norm.bias"),
    ("pooler.dense.weight", "pooler.weight"),
    ("pooler.dense.bias", "pooler.bias"),
    ("cls.predictions.transform.dense.weight", "mlm_head.dense.weight"),
    ("cls.predictions.transform.dense.bias", "mlm_head.dense.bias"),
    ("cls.predictions.transform.LayerNorm.weight", "mlm_head.norm.weight"),
    ("cls.predictions.transform.LayerNorm.bias", "mlm_head.norm.bias"),
    ("cls.predictions.bias", "mlm_head.bias"),
    ("cls.seq_relationship.weight", "nsp_head.weight"),
    ("cls.seq_relationship.bias", "nsp_head.bias"),
]
_BERT_LAYER_NAMES = [
    ("attention.output.dense", "self_attn.out_proj"),
    ("attention.output.LayerNorm", "attn_residual.norm"),
    ("intermediate.dense", "ffn.up"),
    ("output.dense", "ffn.down"),
    ("output.LayerNorm", "ffn_residual.norm"),
]
_BERT_SKIP = re.compile(r"(position_ids|cls\.predictions\.decoder\.(weight|bias))$")


def _normalise_bert_key(key: str) -> str:
    key = key.removeprefix("bert.")
    return key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")


def bert_state_from_hf(hf_state: dict[str, Tensor], num_layers: int) -> tuple[dict[str, Tensor], list[str]]:
    hf = {_normalise_bert_key(k): v for k, v in hf_state.items()}
    names = dict(_BERT_NAMES)
    for i in range(num_layers):
        for a, b in _BERT_LAYER_NAMES:
            for p in ("weight", "bias"):
                names[f"encoder.layer.{i}.{a}.{p}"] = f"layers.{i}.{b}.{p}"
    ours, used = {}, set()
    for hf_name, our_name in names.items():
        if hf_name in hf:
            ours[our_name] = hf[hf_name]
            used.add(hf_name)
    for i in range(num_layers):                 # separate W^Q, W^K, W^V -> one fused projection
        for p in ("weight", "bias"):
            qkv = [f"encoder.layer.{i}.attention.self.{n}.{p}" for n in ("query", "key", "value")]
            if all(k in hf for k in qkv):
                ours[f"layers.{i}.self_attn.qkv_proj.{p}"] = torch.cat([hf[k] for k in qkv], dim=0)
                used.update(qkv)
    ignored = sorted(k for k in hf if k not in used and not _BERT_SKIP.search(k))
    return ours, ignored


def bert_state_to_hf(model: BERT, prefix: str | None = None) -> dict[str, Tensor]:
    """Our BERT's weights under Hugging Face names; the encoder's under `prefix` (default: "bert." when the model has
    pre-training heads, as BertForPreTraining, else none, as BertModel)."""
    ours = model.state_dict()
    if prefix is None:
        prefix = "bert." if model.mlm_head is not None else ""
    hf = {}
    names = {b: a for a, b in _BERT_NAMES}
    for i in range(model.config.num_layers):
        for a, b in _BERT_LAYER_NAMES:
            for p in ("weight", "bias"):
                names[f"layers.{i}.{b}.{p}"] = f"encoder.layer.{i}.{a}.{p}"
    for our_name, tensor in ours.items():
        if our_name == "mlm_head.word_embeddings.weight":
            continue                                     # tied to the word embeddings
        if our_name.endswith("qkv_proj.weight") or our_name.endswith("qkv_proj.bias"):
            i, p = our_name.split(".")[1], our_name.rsplit(".", 1)[1]
            for n, part in zip(("query", "key", "value"), tensor.chunk(3, dim=0)):
                hf[f"{prefix}encoder.layer.{i}.attention.self.{n}.{p}"] = part.contiguous()
            continue
        hf_name = names[our_name]
        hf[hf_name if hf_name.startswith("cls.") else prefix + hf_name] = tensor.contiguous()
    return hf


def load_bert(name_or_path: str | Path, pooler: bool = True, pretraining_heads: bool = False,
              overrides: dict | None = None) -> BERT:
    """Our BERT from a Hugging Face directory or hub name. `overrides` replace config fields that do not change the
    weights' shapes, e.g. the dropout probabilities, which fine-tuning recipes choose on their own."""
    directory = resolve_checkpoint_dir(name_or_path)
    config = dataclasses.replace(bert_config_from_hf(read_config(directory)), **(overrides or {}))
    model = BERT(config, pooler=pooler, pretraining_heads=pretraining_heads)
    ours, ignored = bert_state_from_hf(read_weights(directory), config.num_layers)
    if not pooler:
        ignored += [k for k in ("pooler.weight", "pooler.bias") if ours.pop(k, None) is not None]
    if not pretraining_heads:
        ignored += sorted(k for k in list(ours) if k.startswith(("mlm_head.", "nsp_head.")) and ours.pop(k) is not None)
    return _load_mapped(model, ours, ignored, str(directory))


# transformers' BERT classes with a task head: the head's name in their state dict, and whether their encoder has
# the pooler (the sequence classifier reads the tanh-pooled [CLS]; the token and span classifiers read every position).
BERT_HEADS = {
    "BertForSequenceClassification": ("classifier", True),
    "BertForTokenClassification": ("classifier", False),
    "BertForQuestionAnswering": ("qa_outputs", False),
}


def save_bert(model: BERT, directory: str | Path, head: nn.Linear | None = None, architecture: str | None = None,
              labels: list[str] | None = None) -> Path:
    """Write `model` as a Hugging Face directory: BertModel, or BertForPreTraining when it has the MLM and NSP heads,
    or with a task `head` (a linear layer) the `architecture` of BERT_HEADS it forms, e.g. a span head
    Linear(hidden, 2) -> BertForQuestionAnswering (start, end logits). `labels` name the outputs (id2label); a
    sequence classifier with one output is a regression."""
    directory = Path(directory)
    config = bert_config_to_hf(model.config, model.mlm_head is not None)
    state = bert_state_to_hf(model)
    if head is not None:
        if architecture not in BERT_HEADS:
            raise ValueError(f"unknown BERT head class {architecture!r}: expected one of {sorted(BERT_HEADS)}")
        name, pooled = BERT_HEADS[architecture]
        if pooled and model.pooler is None:
            raise ValueError(f"{architecture} reads the pooled [CLS], and this model has no pooler")
        state = {k: v for k, v in bert_state_to_hf(model, prefix="bert.").items()
                 if pooled or not k.startswith("bert.pooler.")}
        state.update({f"{name}.{p}": t.detach().contiguous() for p, t in (("weight", head.weight), ("bias", head.bias))})
        names = labels or [f"LABEL_{i}" for i in range(head.out_features)]
        config.update(architectures=[architecture], num_labels=head.out_features,
                      id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
        if architecture == "BertForSequenceClassification" and head.out_features == 1:
            config["problem_type"] = "regression"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    return directory


# ---------------------------------------------------------------------------------------------------- GPT-2

def gpt_config_from_hf(hf: dict) -> GPTConfig:
    if hf.get("model_type", "gpt2") != "gpt2" or "n_embd" not in hf:
        raise ValueError(f"config.json describes a {hf.get('model_type')!r} model, not GPT-2")
    act = hf.get("activation_function", "gelu_new")
    if act not in _HF_ACTIVATIONS:
        raise ValueError(f"GPT-2 activation {act!r} is not supported (expected one of {sorted(_HF_ACTIVATIONS)})")
    if hf.get("n_inner") not in (None, 4 * hf["n_embd"]):
        raise ValueError(f"GPT-2 n_inner={hf['n_inner']} is not supported (expected 4 * n_embd)")
    return GPTConfig(vocab_size=hf["vocab_size"], max_positions=hf["n_positions"], num_layers=hf["n_layer"],
                     num_heads=hf["n_head"], hidden_size=hf["n_embd"], dropout=hf.get("resid_pdrop", 0.1),
                     bias=True, layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5), activation=_HF_ACTIVATIONS[act],
                     tie_embeddings=hf.get("tie_word_embeddings", True))


def gpt_config_to_hf(c: GPTConfig) -> dict:
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": c.vocab_size,
            "n_positions": c.max_positions, "n_ctx": c.max_positions, "n_embd": c.hidden_size, "n_layer": c.num_layers,
            "n_head": c.num_heads, "n_inner": None, "activation_function": _OUR_ACTIVATIONS[c.activation], "resid_pdrop": c.dropout,
            "embd_pdrop": c.dropout, "attn_pdrop": c.dropout, "layer_norm_epsilon": c.layer_norm_eps,
            "initializer_range": 0.02, "bos_token_id": c.vocab_size - 1, "eos_token_id": c.vocab_size - 1,
            "tie_word_embeddings": c.tie_embeddings}


_GPT_NAMES = [("wte.weight", "embeddings.token.weight"), ("wpe.weight", "embeddings.position.weight"),
              ("ln_f.weight", "final_norm.weight"), ("ln_f.bias", "final_norm.bias")]
# GPT-2 stores its linear layers as Conv1D, weight (in, out): transposed relative to nn.Linear.
_GPT_LAYER_NAMES = [("ln_1", "attn_residual.norm", False), ("attn.c_attn", "self_attn.qkv_proj", True),
                    ("attn.c_proj", "self_attn.out_proj", True), ("ln_2", "ffn_residual.norm", False),
                    ("mlp.c_fc", "ffn.up", True), ("mlp.c_proj", "ffn.down", True)]
_GPT_SKIP = re.compile(r"(attn\.bias|attn\.masked_bias|lm_head\.weight)$")


def _gpt_names(num_layers: int, tied: bool = True) -> list[tuple[str, str, bool]]:
    names = [(a, b, False) for a, b in _GPT_NAMES]
    if not tied:
        names.append(("lm_head.weight", "lm_head.weight", False))   # (V, D) in both, outside "transformer."
    for i in range(num_layers):
        for a, b, conv in _GPT_LAYER_NAMES:
            names.append((f"h.{i}.{a}.weight", f"layers.{i}.{b}.weight", conv))
            names.append((f"h.{i}.{a}.bias", f"layers.{i}.{b}.bias", False))
    return names


def load_gpt2(name_or_path: str | Path) -> GPT:
    directory = resolve_checkpoint_dir(name_or_path)
    config = gpt_config_from_hf(read_config(directory))
    model = GPT(config)
    hf = {k.removeprefix("transformer."): v for k, v in read_weights(directory).items()}
    ours, used = {}, set()
    for hf_name, our_name, conv in _gpt_names(config.num_layers, config.tie_embeddings):
        if hf_name in hf:
            ours[our_name] = hf[hf_name].t() if conv else hf[hf_name]
            used.add(hf_name)
    ignored = sorted(k for k in hf if k not in used and not _GPT_SKIP.search(k))
    return _load_mapped(model, ours, ignored, str(directory))


def save_gpt2(model: GPT, directory: str | Path) -> Path:
    """Write `model` as a GPT2LMHeadModel directory. GPT-2 always has biases: a `bias=False` model gets zero ones,
    which compute the same function; an untied LM head is written with tie_word_embeddings False."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(gpt_config_to_hf(model.config), indent=2))
    ours = model.state_dict()
    hf = {}
    for hf_name, our_name, conv in _gpt_names(model.config.num_layers, model.config.tie_embeddings):
        tensor = ours.get(our_name)
        if tensor is None:                                       # bias=False: the zero bias of this layer
            weight = ours[our_name.removesuffix(".bias") + ".weight"]
            tensor = weight.new_zeros(weight.size(0))
        hf[("" if hf_name.startswith("lm_head.") else "transformer.") + hf_name] = \
            (tensor.t() if conv else tensor).contiguous()
    save_file(hf, str(directory / "model.safetensors"), metadata={"format": "pt"})
    return directory


# ---------------------------------------------------------------------------------------------------- Marian

def marian_order(d_model: int) -> Tensor:
    """Marian's coordinate m holds our coordinate marian_order[m].

    Marian's sinusoidal table puts all the sines first and all the cosines after them (sin(pos·ω_k) at k,
    cos(pos·ω_k) at d/2 + k); ours interleaves them as the paper writes PE(pos, 2k) and PE(pos, 2k+1), with the same frequencies
    ω_k. The two tables differ by this permutation of the model dimensions, and a Transformer computes the same
    function when every matrix reading or writing the residual stream is permuted with it (LayerNorm's mean and
    variance do not depend on the order): that is how our weights become Marian's, exactly."""
    return torch.cat([torch.arange(0, d_model, 2), torch.arange(1, d_model, 2)])


def transformer_config_to_marian(c: TransformerConfig, decoder_start_token_id: int, eos_token_id: int) -> dict:
    return {"architectures": ["MarianMTModel"], "model_type": "marian", "is_encoder_decoder": True,
            "vocab_size": c.src_vocab_size, "decoder_vocab_size": c.tgt_vocab_size,
            "share_encoder_decoder_embeddings": c.share_embeddings, "tie_word_embeddings": True,
            "d_model": c.hidden_size, "encoder_layers": c.num_encoder_layers, "decoder_layers": c.num_decoder_layers,
            "encoder_attention_heads": c.num_heads, "decoder_attention_heads": c.num_heads,
            "encoder_ffn_dim": c.ffn_size, "decoder_ffn_dim": c.ffn_size,
            "activation_function": _OUR_ACTIVATIONS[c.activation], "dropout": c.dropout,
            "attention_dropout": c.attention_dropout, "activation_dropout": 0.0,
            "max_position_embeddings": c.max_positions, "scale_embedding": True, "init_std": 0.02,
            "pad_token_id": c.pad_token_id, "eos_token_id": eos_token_id, "decoder_start_token_id": decoder_start_token_id,
            "forced_eos_token_id": None}      # our decoding does not force </s> at max_new_tokens: nor does generate()


def transformer_state_to_marian(model: Transformer) -> dict[str, Tensor]:
    """Our encoder-decoder's weights under MarianMTModel's names, in Marian's order of the model dimensions."""
    ours, c = model.state_dict(), model.config
    order = marian_order(c.hidden_size)

    def reads(w: Tensor) -> Tensor:          # a matrix applied to the residual stream: permute its columns
        return w[:, order].contiguous()

    def writes(t: Tensor) -> Tensor:         # a matrix or bias adding to it, a LayerNorm parameter: permute entries
        return t[order].contiguous()

    def bias(name: str, size: int) -> Tensor:   # bias=False: zeros, the same function
        return ours[name] if name in ours else order.new_zeros(size, dtype=ours["tgt_embed.token.weight"].dtype)

    hf: dict[str, Tensor] = {}

    def attention(ours_prefix: str, hf_prefix: str, cross: bool) -> None:
        D = c.hidden_size
        if cross:
            parts = {"q": ours[f"{ours_prefix}.q_proj.weight"]}
            parts.update(zip("kv", ours[f"{ours_prefix}.kv_proj.weight"].chunk(2)))
            biases = {"q": bias(f"{ours_prefix}.q_proj.bias", D)}
            biases.update(zip("kv", bias(f"{ours_prefix}.kv_proj.bias", 2 * D).chunk(2)))
        else:
            parts = dict(zip("qkv", ours[f"{ours_prefix}.qkv_proj.weight"].chunk(3)))
            biases = dict(zip("qkv", bias(f"{ours_prefix}.qkv_proj.bias", 3 * D).chunk(3)))
        for n in "qkv":
            hf[f"{hf_prefix}.{n}_proj.weight"] = reads(parts[n])
            hf[f"{hf_prefix}.{n}_proj.bias"] = biases[n].contiguous()
        hf[f"{hf_prefix}.out_proj.weight"] = writes(ours[f"{ours_prefix}.out_proj.weight"])
        hf[f"{hf_prefix}.out_proj.bias"] = writes(bias(f"{ours_prefix}.out_proj.bias", D))

    def norm(ours_prefix: str, hf_prefix: str) -> None:
        hf[f"{hf_prefix}.weight"] = writes(ours[f"{ours_prefix}.weight"])
        hf[f"{hf_prefix}.bias"] = writes(bias(f"{ours_prefix}.bias", c.hidden_size))

    def ffn(ours_prefix: str, hf_prefix: str) -> None:
        hf[f"{hf_prefix}.fc1.weight"] = reads(ours[f"{ours_prefix}.up.weight"])
        hf[f"{hf_prefix}.fc1.bias"] = bias(f"{ours_prefix}.up.bias", c.ffn_size).contiguous()
        hf[f"{hf_prefix}.fc2.weight"] = writes(ours[f"{ours_prefix}.down.weight"])
        hf[f"{hf_prefix}.fc2.bias"] = writes(bias(f"{ours_prefix}.down.bias", c.hidden_size))

    if c.share_embeddings:
        hf["model.shared.weight"] = reads(ours["tgt_embed.token.weight"])
    else:
        hf["model.encoder.embed_tokens.weight"] = reads(ours["src_embed.token.weight"])
        hf["model.decoder.embed_tokens.weight"] = reads(ours["tgt_embed.token.weight"])
    for i in range(c.num_encoder_layers):
        attention(f"encoder.{i}.self_attn", f"model.encoder.layers.{i}.self_attn", cross=False)
        norm(f"encoder.{i}.attn_residual.norm", f"model.encoder.layers.{i}.self_attn_layer_norm")
        ffn(f"encoder.{i}.ffn", f"model.encoder.layers.{i}")
        norm(f"encoder.{i}.ffn_residual.norm", f"model.encoder.layers.{i}.final_layer_norm")
    for i in range(c.num_decoder_layers):
        attention(f"decoder.{i}.self_attn", f"model.decoder.layers.{i}.self_attn", cross=False)
        norm(f"decoder.{i}.self_residual.norm", f"model.decoder.layers.{i}.self_attn_layer_norm")
        attention(f"decoder.{i}.cross_attn", f"model.decoder.layers.{i}.encoder_attn", cross=True)
        norm(f"decoder.{i}.cross_residual.norm", f"model.decoder.layers.{i}.encoder_attn_layer_norm")
        ffn(f"decoder.{i}.ffn", f"model.decoder.layers.{i}")
        norm(f"decoder.{i}.ffn_residual.norm", f"model.decoder.layers.{i}.final_layer_norm")
    return hf


def save_transformer(model: Transformer, directory: str | Path, decoder_start_token_id: int,
                     eos_token_id: int) -> Path:
    """Write our encoder-decoder as a MarianMTModel directory (same logits). Marian is the post-norm Transformer
    with √d-scaled embeddings and sinusoidal positions; what it cannot express is refused: pre-norm layers (no
    transformers class has them with these positions and no embedding LayerNorm), BERT-style embeddings (a
    warm-started model: learned positions and a LayerNorm), a LayerNorm epsilon other than its fixed 1e-5, and a
    copy layer. The decoder starts from `decoder_start_token_id` (our <s>)."""
    check_marian(model.config)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = transformer_config_to_marian(model.config, decoder_start_token_id, eos_token_id)
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    save_file(transformer_state_to_marian(model), str(directory / "model.safetensors"), metadata={"format": "pt"})
    return directory


def check_marian(c: TransformerConfig) -> None:
    """A ValueError naming what of `c` a MarianMTModel cannot express (see save_transformer)."""
    if c.norm_first:
        raise ValueError("a pre-norm Transformer (norm_first) has no transformers class: MarianMTModel is post-norm")
    if c.embeddings != "sinusoidal":
        raise ValueError(f"{c.embeddings!r} embeddings (learned positions + LayerNorm): MarianMTModel adds sinusoids")
    if c.layer_norm_eps != 1e-5:
        raise ValueError(f"layer_norm_eps {c.layer_norm_eps}: MarianMTModel's LayerNorms use 1e-5")
    if c.copy:
        raise ValueError("copy (a pointer-generator output layer): MarianMTModel has none")
