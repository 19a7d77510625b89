"""Hugging Face interop: load BERT and GPT-2 checkpoint directories into our models and write ours back.

A checkpoint directory holds `config.json` and `model.safetensors` (or `pytorch_model.bin`, read with
`weights_only=True`). Names are mapped explicitly, one table per model; anything our model has that the file
lacks is initialised and reported by name, anything the file has that we do not use is reported too.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .bert import BERT, BertConfig
from .gpt import GPT, GPTConfig

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
    if (directory / "model.safetensors").exists():
        return load_file(str(directory / "model.safetensors"))
    if (directory / "pytorch_model.bin").exists():
        return torch.load(directory / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{directory}: no model.safetensors or pytorch_model.bin")


def _load_mapped(model: nn.Module, ours: dict[str, Tensor], ignored: list[str], source: str) -> nn.Module:
    result = model.load_state_dict(ours, strict=False)
    missing = [k for k in result.missing_keys]
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


def bert_state_to_hf(model: BERT) -> dict[str, Tensor]:
    ours = model.state_dict()
    heads = model.mlm_head is not None
    prefix = "bert." if heads else ""
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


def save_bert(model: BERT, directory: str | Path) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(
        json.dumps(bert_config_to_hf(model.config, model.mlm_head is not None), indent=2))
    save_file(bert_state_to_hf(model), str(directory / "model.safetensors"), metadata={"format": "pt"})
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
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(gpt_config_to_hf(model.config), indent=2))
    ours = model.state_dict()
    hf = {("" if hf_name.startswith("lm_head.") else "transformer.") + hf_name:
          (ours[our_name].t() if conv else ours[our_name]).contiguous()
          for hf_name, our_name, conv in _gpt_names(model.config.num_layers, model.config.tie_embeddings)}
    save_file(hf, str(directory / "model.safetensors"), metadata={"format": "pt"})
    return directory
