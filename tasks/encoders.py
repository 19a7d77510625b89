"""Where a BERT task's encoder comes from: a Hugging Face directory or hub name, or the encoder inside any of our
own checkpoints (every BERT task keeps it under `bert.*`), so one task can start from another's model."""
from __future__ import annotations

import dataclasses
import logging
import pickle
from pathlib import Path
from typing import Optional

from safetensors import SafetensorError

from data.errors import ConfigError, check_fields, check_overrides
from data.tokenization import load_tokenizer, tokenizer_from_str
from modeling import BERT, BertConfig
from modeling.hf import bert_config_from_hf, load_bert, read_config, resolve_checkpoint_dir
from tasks.checkpoint import blueprint, read_checkpoint

log = logging.getLogger(__name__)
TUNABLE = ("dropout", "attention_dropout", "activation_checkpointing")   # what model.config may change in a pretrained


def bert_config(fields: dict, overrides: Optional[dict] = None, source: str = "model.config") -> BertConfig:
    """A BertConfig from `fields` updated with `overrides`; an unknown field is a one-line ConfigError."""
    merged = {**fields, **(overrides or {})}
    check_fields(BertConfig, merged, source, "BERT setting")
    return BertConfig(**merged)


def load_encoder(pretrained: str, pooler: bool, overrides: Optional[dict] = None,
                 pretraining_heads: bool = False) -> tuple[BERT, Optional[str]]:
    """(BERT, the tokenizer stored with it or None). Encoder weights missing from a checkpoint are an error; a missing
    pooler or missing pretraining heads are initialised and named in a warning. `overrides` may change the TUNABLE
    fields only: any other that differs from the pretrained model's is a one-line ConfigError."""
    if Path(pretrained).suffix != ".ckpt":
        bert_config({}, overrides)                      # names unknown fields before anything is read
        try:
            directory = resolve_checkpoint_dir(pretrained)          # a hub name is fetched once, here
            check_overrides(dataclasses.asdict(bert_config_from_hf(read_config(directory))), overrides, pretrained,
                            TUNABLE)
            return load_bert(directory, pooler=pooler, pretraining_heads=pretraining_heads, overrides=overrides), None
        except ConfigError:
            raise
        except (ValueError, KeyError, OSError, pickle.UnpicklingError, SafetensorError) as e:
            # another architecture, no weights, an unreadable or unsafe file
            raise ConfigError(f"{pretrained}: cannot load a BERT encoder: {str(e).splitlines()[0]}") from None
    ckpt = read_checkpoint(pretrained)
    bp = blueprint(ckpt, pretrained)
    if bp.model_kind != "bert":
        raise ConfigError(f"{pretrained}: a {bp.task!r} checkpoint holds a {bp.model_kind}, not a BERT encoder")
    check_overrides(bp.model_config, overrides, pretrained, TUNABLE)
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
        if data.tokenizer is not None:                  # configured: it must be the pretrained model's own
            check_vocabulary(data.tokenizer, stored_tokenizer, hp.pretrained)
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


def check_vocabulary(tokenizer, stored: Optional[str], pretrained: str) -> None:
    """The data's tokenizer must be the pretrained model's own (stored in our checkpoint, or in its directory) when it
    has one: other token ids would index other rows of the embedding matrix, and train without an error."""
    try:
        own = tokenizer_from_str(stored) if stored else load_tokenizer(pretrained)
    except (FileNotFoundError, ValueError, OSError):
        return                                          # the pretrained model comes without a tokenizer
    if tokenizer.get_vocab() != own.get_vocab():
        raise ConfigError(f"data.tokenizer: not the vocabulary of {pretrained} ({tokenizer.get_vocab_size()} tokens, "
                          f"its own has {own.get_vocab_size()}); leave data.tokenizer unset (null) to use its own")
