"""Sentence / sentence-pair classification and regression over BERT (GLUE).

BERT -> pooled sentence vector -> dropout -> linear. The sentence vector is the tanh-pooled [CLS]
(`pooling: cls`, BERT's recipe) or the mean of the last layer over real tokens (`pooling: mean`, how
sentence-transformers models such as all-MiniLM-L6-v2 were trained). Cross-entropy for classes, mean
squared error for regression. AdamW without decay on biases and LayerNorm, linear warm-up and decay.

The backbone comes from `pretrained` (a Hugging Face directory, a hub name when online, or one of our
`.ckpt` files) or is built from scratch from `backbone` (BertConfig fields). The label set comes from the
datamodule, so the network is built in `configure_model`; when a checkpoint is being restored it is built
from the checkpoint instead (`on_load_checkpoint`), so `predict` needs nothing but the `.ckpt`.
"""
from __future__ import annotations

import dataclasses
from typing import Literal, Optional

import pytorch_lightning as pl
import torch
from torch import nn
from torch.nn import functional as F

from data.errors import ConfigError
from modeling import BERT, BertConfig
from tasks.encoders import load_bert_encoder
from tasks.metrics import CLASSIFICATION_METRICS, REGRESSION_METRICS, glue_metrics
from tasks.optim import layerwise_groups, param_groups, warmup_schedule


def load_backbone(pretrained: Optional[str], backbone: Optional[dict], vocab_size: Optional[int] = None,
                  dropout: Optional[float] = None) -> BERT:
    """A BERT from a HF directory / hub name, from the encoder inside one of our .ckpt files, or new. `dropout`, if
    given, sets its hidden and attention dropout."""
    if pretrained and backbone:
        raise ConfigError("set model.pretrained or model.backbone, not both")
    if pretrained:
        return load_bert_encoder(pretrained, pooler=True, dropout=dropout)[0]
    if not backbone:
        raise ConfigError("set model.pretrained (a checkpoint) or model.backbone (BertConfig fields, from scratch)")
    config = dict(backbone)
    if vocab_size is not None:
        config.setdefault("vocab_size", vocab_size)
    if dropout is not None:
        config.update(dropout=dropout, attention_dropout=dropout)
    return BERT(BertConfig(**config), pooler=True)


def masked_mean(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of h (B, T, D) over the positions where mask (B, T) is nonzero -> (B, D)."""
    weights = mask.unsqueeze(-1).to(h.dtype)
    return (h * weights).sum(1) / weights.sum(1).clamp(min=1)


class ClassificationTask(pl.LightningModule):
    def __init__(
        self,
        pretrained: Optional[str] = None,
        backbone: Optional[dict] = None,
        pooling: Literal["cls", "mean", "pair"] = "cls",
        classifier_dropout: Optional[float] = None,
        backbone_dropout: Optional[float] = None,
        metric: str = "accuracy",
        lr: float = 5e-5,
        weight_decay: float = 0.01,
        warmup_ratio: float = 0.06,
        warmup_steps: Optional[int] = None,
        schedule: Literal["linear", "cosine", "constant"] = "linear",
        min_lr_ratio: float = 0.0,
        layer_decay: float = 1.0,
    ):
        """
        Args:
            pretrained: Hugging Face checkpoint directory, hub name (online), or our .ckpt (its BERT weights).
            backbone: BertConfig fields for a model trained from scratch (vocab_size defaults to the tokenizer's).
            pooling: sentence vector: `cls` (tanh pooler over [CLS]), `mean` (mean of last layer over tokens), or
                `pair` (sentence pairs: the means u and v of each segment's tokens after joint encoding, compared
                as [u, v, |u - v|, u * v], the features of Sentence-BERT's classifier).
            classifier_dropout: dropout before the linear head (default: the backbone's dropout).
            backbone_dropout: hidden and attention dropout inside the encoder (default: the checkpoint's).
            metric: the monitored validation metric: accuracy, f1, mcc (classes), pearson, spearman (regression).
            lr, weight_decay: AdamW peak learning rate and decay (not applied to biases and LayerNorm).
            warmup_ratio, warmup_steps: linear warm-up length (steps wins over ratio of all steps).
            schedule, min_lr_ratio: decay after warm-up (linear, cosine or constant) and its floor.
            layer_decay: layer-wise learning-rate decay: the head and top layer train at `lr`, each layer below at
                `layer_decay` times the one above (1.0: one learning rate for all).
        """
        super().__init__()
        if metric not in CLASSIFICATION_METRICS + REGRESSION_METRICS:
            raise ConfigError(f"model.metric {metric!r}: choose from {', '.join(CLASSIFICATION_METRICS + REGRESSION_METRICS)}")
        for key, p in (("classifier_dropout", classifier_dropout), ("backbone_dropout", backbone_dropout)):
            if p is not None and not 0.0 <= p < 1.0:
                raise ConfigError(f"model.{key} {p}: must be in [0, 1)")
        if not 0.0 < layer_decay <= 1.0:
            raise ConfigError(f"model.layer_decay {layer_decay}: must be in (0, 1]")
        self.save_hyperparameters()
        self.monitor, self.monitor_mode = f"val/{metric}", "max"
        self.backbone: Optional[BERT] = None
        self.checkpoint_to_restore: Optional[str] = None  # set by run.py (--ckpt_path)
        self.label_names: Optional[list[str]] = None
        self.regression = False

    # ---- building ---------------------------------------------------------------------------------------
    def build(self, backbone: BERT, num_labels: int, regression: bool = False,
              label_names: Optional[list[str]] = None) -> None:
        hp = self.hparams
        if regression and hp.metric not in REGRESSION_METRICS or not regression and hp.metric in REGRESSION_METRICS:
            kind = "regression" if regression else "classification"
            raise ConfigError(f"model.metric {hp.metric!r} does not fit {kind} data")
        if hp.pooling in ("mean", "pair"):
            backbone.pooler = None  # unused: DDP requires every parameter to get a gradient
        self.backbone = backbone
        self.regression = regression
        self.label_names = label_names
        p = backbone.config.dropout if hp.classifier_dropout is None else hp.classifier_dropout
        self.dropout = nn.Dropout(p)
        width = backbone.config.hidden_size * (4 if hp.pooling == "pair" else 1)
        self.head = nn.Linear(width, 1 if regression else num_labels)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        metrics = glue_metrics(num_labels, regression)
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")

    def configure_model(self) -> None:
        if self.backbone is not None or self.checkpoint_to_restore:
            return  # already built, or built from the checkpoint in on_load_checkpoint
        dm = self.trainer.datamodule
        if dm.num_labels < 1 or (not dm.hparams.regression and dm.num_labels < 2):
            raise ValueError(f"need at least two labels to classify, got {dm.label_names}")
        if self.hparams.pooling == "pair" and not dm.hparams.text_pair_column:
            raise ConfigError("model.pooling pair compares the two sentences of a pair: set data.text_pair_column")
        vocab = dm.tokenizer.get_vocab_size() if dm.tokenizer is not None else None
        self.build(load_backbone(self.hparams.pretrained, self.hparams.backbone, vocab, self.hparams.backbone_dropout),
                   dm.num_labels, dm.hparams.regression, dm.label_names)
        if vocab is not None and vocab > self.backbone.config.vocab_size:
            raise ConfigError(f"tokenizer has {vocab} tokens but the model's vocabulary has "
                             f"{self.backbone.config.vocab_size}")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["backbone_config"] = dataclasses.asdict(self.backbone.config)
        checkpoint["labels"] = self.label_names
        checkpoint["regression"] = self.regression
        checkpoint["num_labels"] = self.head.out_features

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if self.backbone is None:
            self.build(BERT(BertConfig(**checkpoint["backbone_config"]), pooler=True),
                       checkpoint["num_labels"], checkpoint["regression"], checkpoint["labels"])

    # ---- model ------------------------------------------------------------------------------------------
    def forward(self, input_ids, token_type_ids=None, attention_mask=None) -> torch.Tensor:
        out = self.backbone(input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask)
        h = out.last_hidden_state                                                  # (B, T, D)
        if self.hparams.pooling == "mean":
            pooled = masked_mean(h, attention_mask)                                # (B, D)
        elif self.hparams.pooling == "pair":
            u = masked_mean(h, attention_mask * (token_type_ids == 0))            # (B, D) first sentence
            v = masked_mean(h, attention_mask * (token_type_ids == 1))            # (B, D) second sentence
            pooled = torch.cat([u, v, (u - v).abs(), u * v], dim=-1)              # (B, 4D)
        else:
            pooled = out.pooled                                                    # (B, D)
        return self.head(self.dropout(pooled))

    def _logits(self, batch) -> torch.Tensor:
        return self(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])

    def _loss(self, logits, labels) -> torch.Tensor:
        if self.regression:
            return F.mse_loss(logits.squeeze(-1).float(), labels.float())
        return F.cross_entropy(logits.float(), labels)

    def _predictions(self, logits) -> torch.Tensor:
        return logits.squeeze(-1).float() if self.regression else logits.argmax(-1)

    def training_step(self, batch, batch_idx):
        loss = self._loss(self._logits(batch), batch["labels"])
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["labels"]))
        return loss

    def _eval_step(self, batch, metrics, stage: str) -> None:
        logits = self._logits(batch)
        n = len(batch["labels"])
        self.log(f"{stage}/loss", self._loss(logits, batch["labels"]), batch_size=n, sync_dist=True)
        metrics.update(self._predictions(logits), batch["labels"])
        self.log_dict(metrics, prog_bar=True, batch_size=n)

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, self.val_metrics, "val")

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, self.test_metrics, "test")

    def predict_step(self, batch, batch_idx, dataloader_idx=0) -> list[dict]:
        logits = self._logits(batch).float()
        dm = getattr(self.trainer, "datamodule", None)
        rows = []
        for i, index in enumerate(batch["index"].tolist()):
            row = {"index": index, **(dm.predict_text(index) if hasattr(dm, "predict_text") else {})}
            if self.regression:
                row["score"] = round(logits[i, 0].item(), 6)
            else:
                probs = logits[i].softmax(-1).tolist()
                names = self.label_names or [str(k) for k in range(len(probs))]
                row["label"] = names[max(range(len(probs)), key=probs.__getitem__)]
                row["probabilities"] = {name: round(p, 6) for name, p in zip(names, probs)}
            rows.append(row)
        return rows

    # ---- optimisation -----------------------------------------------------------------------------------
    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        """Lightning refuses to clip a fused optimizer's gradients under any mixed precision, because fp16's
        loss scaler would have to unscale them first. bf16 autocast has no scaler: clip directly."""
        if gradient_clip_val and self.trainer.precision == "bf16-mixed" and gradient_clip_algorithm in (None, "norm"):
            torch.nn.utils.clip_grad_norm_(self.parameters(), gradient_clip_val)
            return
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def configure_optimizers(self):
        hp = self.hparams
        groups = layerwise_groups(self.backbone, hp.lr, hp.weight_decay, hp.layer_decay)
        groups += [{**g, "lr": hp.lr} for g in param_groups(self.head, hp.weight_decay, "head") if g["params"]]
        optimizer = torch.optim.AdamW(groups, lr=hp.lr, fused=self.device.type in ("cpu", "cuda"))
        total = int(self.trainer.estimated_stepping_batches)
        warmup = hp.warmup_steps if hp.warmup_steps is not None else int(hp.warmup_ratio * total)
        scheduler = warmup_schedule(optimizer, warmup, total, hp.schedule, hp.min_lr_ratio)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
