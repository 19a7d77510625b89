"""`run.py <task> export --ckpt_path X --out DIR`: a checkpoint as a Hugging Face directory that `transformers`
loads and that computes the same outputs (config.json, model.safetensors, tokenizer files).

What each network becomes (the weights are written by modeling/hf.py):

    classify, pooling cls       BertForSequenceClassification: our tanh pooler, dropout and linear head are its forward
    classify, pooling mean/pair BertModel + head.safetensors: transformers has no class that pools this way
    ner, linear tagger          BertForTokenClassification. With `casing`, token_type_ids are each sub-token's casing
                                class (data.conll.CASING, 0 for [CLS]/[SEP]) and type_vocab_size is 6
    ner, BiLSTM tagger, or features from other than the last layer: BertModel + head.safetensors
    qa                          BertForQuestionAnswering (the span head: start and end logits)
    lm                          GPT2LMHeadModel
    any BERT with MLM + NSP heads (pretrain)  BertForPreTraining
    the encoder-decoder Transformer           MarianMTModel (post-norm; modeling.hf.save_transformer)

The task is read from the checkpoint's blueprint (tasks/checkpoint.py): the network is found in the state dict by
its kind, wherever the task keeps it, and HEADS says which transformers class a task's head forms (one line per
task). A BERT task without an entry exports its encoder (with its MLM + NSP heads if it has them), its other weights
in head.safetensors, and says so.

Tokenizer files: tokenizer.json (the checkpoint's own tokenizer) and tokenizer_config.json, plus vocab.txt for a
WordPiece vocabulary; a character-level lm vocabulary becomes a `tokenizers` WordLevel tokenizer over single
characters. The seq2seq tokenizer gains the post-processor that appends </s>, as our data does to every source.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from safetensors.torch import save_file
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from torch import Tensor, nn

from data.errors import ConfigError
from data.lm_tokenizer import EOT, TextTokenizer
from data.tokenization import tokenizer_from_str
from modeling import BERT, GPT, GPTConfig, Transformer, TransformerConfig
from modeling.hf import check_marian, save_bert, save_gpt2, save_transformer
from tasks.checkpoint import Blueprint, CheckpointError, blueprint, read_checkpoint
from tasks.encoders import bert_config


class VerbParser(argparse.ArgumentParser):
    """argparse for a `run.py <task> <verb>`: a bad command line is a ConfigError (one line, exit code 2)."""

    def error(self, message: str):
        raise ConfigError(f"{self.prog}: {message}")


# ---------------------------------------------------------------------------------------------------------
# The network inside a checkpoint
# ---------------------------------------------------------------------------------------------------------
# The first parameter of each kind of network: it locates the network in a task's state dict.
_FIRST = {"bert": "embeddings.token.weight", "gpt": "embeddings.token.weight", "transformer": "tgt_embed.token.weight"}


def network_prefix(state: dict[str, Tensor], kind: str) -> str:
    """Where a task keeps its network in its state dict ("bert.", "model.", ...)."""
    if kind not in _FIRST:
        raise CheckpointError(f"unknown model kind {kind!r}: expected one of {', '.join(_FIRST)}")
    found = sorted(k[:-len(_FIRST[kind])] for k in state if k.endswith(_FIRST[kind]))
    if len(found) != 1:
        raise CheckpointError(f"expected one {kind} network in the checkpoint, found {len(found)} ({found})")
    return found[0]


def network(bp: Blueprint, state: dict[str, Tensor]) -> nn.Module:
    """The checkpoint's BERT, GPT or Transformer with its trained weights, in eval mode. A BERT gets the pooler and
    pre-training heads the checkpoint holds."""
    prefix = network_prefix(state, bp.model_kind)
    weights = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if bp.model_kind == "bert":
        model = BERT(bert_config(bp.model_config), pooler="pooler.weight" in weights,
                     pretraining_heads="mlm_head.bias" in weights)
    elif bp.model_kind == "gpt":
        model = GPT(GPTConfig(**bp.model_config))
    else:
        model = Transformer(TransformerConfig(**bp.model_config))
    model.load_state_dict(weights)
    return model.eval()


# ---------------------------------------------------------------------------------------------------------
# Task heads
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Head:
    """A task's output layer as transformers sees it."""
    architecture: Optional[str]     # the BERT class this head forms (modeling.hf.BERT_HEADS); None: no class fits
    prefix: str                     # the head's parameters in the task's state dict
    note: str = ""                  # why no class fits


def classify_head(bp: Blueprint) -> Head:
    pooling = bp.settings["pooling"]
    if pooling == "cls":
        return Head("BertForSequenceClassification", "head.")
    reads = {"mean": "the mean of the last layer over real tokens",
             "pair": "[u, v, |u-v|, u*v] of the two segments' mean vectors"}[pooling]
    return Head(None, "head.", f"pooling {pooling!r}: transformers has no sequence classifier that reads {reads}")


def ner_head(bp: Blueprint) -> Head:
    s = bp.settings
    if s["tagger"] == "linear" and (s["mode"] == "finetune" or s["layers"] == "last"):
        return Head("BertForTokenClassification", "head.out.")
    reason = "a BiLSTM tagger" if s["tagger"] == "bilstm" else f"a tagger over the {s['layers']!r} layer features"
    return Head(None, "head.", f"{reason}: transformers' token classifier is one linear layer over the last layer")


HEADS: dict[str, Callable[[Blueprint], Head]] = {
    "classify": classify_head,
    "ner": ner_head,
    "qa": lambda bp: Head("BertForQuestionAnswering", "span."),        # start and end logits: Linear(hidden, 2)
}


def linear(state: dict[str, Tensor], prefix: str) -> nn.Linear:
    weight, bias = state[prefix + "weight"], state[prefix + "bias"]
    layer = nn.Linear(weight.size(1), weight.size(0))
    layer.load_state_dict({"weight": weight, "bias": bias})
    return layer


def export_bert(bp: Blueprint, state: dict[str, Tensor], out: Path) -> str:
    """The BERT with its task head where transformers has the class, else the encoder and head.safetensors.
    Returns what was written, in one line."""
    model = network(bp, state)
    head = HEADS[bp.task](bp) if bp.task in HEADS else \
        Head(None, "", f"no transformers class is known for the {bp.task!r} head")
    if head.architecture:
        save_bert(model, out, linear(state, head.prefix), head.architecture, bp.labels)
        return head.architecture
    save_bert(model, out)
    encoder = network_prefix(state, "bert")
    rest = {k: v.contiguous() for k, v in state.items() if k.startswith(head.prefix) and not k.startswith(encoder)}
    what = "BertForPreTraining" if model.mlm_head is not None else "BertModel"
    if rest:
        save_file(rest, str(out / "head.safetensors"), metadata={"note": head.note, "task": bp.task,
                                                                  "settings": json.dumps(bp.settings)})
        what += f" + head.safetensors ({head.note})"
    return what


def export_gpt(bp: Blueprint, state: dict[str, Tensor], out: Path) -> str:
    save_gpt2(network(bp, state), out)
    return "GPT2LMHeadModel"


def export_transformer(bp: Blueprint, state: dict[str, Tensor], out: Path) -> str:
    try:
        check_marian(TransformerConfig(**bp.model_config))
    except ValueError as e:
        raise ConfigError(f"cannot export exactly: {e}") from None
    tokenizer = tokenizer_from_str(bp.tokenizer)
    start, eos = tokenizer.token_to_id("<s>"), tokenizer.token_to_id("</s>")
    if start is None or eos is None:
        raise CheckpointError("the checkpoint's tokenizer has no <s> / </s> tokens")
    save_transformer(network(bp, state), out, start, eos)
    return "MarianMTModel"


EXPORTERS = {"bert": export_bert, "gpt": export_gpt, "transformer": export_transformer}


# ---------------------------------------------------------------------------------------------------------
# Tokenizer files
# ---------------------------------------------------------------------------------------------------------
def char_tokenizer(chars: str) -> Tokenizer:
    """A character vocabulary (data.lm_tokenizer, kind "char") as a `tokenizers` tokenizer with the same ids: one
    token per character, <|endoftext|> last. A character outside the vocabulary is an error, as in ours."""
    vocab = {c: i for i, c in enumerate(chars)}
    vocab[EOT] = len(chars)
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unknown character>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    tokenizer.add_special_tokens([AddedToken(EOT, special=True, normalized=False)])
    return tokenizer


def hf_tokenizer(bp: Blueprint, max_length: int) -> tuple[Tokenizer, dict]:
    """(tokenizer, tokenizer_config.json) for the checkpoint's tokenizer."""
    if bp.model_kind == "gpt":
        ours = TextTokenizer.from_str(bp.tokenizer)
        tokenizer = char_tokenizer(ours.chars) if ours.kind == "char" else ours.tokenizer
        return tokenizer, {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": EOT, "eos_token": EOT,
                           "model_max_length": max_length}
    tokenizer = tokenizer_from_str(bp.tokenizer)
    if bp.model_kind == "transformer":          # sources end with </s> (data.seq2seq.encode_pairs)
        tokenizer.post_processor = processors.TemplateProcessing(
            single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", tokenizer.token_to_id("</s>"))])
        return tokenizer, {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
                           "pad_token": "<pad>", "unk_token": "<unk>", "model_max_length": max_length}
    normalizer = json.loads(bp.tokenizer).get("normalizer") or {}
    return tokenizer, {"tokenizer_class": "BertTokenizer", "do_lower_case": normalizer.get("lowercase", False),
                       "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
                       "mask_token": "[MASK]", "model_max_length": max_length}


def save_tokenizer(bp: Blueprint, out: Path) -> list[str]:
    """Write the tokenizer files; returns their names."""
    tokenizer, config = hf_tokenizer(bp, bp.model_config["max_positions"])
    tokenizer.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))
    names = ["tokenizer.json", "tokenizer_config.json"]
    if json.loads(tokenizer.to_str())["model"]["type"] == "WordPiece":
        by_id = sorted(tokenizer.get_vocab(with_added_tokens=True).items(), key=lambda item: item[1])
        (out / "vocab.txt").write_text("".join(token + "\n" for token, _ in by_id), encoding="utf-8")
        names.append("vocab.txt")
    return names


# ---------------------------------------------------------------------------------------------------------
# run.py <task> export
# ---------------------------------------------------------------------------------------------------------
def export(ckpt_path: str | Path, task: str, out: str | Path) -> str:
    """Write the `task` checkpoint at `ckpt_path` as a Hugging Face directory `out`; returns what it wrote, in one
    line. A missing checkpoint, another task's, or an `out` that is a file or not empty (an earlier export's files
    would mix with this one's) is a one-line ConfigError, and a refused export leaves no directory behind."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: a file, not a directory")
    if out.is_dir() and any(out.iterdir()):
        raise ConfigError(f"--out {out}: not empty; an export writes a new (or empty) directory")
    ckpt = read_checkpoint(ckpt_path, task=task)
    bp = blueprint(ckpt, ckpt_path)
    if bp.model_kind not in EXPORTERS:
        raise CheckpointError(f"{ckpt_path}: unknown model kind {bp.model_kind!r}")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        what = EXPORTERS[bp.model_kind](bp, ckpt["state_dict"], out)
        if bp.tokenizer:
            save_tokenizer(bp, out)
        files = sorted(path.name for path in out.iterdir())
    except BaseException:
        for path in out.iterdir():      # it was empty: what is there now is this export's
            path.unlink()
        if created:
            out.rmdir()
        raise
    return f"{what}: {', '.join(files)}"


def main(task: str, argv: list[str]) -> int:
    p = VerbParser(prog=f"run.py {task} export",
                   description="Write a checkpoint as a Hugging Face directory that transformers loads "
                               "(config.json, model.safetensors, tokenizer files).")
    p.add_argument("--ckpt_path", required=True, help=f"a checkpoint written by `run.py {task} fit`")
    p.add_argument("--out", required=True, help="the directory to write (created if needed)")
    args = p.parse_args(argv)
    what = export(args.ckpt_path, task, args.out)
    print(f"wrote {args.out}: {what}")
    return 0
