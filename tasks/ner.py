"""Named-entity tagging over BERT: fine-tuning, or a tagger on frozen features (Devlin et al. 2019, 5.3).

`mode="finetune"` trains BERT and a linear layer over each word's first sub-token. `mode="features"` freezes
BERT and feeds `combine_layers(hidden_states, layers)` ("embeddings", "last", "second_to_last",
"sum_last_four", "concat_last_four", ...) to the tagger (`tagger="bilstm"`, as the paper, or "linear").
`casing=True` gives the encoder the capitalisation an uncased vocabulary throws away: the segment embedding
table is widened to one row per casing class (all rows start as the pretrained segment-0 row, so training
starts from the pretrained model exactly) and each sub-token gets its word's class as its segment id.

Evaluation maps window predictions back to one tag per original word and scores entities with `EntityF1`
(equal to seqeval). The checkpoint carries the label names, the tokenizer and the encoder's config, so
`predict` needs nothing but the .ckpt. `head_lr` (the task base) sets the tagger's own learning rate.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from data.conll import CASING, IGNORE, CoNLLDataModule, entities, entities_json, words_to_tags
from data.errors import ConfigError
from modeling import BERT, combine_layers
from modeling.bert import LAYER_COMBINATIONS, combined_width
from tasks.base import Task
from tasks.checkpoint import Blueprint, read_checkpoint
from tasks.encoders import bert_config, new_encoder
from tasks.seqeval_metric import EntityF1


class TaggerHead(nn.Module):
    """Features (B, T, F) -> label logits (B, T, C): dropout, an optional BiLSTM, a linear layer."""

    def __init__(self, in_features: int, num_labels: int, kind: str = "linear", lstm_hidden: int = 256,
                 dropout: float = 0.1):
        super().__init__()
        if kind not in ("linear", "bilstm"):
            raise ValueError(f"tagger must be 'linear' or 'bilstm', got {kind!r}")
        self.dropout = nn.Dropout(dropout)
        self.lstm = nn.LSTM(in_features, lstm_hidden, batch_first=True, bidirectional=True) \
            if kind == "bilstm" else None
        self.out = nn.Linear(2 * lstm_hidden if self.lstm is not None else in_features, num_labels)

    def forward(self, features: Tensor, mask: Tensor | None = None) -> Tensor:
        x = self.dropout(features)
        if self.lstm is not None:
            if mask is not None and not bool(mask.all()):
                lengths = mask.sum(1).cpu()
                packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
                x, _ = self.lstm(packed)
                x, _ = nn.utils.rnn.pad_packed_sequence(x, batch_first=True, total_length=features.size(1))
            else:
                x, _ = self.lstm(x)
            x = self.dropout(x)
        return self.out(x)


class NERTask(Task):
    name = "ner"
    monitor = "val/f1"          # the checkpoint with the best dev entity F1 is kept
    monitor_mode = "max"
    decoding = ("strict_eval",)             # how entities are scored: each test run's own

    def __init__(self, mode: Literal["finetune", "features"] = "finetune", layers: str = "last",
                 tagger: Literal["linear", "bilstm"] = "linear", lstm_hidden: int = 256, dropout: float = 0.1,
                 casing: bool = False, strict_eval: bool = False, **kwargs):
        """
        Args:
            mode: "finetune" or "features" (frozen encoder, features from `layers`).
            layers: combine_layers choice for the features.
            tagger: "linear" or "bilstm" head.
            lstm_hidden: the BiLSTM's width per direction.
            dropout: the head's dropout.
            casing: feed each word's capitalisation class as the segment id (see module doc).
            strict_eval: score entities as seqeval's strict IOB2 mode instead of the default (conlleval) mode.
        """
        super().__init__(**kwargs)
        if layers not in LAYER_COMBINATIONS:
            raise ConfigError(f"model.layers {layers!r}: choose from {', '.join(LAYER_COMBINATIONS)}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"model.dropout {dropout}: must be in [0, 1)")

    # ---------------------------------------------------------------- construction
    def create(self, data) -> Blueprint:
        h = self.hparams
        bert = new_encoder(h, data, pooler=False)
        if h.casing and bert.embeddings.segment.num_embeddings != len(CASING):
            widen_segments(bert)
        settings = {k: h[k] for k in ("mode", "layers", "tagger", "lstm_hidden", "dropout", "casing")}
        bp = Blueprint(self.name, "bert", dataclasses.asdict(bert.config), data.tokenizer_json(), list(data.labels),
                       settings)
        self.build(bp, bert)
        return bp

    def build(self, bp: Blueprint, bert: BERT | None = None) -> None:
        s = self.settings = bp.settings
        self.bert = bert or BERT(bert_config(bp.model_config), pooler=False)
        width = self.bert.config.hidden_size
        if s["mode"] == "features":
            self.bert.requires_grad_(False)
            width = combined_width(self.bert.config, s["layers"])
        self.head = TaggerHead(width, len(bp.labels), s["tagger"], s["lstm_hidden"], s["dropout"])
        types = sorted({t[2:] for t in bp.labels if t != "O"})
        self.val_f1 = EntityF1(types, strict=self.hparams.strict_eval)
        self.test_f1 = EntityF1(types, strict=self.hparams.strict_eval)

    def encoder(self) -> BERT:
        return self.bert

    @property
    def labels(self) -> list[str]:
        return self.blueprint.labels

    # ---------------------------------------------------------------- forward
    def forward(self, input_ids: Tensor, attention_mask: Tensor, casing: Tensor | None = None) -> Tensor:
        segments = casing if self.settings["casing"] else None
        if self.settings["mode"] == "features":
            self.bert.eval()
            with torch.no_grad():
                out = self.bert(input_ids, segments, attention_mask, output_hidden_states=True)
            features = combine_layers(out.hidden_states, self.settings["layers"])
        else:
            features = self.bert(input_ids, segments, attention_mask).last_hidden_state
        return self.head(features, attention_mask)                                   # (B, T, C)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        logits = self(batch["input_ids"], batch["attention_mask"], batch["casing"])
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORE)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].size(0))
        return loss

    # ---------------------------------------------------------------- evaluation
    def _predict_batch(self, batch: dict) -> tuple[Tensor, Tensor]:
        """(window indices (B,), best label id per position (B, max_length))."""
        best = self(batch["input_ids"], batch["attention_mask"], batch["casing"]).argmax(-1)
        padded = best.new_zeros(best.size(0), self.trainer.datamodule.max_length)
        padded[:, :best.size(1)] = best
        return batch["index"], padded

    def on_validation_epoch_start(self) -> None:
        self._outputs = []

    on_test_epoch_start = on_validation_epoch_start

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._outputs.append(self._predict_batch(batch))

    test_step = validation_step

    def on_predict_epoch_start(self) -> None:
        sentences, windows = self.trainer.datamodule.examples("predict")
        self._pending: dict[int, list[int]] = {}
        self._emitted = 0
        # _open_from[w]: the first sentence that window w or a later one still predicts words of
        self._open_from = [len(sentences)] * (len(windows) + 1)
        for w in range(len(windows) - 1, -1, -1):
            self._open_from[w] = min([self._open_from[w + 1]] + [si for _, si, _ in windows[w].targets])

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        """Entities of every input sentence whose words have all been predicted by now, as JSON-able dicts
        (run.py writes one line each). Windows come in file order, so sentences complete in order."""
        sentences, windows = self.trainer.datamodule.examples("predict")
        index, best = self._predict_batch(batch)
        self._pending.update(zip(index.tolist(), best.tolist()))
        done = self._open_from[max(index.tolist()) + 1]      # sentences before this one are complete
        if done <= self._emitted:
            return []
        chosen = sorted(self._pending)
        tags, _ = words_to_tags(sentences, [windows[i] for i in chosen], [self._pending[i] for i in chosen],
                                self.labels)
        out = [entities_json(sentences[si], tags[si]) for si in range(self._emitted, done)]
        self._emitted = done
        for i in chosen:                                      # windows whose sentences are all written
            if all(si < done for _, si, _ in windows[i].targets):
                del self._pending[i]
        return out

    def _score(self, split: str, metric: EntityF1, prefix: str) -> None:
        """All processes' window predictions -> one tag per word of the split (words no window predicted, cut by
        max_length, are tagged O and counted), scored on this process's share of the sentences."""
        gold, windows = self.trainer.datamodule.examples(split)
        if self._outputs:
            index, preds = (torch.cat(parts) for parts in zip(*self._outputs))
        else:
            index = torch.zeros(0, dtype=torch.long, device=self.device)
            preds = torch.zeros(0, self.trainer.datamodule.max_length, dtype=torch.long, device=self.device)
        by_window = dict(zip(self.all_gather_uneven(index).tolist(), self.all_gather_uneven(preds).tolist()))
        tags, cut = words_to_tags(gold, windows, [by_window[i] for i in range(len(windows))], self.labels)
        # every sentence is scored by exactly one process, so the summed counts are exact
        mine = range(self.trainer.global_rank, len(gold), self.trainer.world_size)
        metric.update([tags[i] for i in mine], [gold[i].tags for i in mine])
        result = metric.compute()
        metric.reset()
        for name, value in result.items():
            self.log(f"{prefix}/{name}", value, prog_bar=name == "f1", sync_dist=False)
        self.log(f"{prefix}/truncated_words", float(cut))
        if prefix == "val":                                   # a few tagged sentences, to wandb
            def spans(words, sentence_tags):
                return ", ".join(f"{' '.join(words[a:b + 1])} ({kind})" for kind, a, b in entities(sentence_tags))
            self.log_table("val/samples", ["text", "prediction", "gold"],
                           [[" ".join(gold[i].words), spans(gold[i].words, tags[i]), spans(gold[i].words, gold[i].tags)]
                            for i in mine[:5]])

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self._score("val", self.val_f1, "val")

    def on_test_epoch_end(self) -> None:
        self._score("test", self.test_f1, "test")


def widen_segments(bert: BERT) -> None:
    """One segment row per casing class, each a copy of the pretrained segment-0 row (see the module doc)."""
    old = bert.embeddings.segment
    new = nn.Embedding(len(CASING), old.embedding_dim)
    with torch.no_grad():
        new.weight.copy_(old.weight[0].expand_as(new.weight))
    bert.embeddings.segment = new
    bert.config.type_vocab_size = len(CASING)


@torch.no_grad()
def tag_conll_file(checkpoint: str | Path, path: str | Path) -> list[list[str]]:
    """One tag per word of every sentence of a CoNLL file, predicted by a ner checkpoint (with its own tokenizer,
    labels and windowing)."""
    data_hp = read_checkpoint(checkpoint, task=NERTask.name).get("datamodule_hyper_parameters", {})
    model = NERTask.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    windowing = {k: v for k, v in data_hp.items() if k in ("context", "max_length", "stride", "eval_stride")}
    dm = CoNLLDataModule(val_file=str(path), **windowing)        # the windows the model was evaluated on
    dm.adopt(model.blueprint)
    dm.setup("validate")
    sentences, windows = dm.examples("val")
    preds: dict[int, list[int]] = {}
    for batch in dm.val_dataloader():
        best = model(batch["input_ids"], batch["attention_mask"], batch["casing"]).argmax(-1)
        preds.update(zip(batch["index"].tolist(), best.tolist()))
    tags, _ = words_to_tags(sentences, windows, [preds[i] for i in range(len(windows))], model.labels)
    return tags
