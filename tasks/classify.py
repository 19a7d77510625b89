"""Sentence / sentence-pair classification and regression over BERT (GLUE).

BERT -> pooled sentence vector -> dropout -> linear. The sentence vector is the tanh-pooled [CLS]
(`pooling: cls`, BERT's recipe), the mean of the last layer over real tokens (`pooling: mean`, how
sentence-transformers models such as all-MiniLM-L6-v2 were trained), or for pairs the two segments' means u, v
compared as [u, v, |u - v|, u * v] (`pooling: pair`, Sentence-BERT's classifier features). Cross-entropy for
classes, mean squared error for regression.

The encoder comes from `pretrained` (a Hugging Face directory, a hub name when online, or any of our BERT
checkpoints) or is built from scratch from `config` (BertConfig fields; vocab_size defaults to the tokenizer's).
The label set comes from the data.
"""
from __future__ import annotations

import dataclasses
from typing import Literal, Optional

import torch
from torch import nn
from torch.nn import functional as F
from torchmetrics import MeanMetric

from data.errors import ConfigError
from modeling import BERT
from tasks.base import Task
from tasks.checkpoint import Blueprint
from tasks.encoders import bert_config, new_encoder
from tasks.metrics import CLASSIFICATION_METRICS, REGRESSION_METRICS, glue_metrics


def masked_mean(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of h (B, T, D) over the positions where mask (B, T) is nonzero -> (B, D)."""
    weights = mask.unsqueeze(-1).to(h.dtype)
    return (h * weights).sum(1) / weights.sum(1).clamp(min=1)


class ClassificationTask(Task):
    name = "classify"
    monitor_mode = "max"

    def __init__(self, pooling: Literal["cls", "mean", "pair"] = "cls", classifier_dropout: Optional[float] = None,
                 metric: str = "accuracy", **kwargs):
        """
        Args:
            pooling: sentence vector: `cls` (tanh pooler over [CLS]), `mean` (mean of the last layer over tokens),
                or `pair` (sentence pairs: [u, v, |u - v|, u * v] of the two segments' means after joint encoding).
            classifier_dropout: dropout before the linear head (default: the encoder's dropout).
            metric: the monitored validation metric: accuracy, f1, mcc (classes), pearson, spearman (regression).
        """
        super().__init__(**kwargs)
        if metric not in CLASSIFICATION_METRICS + REGRESSION_METRICS:
            raise ConfigError(f"model.metric {metric!r}: choose from {', '.join(CLASSIFICATION_METRICS + REGRESSION_METRICS)}")
        if classifier_dropout is not None and not 0.0 <= classifier_dropout < 1.0:
            raise ConfigError(f"model.classifier_dropout {classifier_dropout}: must be in [0, 1)")
        self.monitor = f"val/{metric}"

    # ---- building ---------------------------------------------------------------------------------------------
    def create(self, data) -> Blueprint:
        hp = self.hparams
        regression = data.regression
        if regression != (hp.metric in REGRESSION_METRICS):
            raise ConfigError(f"model.metric {hp.metric!r} does not fit {'regression' if regression else 'classification'} data")
        if not regression and len(data.labels or []) < 2:
            raise ConfigError(f"need at least two labels to classify, got {data.labels}")
        if hp.pooling == "pair" and not data.text_pair_column:
            raise ConfigError("model.pooling pair compares the two sentences of a pair: set data.text_pair_column")
        bert = new_encoder(hp, data, pooler=True)
        bp = Blueprint(self.name, "bert", dataclasses.asdict(bert.config), data.tokenizer_json(),
                       None if regression else list(data.labels),
                       {"regression": regression, "pooling": hp.pooling, "pairs": bool(data.text_pair_column)})
        self.build(bp, bert)
        return bp

    def build(self, bp: Blueprint, bert: Optional[BERT] = None) -> None:
        self.regression, self.pooling = bp.settings["regression"], bp.settings["pooling"]
        self.bert = bert or BERT(bert_config(bp.model_config), pooler=True)
        if self.pooling in ("mean", "pair"):
            self.bert.pooler = None            # unused: DDP requires every parameter to get a gradient
        p = self.hparams.classifier_dropout
        self.dropout = nn.Dropout(self.bert.config.dropout if p is None else p)
        width = self.bert.config.hidden_size * (4 if self.pooling == "pair" else 1)
        self.head = nn.Linear(width, 1 if self.regression else len(bp.labels))
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        metrics = glue_metrics(len(bp.labels or []), self.regression)
        self.val_metrics, self.test_metrics = metrics.clone(prefix="val/"), metrics.clone(prefix="test/")
        # float64 sums: the mean is then the same, digit for digit, however DDP splits the batches
        self.val_loss, self.test_loss = MeanMetric().set_dtype(torch.float64), MeanMetric().set_dtype(torch.float64)

    def encoder(self) -> BERT:
        return self.bert

    def check_data(self, data) -> None:
        """A model trained on sentence pairs reads pairs, one trained on single sentences single sentences: scored on
        the other kind it would give numbers for inputs it never saw."""
        super().check_data(data)
        pairs = self.blueprint.settings["pairs"]
        if pairs != bool(data.text_pair_column):
            raise ConfigError("the model was trained on sentence pairs: set data.text_pair_column (the second "
                              "sentence's column)" if pairs else f"the model was trained on single sentences: remove "
                              f"data.text_pair_column {data.text_pair_column}")

    # ---- model ------------------------------------------------------------------------------------------------
    def forward(self, input_ids, token_type_ids=None, attention_mask=None) -> torch.Tensor:
        out = self.bert(input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask)
        h = out.last_hidden_state                                                  # (B, T, D)
        if self.pooling == "mean":
            pooled = masked_mean(h, attention_mask)                                # (B, D)
        elif self.pooling == "pair":
            u = masked_mean(h, attention_mask * (token_type_ids == 0))            # (B, D) first sentence
            v = masked_mean(h, attention_mask * (token_type_ids == 1))            # (B, D) second sentence
            pooled = torch.cat([u, v, (u - v).abs(), u * v], dim=-1)              # (B, 4D)
        else:
            pooled = out.pooled                                                    # (B, D)
        return self.head(self.dropout(pooled))                                     # (B, C)

    def _logits(self, batch) -> torch.Tensor:
        return self(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])

    def _loss(self, logits, labels) -> torch.Tensor:
        if self.regression:
            return F.mse_loss(logits.squeeze(-1).float(), labels.float())
        return F.cross_entropy(logits.float(), labels)

    def training_step(self, batch, batch_idx):
        loss = self._loss(self._logits(batch), batch["labels"])
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["labels"]))
        return loss

    def _eval_step(self, batch, stage: str) -> torch.Tensor:
        logits = self._logits(batch)
        labels = batch["labels"]
        metrics, loss = (self.val_metrics, self.val_loss) if stage == "val" else (self.test_metrics, self.test_loss)
        loss.update(self._loss(logits, labels), len(labels))
        metrics.update(logits.squeeze(-1).float() if self.regression else logits.argmax(-1), labels)
        self.log(f"{stage}/loss", loss, batch_size=len(labels))
        self.log_dict(metrics, prog_bar=True, batch_size=len(labels))
        return logits

    def validation_step(self, batch, batch_idx):
        logits = self._eval_step(batch, "val")
        if batch_idx == 0 and not self.trainer.sanity_checking:          # a few predictions, to wandb
            texts = self.trainer.datamodule.tokenizer.decode_batch(batch["input_ids"][:8].tolist())
            show = (lambda y: round(float(y), 4)) if self.regression else (lambda y: self.blueprint.labels[int(y)])
            predicted = logits.squeeze(-1) if self.regression else logits.argmax(-1)
            self.log_table("val/samples", ["text", "prediction", "gold"],
                           [[t, show(p), show(g)] for t, p, g in zip(texts, predicted, batch["labels"])])

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, "test")

    def predict_step(self, batch, batch_idx, dataloader_idx=0) -> list[dict]:
        """One JSON-able dict per input row, in input order: the input, the label and its probabilities (or score)."""
        logits = self._logits(batch).float()
        data = self.trainer.datamodule
        rows = []
        for i, index in enumerate(batch["index"].tolist()):
            row = data.predict_text(index)
            if self.regression:
                row["score"] = round(logits[i, 0].item(), 6)
            else:
                probs = logits[i].softmax(-1).tolist()
                names = self.blueprint.labels
                row["label"] = names[probs.index(max(probs))]
                row["probabilities"] = {name: round(p, 6) for name, p in zip(names, probs)}
            rows.append(row)
        return rows
