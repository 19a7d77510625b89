"""`run.py <task> attention`: where every head of every layer looks, for one input, as pictures and as arrays.

    run.py classify attention --ckpt_path runs/classify/default/checkpoints/last.ckpt --text "a gorgeous film" --out att
    run.py classify attention --hf_dir all-MiniLM-L6-v2 --text "The animal didn't cross the street ..." --out att
    run.py classify attention --ckpt_path X --text "A man sleeps." --text_pair "A person rests." --out att
    run.py translate attention --ckpt_path X --text "Ein Hund rennt." --target_prefix "A dog" --out att

Writes into --out, for each kind of attention the network has (BERT and GPT: `self`; the encoder-decoder: `encoder`,
`decoder` (masked self-attention over the target prefix) and `cross` (target over source)):

    <kind>.npy                 (layers, heads, T, S) float32: row t is query token t's distribution over the S keys
    <kind>_layer<l>.png        one panel per head, queries down the side, keys along the bottom
    <kind>_layer<l>_head<h>.png  instead, with --per_head
    tokens.json                the query and key tokens of each kind, and the input

The weights are the network's own: each MultiHeadAttention keeps softmax(QKᵀ/√d_k) computed from the Q and K of
this forward pass (modeling/attention.py, `keep_weights`), in eval mode (no dropout). Padding never occurs (one
input), GPT's and the decoder's future positions are exactly 0.

The network and tokenizer come from the checkpoint's blueprint (any task whose model is BERT, GPT or the
Transformer: the network is found by its kind, tasks.export.network) or from a Hugging Face BERT or GPT-2 directory
(--hf_dir). A ner checkpoint trained with `casing` reads each word's casing class as its segment id, as in training.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from tokenizers import Tokenizer
from torch import Tensor, nn

from data.conll import TOKEN_RE, Sentence, build_windows
from data.errors import ConfigError
from data.lm_tokenizer import TextTokenizer
from data.seq2seq import encode_pairs
from data.tokenization import load_wordpiece, tokenizer_from_str
from modeling.attention import MultiHeadAttention
from modeling.hf import load_bert, load_gpt2, read_config
from tasks.checkpoint import blueprint, read_checkpoint
from tasks.export import VerbParser, network

# (the stack a MultiHeadAttention sits in, its name in the layer) -> the kind of attention it computes
KINDS = {("layers", "self_attn"): "self", ("encoder", "self_attn"): "encoder",
         ("decoder", "self_attn"): "decoder", ("decoder", "cross_attn"): "cross"}


# ---------------------------------------------------------------------------------------------------------
# Recording
# ---------------------------------------------------------------------------------------------------------
def attention_layers(model: nn.Module) -> dict[str, list[MultiHeadAttention]]:
    """{kind: the network's attention modules of that kind, first layer first}."""
    layers: dict[str, list[MultiHeadAttention]] = {}
    for name, module in model.named_modules():
        if isinstance(module, MultiHeadAttention):
            parts = name.split(".")                      # e.g. decoder.3.cross_attn
            layers.setdefault(KINDS[parts[0], parts[-1]], []).append(module)
    return layers


@torch.no_grad()
def record_attention(model: nn.Module, *inputs: Tensor) -> dict[str, Tensor]:
    """Run `model(*inputs)` in eval mode, every attention module keeping its weights -> {kind: (B, layers, H, T, S)}."""
    layers = attention_layers(model)
    modules = [m for group in layers.values() for m in group]
    was_training = model.training
    model.eval()
    for m in modules:
        m.keep_weights = True
    try:
        model(*inputs)
        return {kind: torch.stack([m.weights for m in group], dim=1) for kind, group in layers.items()}
    finally:
        for m in modules:
            m.keep_weights, m.weights = False, None
        model.train(was_training)


# ---------------------------------------------------------------------------------------------------------
# One input, as each kind of network reads it
# ---------------------------------------------------------------------------------------------------------
@dataclass
class Example:
    """A batch of one as the network's forward takes it, and the tokens on the axes of each kind of attention."""
    inputs: tuple[Tensor, ...]
    source: list[str]                                  # what BERT, GPT or the encoder reads
    target: list[str] = field(default_factory=list)    # the decoder's input (encoder-decoder only)

    def axes(self, kind: str) -> tuple[list[str], list[str]]:
        """(query tokens, key tokens) of an attention kind."""
        return {"self": (self.source, self.source), "encoder": (self.source, self.source),
                "decoder": (self.target, self.target), "cross": (self.target, self.source)}[kind]


def _batch(ids: list[int]) -> Tensor:
    return torch.tensor([ids], dtype=torch.long)


def bert_example(tokenizer: Tokenizer, text: str, text_pair: Optional[str] = None, casing: bool = False,
                 max_length: int = 512) -> Example:
    """[CLS] text [SEP] (text_pair [SEP]) with segment ids 0 / 1, as data.classification encodes it; with `casing`,
    the words as data.conll reads a plain-text line, each sub-token's segment id its word's casing class."""
    if casing:
        if text_pair is not None:
            raise ConfigError("--text_pair: a model trained with casing reads one sentence")
        words = TOKEN_RE.findall(text)
        window = build_windows(tokenizer, [Sentence(words, ["O"] * len(words), 0)], None, max_length=max_length)[0]
        ids, segments = window.input_ids, window.casing
    else:
        encoding = tokenizer.encode(text, text_pair)
        ids, segments = encoding.ids, encoding.type_ids
    return Example((_batch(ids), _batch(segments)), [tokenizer.id_to_token(i) for i in ids])


def gpt_example(tokenizer: TextTokenizer, text: str) -> Example:
    """The text's tokens; each labelled by its own decoded text."""
    ids = tokenizer.encode(text, where="--text")
    return Example((_batch(ids),), [tokenizer.decode([i]) for i in ids])


def seq2seq_example(tokenizer: Tokenizer, text: str, target_prefix: str = "") -> Example:
    """Source: subwords + </s>; decoder input: <s> + the target prefix's subwords (data.seq2seq.encode_pairs)."""
    pair = encode_pairs(tokenizer, [text], [target_prefix])
    source, target = pair.source_ids[0], pair.target_ids[0][:-1]          # the decoder reads <s> y, not </s>
    return Example((_batch(source), _batch(target)), [tokenizer.id_to_token(i) for i in source],
                   [tokenizer.id_to_token(i) for i in target])


# ---------------------------------------------------------------------------------------------------------
# The network and its input
# ---------------------------------------------------------------------------------------------------------
def from_checkpoint(path: str, task: str, text: str, text_pair: Optional[str],
                    target_prefix: Optional[str]) -> tuple[nn.Module, Example]:
    """The checkpoint's network and the input as the task's data reads it (the blueprint's tokenizer and settings)."""
    ckpt = read_checkpoint(path, task=task)
    bp = blueprint(ckpt, path)
    model = network(bp, ckpt["state_dict"])
    _check_options(bp.model_kind, text_pair, target_prefix)
    if bp.model_kind == "gpt":
        return model, gpt_example(TextTokenizer.from_str(bp.tokenizer), text)
    if bp.model_kind == "transformer":
        return model, seq2seq_example(tokenizer_from_str(bp.tokenizer), text, target_prefix or "")
    return model, bert_example(tokenizer_from_str(bp.tokenizer), text, text_pair, bool(bp.settings.get("casing")),
                               model.config.max_positions)


def from_hf_dir(directory: str, text: str, text_pair: Optional[str],
                target_prefix: Optional[str]) -> tuple[nn.Module, Example]:
    """A Hugging Face BERT (with its WordPiece tokenizer) or GPT-2 (with its BPE) directory."""
    kind = read_config(Path(directory)).get("model_type")
    if kind == "gpt2":
        _check_options("gpt", text_pair, target_prefix)
        return load_gpt2(directory).eval(), gpt_example(TextTokenizer.gpt2(directory), text)
    if kind == "bert":
        _check_options("bert", text_pair, target_prefix)
        model = load_bert(directory).eval()
        return model, bert_example(load_wordpiece(directory), text, text_pair)
    raise ConfigError(f"--hf_dir {directory}: model_type {kind!r}, expected a BERT or GPT-2 directory")


def _check_options(kind: str, text_pair: Optional[str], target_prefix: Optional[str]) -> None:
    if text_pair is not None and kind != "bert":
        raise ConfigError(f"--text_pair: a {kind} network reads one text")
    if target_prefix is not None and kind != "transformer":
        raise ConfigError(f"--target_prefix: only an encoder-decoder has a target; this network is a {kind}")


# ---------------------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------------------
def write_maps(maps: dict[str, np.ndarray], example: Example, out: Path, per_head: bool = False,
               layers: Optional[list[int]] = None) -> list[Path]:
    """The arrays (<kind>.npy, tokens.json) and the pictures of `layers` (default all) of each kind; returns the
    files written."""
    from tasks.plots import attention_figure, plt        # matplotlib only when drawing
    for kind, weights in maps.items():
        for layer in layers or []:
            if not 0 <= layer < len(weights):
                raise ConfigError(f"--layers {layer}: the {kind} attention has {len(weights)} layers")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    tokens = {}
    for kind, weights in maps.items():                   # (L, H, T, S)
        queries, keys = example.axes(kind)
        tokens[kind] = {"queries": queries, "keys": keys}
        np.save(out / f"{kind}.npy", weights)
        written.append(out / f"{kind}.npy")
        for layer in (layers if layers is not None else range(len(weights))):
            panels = [(f"{kind}_layer{layer}_head{h}.png", [h]) for h in range(weights.shape[1])] if per_head \
                else [(f"{kind}_layer{layer}.png", list(range(weights.shape[1])))]
            for name, heads in panels:
                fig = attention_figure(weights[layer, heads], queries, keys, f"{kind} attention, layer {layer}", heads)
                fig.savefig(out / name, dpi=80)
                plt.close(fig)
                written.append(out / name)
    (out / "tokens.json").write_text(json.dumps(tokens, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return written + [out / "tokens.json"]


def main(task: str, argv: list[str]) -> int:
    p = VerbParser(prog=f"run.py {task} attention",
                   description="Draw every attention head of every layer for one input, and save the weights.")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt_path", help=f"a checkpoint written by `run.py {task} fit`")
    source.add_argument("--hf_dir", help="a Hugging Face BERT or GPT-2 directory (config.json, weights, tokenizer)")
    p.add_argument("--text", required=True, help="the input (the source sentence for an encoder-decoder)")
    p.add_argument("--text_pair", help="the second sentence, for a sentence-pair model")
    p.add_argument("--target_prefix", help="encoder-decoder: the target so far, read by the decoder after <s>")
    p.add_argument("--out", required=True, help="directory for the pictures, <kind>.npy and tokens.json")
    p.add_argument("--per_head", action="store_true", help="one picture per layer and head instead of per layer")
    p.add_argument("--layers", type=int, nargs="+", help="draw only these layers (the .npy holds all)")
    args = p.parse_args(argv)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: a file, not a directory")
    if not args.text.strip():
        raise ConfigError("--text is empty")
    start = time.perf_counter()
    if args.ckpt_path:
        model, example = from_checkpoint(args.ckpt_path, task, args.text, args.text_pair, args.target_prefix)
    else:
        model, example = from_hf_dir(args.hf_dir, args.text, args.text_pair, args.target_prefix)
    longest = max(len(example.source), len(example.target))
    if longest > model.config.max_positions:
        raise ConfigError(f"--text: {longest} tokens, more than the network's {model.config.max_positions} positions")
    maps = {kind: w[0].numpy() for kind, w in record_attention(model, *example.inputs).items()}
    written = write_maps(maps, example, out, args.per_head, args.layers)
    pictures = sum(p.suffix == ".png" for p in written)
    print(f"wrote {pictures} pictures and {len(maps)} arrays ({', '.join(f'{k}: {maps[k].shape}' for k in maps)}) "
          f"to {out} in {time.perf_counter() - start:.1f} s")
    return 0
