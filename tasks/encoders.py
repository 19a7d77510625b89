"""Where a BERT task's encoder comes from: a Hugging Face directory or hub name, or the encoder inside any of our
own checkpoints (every BERT task keeps it under `bert.*`), so one task can start from another's model."""
from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Optional

from safetensors import SafetensorError

from data.errors import ConfigError, check_fields
from modeling import BERT, BertConfig
from modeling.hf import load_bert
from tasks.checkpoint import blueprint, read_checkpoint

log = logging.getLogger(__name__)


def bert_config(fields: dict, overrides: Optional[dict] = None, source: str = "model.config") -> BertConfig:
    """A BertConfig from `fields` updated with `overrides`; an unknown field is a one-line ConfigError."""
    merged = {**fields, **(overrides or {})}
    check_fields(BertConfig, merged, source, "BERT setting")
    return BertConfig(**merged)


def load_encoder(pretrained: str, pooler: bool, overrides: Optional[dict] = None,
                 pretraining_heads: bool = False) -> tuple[BERT, Optional[str]]:
    """(BERT, the tokenizer stored with it or None). Encoder weights missing from a checkpoint are an error; a missing
    pooler or missing pretraining heads are initialised and named in a warning. `overrides` replace config fields
    that do not change the weights' shapes (dropout)."""
    if Path(pretrained).suffix != ".ckpt":
        bert_config({}, overrides)                      # names unknown fields before anything is read
        try:
            return load_bert(pretrained, pooler=pooler, pretraining_heads=pretraining_heads, overrides=overrides), None
        except (ValueError, KeyError, OSError, pickle.UnpicklingError, SafetensorError) as e:
            # another architecture, no weights, an unreadable or unsafe file
            raise ConfigError(f"{pretrained}: cannot load a BERT encoder: {str(e).splitlines()[0]}") from None
    ckpt = read_checkpoint(pretrained)
    bp = blueprint(ckpt, pretrained)
    if bp.model_kind != "bert":
        raise ConfigError(f"{pretrained}: a {bp.task!r} checkpoint holds a {bp.model_kind}, not a BERT encoder")
    bert = BERT(bert_config(bp.model_config, overrides, pretrained), pooler=pooler, pretraining_heads=pretraining_heads)
    state = {k.removeprefix("bert."): v for k, v in ckpt["state_dict"].items() if k.startswith("bert.")}
    wanted = bert.state_dict()
    state = {k: v for k, v in state.items() if k in wanted}
    missing = [k for k in wanted if k not in state]
    encoder_missing = [k for k in missing if not k.startswith(("pooler.", "mlm_head.", "nsp_head."))]
    if encoder_missing:
        raise ConfigError(f"{pretrained}: encoder weights missing from the checkpoint: {', '.join(encoder_missing[:5])}")
    if missing:
        log.warning("%s: initialised (not in the checkpoint): %s", pretrained, ", ".join(missing))
    bert.load_state_dict(state, strict=False)
    bert.load_report = {"initialised": missing, "ignored": []}
    return bert, bp.tokenizer


def new_encoder(hp, data, pooler: bool, pretraining_heads: bool = False) -> BERT:
    """The BERT a new run of a BERT task starts from: `hp.pretrained` (whose tokenizer becomes the data's when
    data.tokenizer is not set) with `hp.config` as overrides, or `hp.config` from scratch (the vocabulary size from
    the data's tokenizer); checked against the data's tokenizer and max_length."""
    if hp.pretrained:
        bert, stored_tokenizer = load_encoder(hp.pretrained, pooler, hp.config, pretraining_heads)
        data.default_tokenizer(stored_tokenizer, hp.pretrained)
    elif hp.config:
        data.default_tokenizer(None, None)
        if data.tokenizer is None:
            raise ConfigError("a model from scratch (model.config) needs data.tokenizer")
        config = bert_config({"vocab_size": data.tokenizer.get_vocab_size(), **hp.config})
        bert = BERT(config, pooler=pooler, pretraining_heads=pretraining_heads)
    else:
        raise ConfigError("set model.pretrained (a BERT directory, hub name or one of our checkpoints) or model.config "
                          "(BertConfig fields, a model from scratch)")
    vocab = data.tokenizer.get_vocab_size()
    if vocab > bert.config.vocab_size:
        raise ConfigError(f"the tokenizer has {vocab} tokens but the model's vocabulary has {bert.config.vocab_size}")
    return bert
