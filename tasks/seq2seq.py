"""Sequence to sequence with the encoder-decoder Transformer: `run.py translate` (Multi30k, BLEU) and
`run.py summarize` (AESLC, ROUGE) are one task with two metrics.

Training (Vaswani et al. 2017): the Transformer of modeling/ (post-norm as the paper, `norm_first` for pre-norm),
one vocabulary shared by source and target with the embedding tied to the output projection, label-smoothed
cross-entropy (ε = `label_smoothing`) over the target tokens, Adam β = (0.9, 0.98) with warm-up then inverse-square-
root decay (the base's `betas` and `schedule: inverse_sqrt`), dropout a `config` field.

Warm start (Rothe et al. 2020): with `pretrained` (a BERT directory such as all-MiniLM-L6-v2, or any of our BERT
checkpoints) the encoder is that BERT, weight for weight, with its WordPiece vocabulary and BERT-style embeddings
(learned positions and LayerNorm, no √d scaling); the decoder, of the same width, starts from scratch
(`decoder_init: scratch`, BERT2RND) or from the same BERT's layers with new cross-attention (`pretrained`,
BERT2BERT). The log names every weight that was loaded and every one that is new.

Decoding: validation decodes greedily (fast, for choosing the checkpoint); test and predict by beam search
(`beam_size`, `length_penalty`, `max_new_tokens`, `min_new_tokens`, `no_repeat_ngram_size`, `known_words`: only
words of the training texts or of the source, tasks/lexicon.py), batched, with the KV
cache and the encoder memory projected once per batch. These settings are options of each run, not of the model:
they are left out of the checkpoint's hyperparameters, so `--model.beam_size 1` on a `test` or `predict` command
line (or the config it names) wins.

Metrics over the whole split: sufficient statistics (BLEU's n-gram counts, ROUGE's F sums) are torchmetrics states
summed over batches and processes, and every example is decoded on exactly one process (data/batching.py).
Translation reports sacreBLEU (cased, detokenised, 13a; its signature is printed and written to
`<run dir>/<stage>_scores.json`) and the literature's Multi30k BLEU (lowercased, tokenised) beside it;
summarization ROUGE-1/2/L/Lsum F (stemmed) against the original reference (the headline) and against all
references (AESLC's annotations) beside it. `test` also writes every hypothesis, in input order, to
`<run dir>/test_hypotheses.txt`.

`run.py <task> average --ckpts A B C --out X.ckpt` averages checkpoints (the paper averages the last five);
`snapshot_every_n_steps` keeps the last `keep_snapshots` weights under `<run dir>/snapshots/` for it.
"""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import ClassVar, Literal, Optional

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info
from torch import Tensor, nn
from torchmetrics import MeanMetric

from data.errors import ConfigError, check_fields
from data.seq2seq import SPECIAL_TOKENS, SpecialTokens, special_tokens
from data.tokenization import tokenizer_from_str
from modeling import Transformer, TransformerConfig
from modeling.generation import beam_search, generate
from modeling.transformer import config_from_bert, load_bert_weights
from tasks.base import Task
from tasks.bleu import BLEU, MULTI30K_LITERATURE
from tasks.checkpoint import Blueprint, CheckpointError, blueprint, read_checkpoint
from tasks.encoders import load_encoder
from tasks.lexicon import WORD_START, Lexicon
from tasks.rouge import ROUGE, ROUGE_TYPES

# TransformerConfig fields a warm start takes from the BERT; model.config may set the others.
FROM_BERT = ("src_vocab_size", "tgt_vocab_size", "hidden_size", "num_encoder_layers", "num_heads", "ffn_size",
             "activation", "max_positions", "norm_first", "layer_norm_eps", "bias", "pad_token_id", "embeddings")


class Snapshots(pl.Callback):
    """The weights every `every_n_steps` optimizer steps, as <dirpath>/step=N.ckpt; the newest `keep` are kept (for
    `average`). (Not a ModelCheckpoint: Lightning would let it replace run.py's, which keeps the best.)"""

    def __init__(self, dirpath: Path, every_n_steps: int, keep: int):
        self.dirpath, self.every_n_steps, self.keep = Path(dirpath), every_n_steps, keep
        self._saved_step = -1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step % self.every_n_steps or step == self._saved_step:     # (gradient accumulation: one per step)
            return
        self._saved_step = step
        trainer.save_checkpoint(self.dirpath / f"step={step}.ckpt", weights_only=True)
        if trainer.is_global_zero:
            snapshots = sorted(self.dirpath.glob("step=*.ckpt"), key=lambda p: int(p.stem.removeprefix("step=")))
            for old in snapshots[:-self.keep]:
                old.unlink()


class BertPart(nn.Module):
    """A view of a warm-started Transformer's encoder in the shape tasks/optim.py's layer-wise groups read:
    `embeddings`, `layers`, and the rest (a pre-norm stack's final LayerNorm) on top. Not part of the model."""

    def __init__(self, embeddings: nn.Module, layers: nn.ModuleList, norm: nn.Module):
        super().__init__()
        self.embeddings, self.layers, self.norm = embeddings, layers, norm


def fold_layers(names: list[str]) -> str:
    """Parameter names with their layer numbers folded, for the log: encoder.{0-5}.ffn.up.weight."""
    layers: dict[str, list[int]] = {}
    for name in names:
        m = re.fullmatch(r"(\w+)\.(\d+)\.(.+)", name)
        if m:
            layers.setdefault(f"{m[1]}.{{}}.{m[3]}", []).append(int(m[2]))
        else:
            layers[name] = []
    return ", ".join(key.format(f"{{{min(n)}-{max(n)}}}" if len(n) > 1 else n[0]) if n else key
                     for key, n in layers.items())


def seq2seq_loss(model: Transformer, batch: dict, label_smoothing: float) -> Tensor:
    """Mean label-smoothed cross-entropy of each target token given the source and the target before it."""
    target = batch["target_ids"]                                                     # (B, T + 1) <s> y </s>
    return model.loss(batch["source_ids"], target[:, :-1], target[:, 1:], batch["source_mask"], label_smoothing)


class Seq2SeqTask(Task):
    """The encoder-decoder task; subclasses set the name, the metric and the decoding defaults."""

    monitor_mode = "max"
    output_key: ClassVar[str]           # the predicted text's key in predict's JSON lines
    decoding = ("val_beam_size", "beam_size", "length_penalty", "max_new_tokens", "min_new_tokens",
                "no_repeat_ngram_size", "known_words")                  # each run's own (module doc)

    def __init__(self, decoder_init: Literal["scratch", "pretrained"] = "scratch", label_smoothing: float = 0.1,
                 val_beam_size: int = 1, beam_size: int = 5, length_penalty: float = 1.0,
                 max_new_tokens: int = 128, min_new_tokens: int = 0, no_repeat_ngram_size: int = 0,
                 known_words: bool = False, snapshot_every_n_steps: Optional[int] = None, keep_snapshots: int = 5,
                 **kwargs):
        """
        Args:
            decoder_init: with `pretrained` (a BERT): the decoder starts from scratch, or from the BERT's layers
                (its cross-attention new).
            label_smoothing: ε of the label-smoothed cross-entropy.
            val_beam_size: validation decoding: 1 is greedy (no length or n-gram constraints), more is beam search.
            beam_size, length_penalty: test / predict beam search; a finished hypothesis scores
                sum(log p) / length ** length_penalty.
            max_new_tokens, min_new_tokens: most and fewest generated tokens (the end token included in the count).
            no_repeat_ngram_size: no n-gram of this size occurs twice in a hypothesis (0: off).
            known_words: every generated word is a word of the training texts (data.train_file) or of its own
                source, so copied pieces are never glued into words that do not exist (tasks/lexicon.py; a
                SentencePiece-style vocabulary, ours).
            snapshot_every_n_steps: keep the weights every N optimizer steps in <run dir>/snapshots (for `average`).
            keep_snapshots: how many of the newest snapshots are kept.
        """
        super().__init__(**kwargs)
        checks = [("label_smoothing", label_smoothing, 0 <= label_smoothing < 1, "must be in [0, 1)"),
                  ("val_beam_size", val_beam_size, val_beam_size >= 1, "must be >= 1"),
                  ("beam_size", beam_size, beam_size >= 1, "must be >= 1"),
                  ("max_new_tokens", max_new_tokens, max_new_tokens >= 1, "must be >= 1"),
                  ("min_new_tokens", min_new_tokens, 0 <= min_new_tokens <= max_new_tokens,
                   f"must be in [0, max_new_tokens={max_new_tokens}]"),
                  ("no_repeat_ngram_size", no_repeat_ngram_size, no_repeat_ngram_size >= 0, "must be >= 0"),
                  ("snapshot_every_n_steps", snapshot_every_n_steps,
                   snapshot_every_n_steps is None or snapshot_every_n_steps >= 1, "must be >= 1"),
                  ("keep_snapshots", keep_snapshots, keep_snapshots >= 1, "must be >= 1"),
                  ("decoder_init", decoder_init, decoder_init in ("scratch", "pretrained"),
                   "must be 'scratch' or 'pretrained'")]
        for key, value, ok, rule in checks:
            if not ok:
                raise ConfigError(f"model.{key} {value}: {rule}")
        self.scores = nn.ModuleDict({stage: nn.ModuleDict(self.scorers()) for stage in ("val", "test")})
        self.losses = nn.ModuleDict({stage: MeanMetric() for stage in ("val", "test")})

    # ---- what a subclass says: its metric ----------------------------------------------------------------------
    def scorers(self) -> dict[str, nn.Module]:
        """Fresh metrics, updated with `update_scores` and read with `compute_scores`."""
        raise NotImplementedError

    def update_scores(self, scorers: nn.ModuleDict, hypotheses: list[str], references: list[list[str]]) -> None:
        raise NotImplementedError

    def compute_scores(self, scorers: nn.ModuleDict) -> tuple[dict[str, float], dict]:
        """({metric name: value} to log, details for <stage>_scores.json, e.g. BLEU's signature)."""
        raise NotImplementedError

    # ---- building ---------------------------------------------------------------------------------------------
    def create(self, data) -> Blueprint:
        hp = self.hparams
        overrides = dict(hp.config or {})
        check_fields(TransformerConfig, overrides, "model.config", "Transformer setting")
        if hp.pretrained:
            model = self._warm_start(data, overrides)
        else:
            if hp.decoder_init == "pretrained":
                raise ConfigError("model.decoder_init pretrained: needs model.pretrained (a BERT)")
            tokenizer = data.ensure_tokenizer()
            vocab, pad = tokenizer.get_vocab_size(), special_tokens(tokenizer).pad
            model = Transformer(TransformerConfig(**{"src_vocab_size": vocab, "tgt_vocab_size": vocab,
                                                     "pad_token_id": pad, **overrides}))
        settings = {"pretrained": hp.pretrained, "decoder_init": hp.decoder_init if hp.pretrained else "scratch",
                    "max_source_length": data.max_source_length, "max_target_length": data.max_target_length}
        bp = Blueprint(self.name, "transformer", dataclasses.asdict(model.config), data.tokenizer_json(), None,
                       settings)
        self.build(bp, model)
        return bp

    def _warm_start(self, data, overrides: dict) -> Transformer:
        """Rothe et al. 2020: the encoder (and with decoder_init pretrained, the decoder) from a BERT, with the
        BERT's vocabulary. Which weights were loaded and which are new: in the log (layer numbers folded) and by
        full name in <run dir>/warm_start.json."""
        hp = self.hparams
        fixed = sorted(set(overrides) & set(FROM_BERT))
        if fixed:
            raise ConfigError(f"model.config.{fixed[0]}: set by the pretrained BERT ({hp.pretrained})")
        bert, stored_tokenizer = load_encoder(hp.pretrained, pooler=False)
        data.default_tokenizer(stored_tokenizer, hp.pretrained)
        tokenizer = data.ensure_tokenizer()
        vocab, pad = tokenizer.get_vocab_size(), special_tokens(tokenizer).pad
        if vocab > bert.config.vocab_size or pad != bert.config.pad_token_id:
            raise ConfigError(f"data.tokenizer: not the vocabulary of {hp.pretrained} ({vocab} tokens, the BERT has "
                              f"{bert.config.vocab_size}); leave data.tokenizer unset")
        model = Transformer(config_from_bert(bert, **overrides))
        try:
            report = load_bert_weights(model, bert, decoder=hp.decoder_init == "pretrained")
        except ValueError as e:
            raise ConfigError(f"model.config: {e}") from None
        for kind, names in report.items():
            rank_zero_info(f"warm start from {hp.pretrained}: {kind} {len(names)} tensors: {fold_layers(names)}")
        if self.trainer.is_global_zero:
            path = Path(self.trainer.default_root_dir) / "warm_start.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"pretrained": hp.pretrained, **report}, indent=1) + "\n")
        return model

    def build(self, bp: Blueprint, model: Optional[Transformer] = None) -> None:
        self.model = model or Transformer(TransformerConfig(**bp.model_config))
        self.tokenizer = tokenizer_from_str(bp.tokenizer)
        self.specials: SpecialTokens = special_tokens(self.tokenizer)
        self._lexicon: Optional[Lexicon] = None
        if self.hparams.known_words and not any(p.startswith(WORD_START) for p in self.tokenizer.get_vocab()):
            raise ConfigError(f"model.known_words: needs a vocabulary whose word-start pieces begin with "
                              f"'{WORD_START}' (ours, not a BERT WordPiece one)")

    def lexicon(self) -> Lexicon:
        """The known words (built once, from the training split's sources and targets)."""
        if self._lexicon is None:
            data = self.trainer.datamodule
            if data.files["train"] is None:
                raise ConfigError("model.known_words: needs data.train_file (its words are the known words)")
            train = data.examples("train")
            specials = {self.tokenizer.token_to_id(t) for t in SPECIAL_TOKENS} - {None}
            self._lexicon = Lexicon(self.tokenizer, specials, train.sources + train.targets)
        return self._lexicon

    def encoder(self) -> Optional[nn.Module]:
        """Warm-started: the BERT part (the shared embedding and the encoder layers), so that `head_lr` sets the
        decoder's learning rate (its cross-attention is new) and `layer_decay` reaches down the encoder."""
        if not self.hparams.pretrained:
            return None
        return BertPart(self.model.src_embed, self.model.encoder, self.model.encoder_norm)

    def check_data(self, data) -> None:
        for key in ("max_source_length", "max_target_length"):
            length = getattr(data, key)
            if length > self.model.config.max_positions:
                raise ConfigError(f"data.{key} {length}: the model has {self.model.config.max_positions} positions")

    def configure_callbacks(self) -> list:
        every = self.hparams.snapshot_every_n_steps
        if not every or self.trainer.state.fn != "fit":
            return []
        return [Snapshots(Path(self.trainer.default_root_dir) / "snapshots", every, self.hparams.keep_snapshots)]

    # ---- training ---------------------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        loss = seq2seq_loss(self.model, batch, self.hparams.label_smoothing)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["source_ids"].size(0))
        return loss

    # ---- decoding ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate_ids(self, source_ids: Tensor, source_mask: Tensor, beam_size: Optional[int]) -> Tensor:
        """(B, S) sources -> (B, n) generated ids after <s> (ending with </s>, then padding): greedy (`beam_size`
        None), or beam search with the decoding settings."""
        hp, s = self.hparams, self.specials
        memory = self.model.encode(source_ids, source_mask)                             # (B, S, D)
        decoder = self.model.decoder_for(memory, source_mask, source_ids)
        start = torch.full((source_ids.size(0), 1), s.bos, dtype=torch.long, device=source_ids.device)
        steps = min(hp.max_new_tokens, self.model.config.max_positions - 1)
        allowed = None
        if hp.known_words:
            lexicon = self.lexicon()
            cut = source_mask.sum(dim=1) >= self.trainer.datamodule.max_source_length       # may end mid-word
            own_words = lexicon.source_words(source_ids, cut.tolist())
            allowed = lambda ids: lexicon.allowed(ids, own_words)  # noqa: E731
        if beam_size is None:
            out = generate(decoder, start, steps, eos_token_id=s.eos, allowed_tokens=allowed)
        else:
            out = beam_search(decoder, start, steps, beam_size=beam_size, length_penalty=hp.length_penalty,
                              eos_token_id=s.eos, pad_token_id=s.pad, min_new_tokens=min(hp.min_new_tokens, steps),
                              no_repeat_ngram_size=hp.no_repeat_ngram_size, allowed_tokens=allowed)
        return out[:, 1:]

    def texts(self, generated: Tensor) -> list[str]:
        """Generated ids -> detokenised text: everything before the first </s>."""
        out = []
        for ids in generated.tolist():
            ids = ids[:ids.index(self.specials.eos)] if self.specials.eos in ids else ids
            out.append(self.tokenizer.decode([i for i in ids if i != self.specials.pad], skip_special_tokens=True))
        return out

    # ---- evaluation -------------------------------------------------------------------------------------------
    def on_test_epoch_start(self) -> None:
        self._hypotheses: list[tuple[Tensor, Tensor]] = []           # (index, generated ids) of this process

    def _evaluate(self, batch: dict, stage: str) -> None:
        """The loss (token-weighted), then decode the batch and score it against its references."""
        hp = self.hparams
        tokens = int((batch["target_ids"][:, 1:] != self.specials.pad).sum())
        self.losses[stage].update(seq2seq_loss(self.model, batch, hp.label_smoothing), tokens)
        beam_size = hp.beam_size if stage == "test" else None if hp.val_beam_size == 1 else hp.val_beam_size
        generated = self.generate_ids(batch["source_ids"], batch["source_mask"], beam_size)   # (B, n)
        examples = self.trainer.datamodule.examples(stage)
        references = [examples.references[i] for i in batch["index"].tolist()]
        self.update_scores(self.scores[stage], self.texts(generated), references)
        if stage == "test":                           # kept for test_hypotheses.txt, padded to one width
            padded = nn.functional.pad(generated, (0, hp.max_new_tokens - generated.size(1)), value=self.specials.pad)
            self._hypotheses.append((batch["index"], padded))

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def _finish(self, stage: str) -> None:
        """Log the split's scores (summed over processes by torchmetrics), print and write their details."""
        scores, details = self.compute_scores(self.scores[stage])
        loss = self.losses[stage].compute()
        for metric in (*self.scores[stage].values(), self.losses[stage]):
            metric.reset()
        self.log_dict({f"{stage}/{name}": value for name, value in scores.items()}, prog_bar=True)
        self.log(f"{stage}/loss", loss)
        if self.trainer.sanity_checking:
            return
        decoding = {k: self.hparams[k] for k in self.decoding}
        shown = details if stage == "test" else {}                  # validation: the scores only, every time
        self.print(f"{stage}: " + ", ".join(f"{k} {v:.2f}" for k, v in scores.items()) +
                   "".join(f"\n  {k}: {v}" for k, v in shown.items()))
        if self.trainer.is_global_zero:
            path = Path(self.trainer.default_root_dir) / f"{stage}_scores.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            step = {"step": self.global_step} if stage == "val" else {}        # test: a checkpoint's, not counted
            path.write_text(json.dumps({**step, "scores": scores, **details, "decoding": decoding}, indent=1) + "\n")

    def on_validation_epoch_end(self) -> None:
        self._finish("val")

    def on_test_epoch_end(self) -> None:
        self._finish("test")
        self._write_hypotheses()

    def _write_hypotheses(self) -> None:
        """Every process's test hypotheses, gathered, in input order: <run dir>/test_hypotheses.txt."""
        if self._hypotheses:
            index, generated = (torch.cat(parts) for parts in zip(*self._hypotheses))
        else:                                        # a process without test batches still joins the gathering
            index = torch.zeros(0, dtype=torch.long, device=self.device)
            generated = torch.zeros(0, self.hparams.max_new_tokens, dtype=torch.long, device=self.device)
        index, generated = self.all_gather_uneven(index), self.all_gather_uneven(generated)
        if self.trainer.is_global_zero:
            order = index.argsort()
            lines = self.texts(generated[order])
            path = Path(self.trainer.default_root_dir) / "test_hypotheses.txt"
            path.write_text("".join(line.replace("\n", " ") + "\n" for line in lines), encoding="utf-8")

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> list[dict]:
        """One JSON-able dict per input line, in input order: its line, the source and the generated text."""
        examples = self.trainer.datamodule.examples("predict")
        texts = self.texts(self.generate_ids(batch["source_ids"], batch["source_mask"], self.hparams.beam_size))
        return [{"line": examples.lines[i], "source": examples.sources[i], self.output_key: text}
                for i, text in zip(batch["index"].tolist(), texts)]


class TranslationTask(Seq2SeqTask):
    """`run.py translate`: sacreBLEU (cased, detokenised, 13a) as the headline and the checkpoint's monitor, and the
    literature's Multi30k BLEU (lowercased, international tokenisation) beside it."""

    name = "translate"
    monitor = "val/bleu"
    output_key = "translation"

    def scorers(self) -> dict[str, nn.Module]:
        return {"bleu": BLEU(), "bleu_lowercase_intl": BLEU(**MULTI30K_LITERATURE)}

    def update_scores(self, scorers, hypotheses, references) -> None:
        for metric in scorers.values():
            metric.update(hypotheses, references)

    def compute_scores(self, scorers) -> tuple[dict[str, float], dict]:
        return ({name: metric.compute()["bleu"] for name, metric in scorers.items()},
                {f"{name}_signature": metric.signature() for name, metric in scorers.items()})


class SummarizationTask(Seq2SeqTask):
    """`run.py summarize`: ROUGE-1/2/L/Lsum F with stemming against the original reference (the headline; ROUGE-1
    is the checkpoint's monitor unless `metric` says otherwise) and against every reference (`*_multi_ref`, AESLC's
    annotations). Short outputs by default: at most 32 tokens, no repeated trigram."""

    name = "summarize"
    output_key = "summary"
    METRICS = ROUGE_TYPES + tuple(f"{t}_multi_ref" for t in ROUGE_TYPES)

    def __init__(self, max_new_tokens: int = 32, no_repeat_ngram_size: int = 3, metric: str = "rouge1", **kwargs):
        """metric: the validation score that picks the best checkpoint: rouge1, rouge2, rougeL, rougeLsum, or one of
        them against every reference (`rouge2_multi_ref`, ...)."""
        super().__init__(max_new_tokens=max_new_tokens, no_repeat_ngram_size=no_repeat_ngram_size, **kwargs)
        if metric not in self.METRICS:
            raise ConfigError(f"model.metric {metric!r}: choose from {', '.join(self.METRICS)}")
        self.monitor = f"val/{metric}"

    def scorers(self) -> dict[str, nn.Module]:
        return {"single": ROUGE(), "multi": ROUGE()}

    def update_scores(self, scorers, hypotheses, references) -> None:
        scorers["single"].update(hypotheses, [refs[0] for refs in references])
        scorers["multi"].update(hypotheses, references)

    def compute_scores(self, scorers) -> tuple[dict[str, float], dict]:
        single, multi = scorers["single"].compute(), scorers["multi"].compute()
        return {**single, **{f"{name}_multi_ref": value for name, value in multi.items()}}, {}


# ---------------------------------------------------------------------------------------------------------
# `run.py translate average` / `run.py summarize average`
# ---------------------------------------------------------------------------------------------------------
def average_checkpoints(paths: list[str], out: str) -> str:
    """Write the mean of the checkpoints' weights (same task and model) to `out`: the newest checkpoint's blueprint
    and hyperparameters with the averaged weights, without optimizer or loop states (for test and predict).
    Returns a one-line description."""
    if len(paths) < 2:
        raise ConfigError("--ckpts: give at least two checkpoints to average")
    checkpoints = [read_checkpoint(p) for p in paths]
    first = blueprint(checkpoints[0], paths[0])
    if first.model_kind != "transformer":
        raise CheckpointError(f"{paths[0]}: a {first.task!r} checkpoint, not a translate or summarize one")
    for path, ckpt in zip(paths[1:], checkpoints[1:]):
        bp = blueprint(ckpt, path)
        if (bp.task, bp.model_config, bp.tokenizer) != (first.task, first.model_config, first.tokenizer):
            raise CheckpointError(f"{path}: not the same model as {paths[0]} (task, architecture or vocabulary)")
    newest = max(checkpoints, key=lambda c: c.get("global_step", 0))
    averaged = {}
    for name, value in newest["state_dict"].items():
        if value.is_floating_point():
            total = sum(c["state_dict"][name].double() for c in checkpoints)
            averaged[name] = (total / len(checkpoints)).to(value.dtype)
        else:
            averaged[name] = value
    dropped = ("optimizer_states", "lr_schedulers", "loops", "callbacks")
    result = {k: v for k, v in newest.items() if k not in dropped}
    result.update(state_dict=averaged, averaged_from=[str(p) for p in paths])
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    torch.save(result, out)
    steps = sorted(c.get("global_step", 0) for c in checkpoints)
    return f"averaged {len(paths)} {first.task} checkpoints (steps {', '.join(map(str, steps))}) into {out}"


def main_average(argv: list[str]) -> int:
    from tasks.export import VerbParser            # argparse that reports a bad command line as one ConfigError line
    p = VerbParser(prog="run.py <translate|summarize> average",
                   description="Average the weights of checkpoints of one run (Vaswani et al. average the last 5).")
    p.add_argument("--ckpts", nargs="+", required=True,
                   help="checkpoints of one model, e.g. <run dir>/snapshots/*.ckpt (model.snapshot_every_n_steps)")
    p.add_argument("--out", required=True, help="the averaged checkpoint to write (.ckpt)")
    args = p.parse_args(argv)
    print(average_checkpoints(args.ckpts, args.out))
    return 0


VERBS = {"average": main_average}
