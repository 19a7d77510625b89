"""Where a task's BERT encoder comes from: a Hugging Face directory or hub name, or the encoder inside one of our
own `.ckpt` files (a classify checkpoint keeps it under `backbone.*`, a ner checkpoint under `bert.*`), so one
task can start from another's fine-tuned model."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch

from data.errors import ConfigError
from modeling import BERT, BertConfig
from modeling.hf import load_bert

log = logging.getLogger(__name__)

_PREFIXES = ("backbone.", "bert.")
_HEADS = ("mlm_head.", "nsp_head.")


def load_bert_encoder(pretrained: str, pooler: bool, dropout: float | None = None) -> tuple[BERT, str | None]:
    """(BERT, the tokenizer JSON stored in the checkpoint or None). Encoder weights missing from a checkpoint are
    an error; a missing pooler (a ner checkpoint has none) is initialised and named in a warning. `dropout`, if
    given, replaces the checkpoint's hidden and attention dropout."""
    path = Path(pretrained)
    if path.suffix != ".ckpt":
        return load_bert(pretrained, pooler=pooler, dropout=dropout), None
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    config = ckpt.get("backbone_config") or ckpt.get("hyper_parameters", {}).get("bert_config")
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: no BERT config in this checkpoint (backbone_config or hyper_parameters.bert_config)")
    fields = {f.name for f in dataclasses.fields(BertConfig)}
    config = {k: v for k, v in config.items() if k in fields}
    if dropout is not None:
        config.update(dropout=dropout, attention_dropout=dropout)
    bert = BERT(BertConfig(**config), pooler=pooler)
    for prefix in _PREFIXES:
        state = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
        if state:
            break
    else:
        raise ConfigError(f"{path}: no encoder weights ({' or '.join(p + '*' for p in _PREFIXES)}) in its state_dict")
    wanted = bert.state_dict()
    state = {k: v for k, v in state.items() if k in wanted and not k.startswith(_HEADS)}
    missing = [k for k in wanted if k not in state]
    encoder_missing = [k for k in missing if not k.startswith("pooler.")]
    if encoder_missing:
        raise ConfigError(f"{path}: encoder weights missing from the checkpoint: {', '.join(encoder_missing[:5])}")
    if missing:
        log.warning("%s: initialised (not in the checkpoint): %s", path, ", ".join(missing))
    bert.load_state_dict(state, strict=False)
    return bert, ckpt.get("tokenizer_json")
