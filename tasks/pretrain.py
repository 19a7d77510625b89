"""BERT pre-training (Devlin et al. 2019): masked LM + next-sentence prediction, from scratch or continuing a BERT.

    loss = CE(MLM logits at the chosen positions, the original tokens) + CE(NSP logits of [CLS], IsNext/NotNext)

The vocabulary projection runs only on the ~15 % chosen positions (`pretraining_logits`), never on all B x T.

The network is `self.bert`: a BERT with its pooler and both pre-training heads (the MLM head tied to the word
embeddings), built from `model.config` (from scratch, any size; vocab_size defaults to the tokenizer's) or loaded from
`model.pretrained` (a Hugging Face directory or any of our BERT checkpoints; heads it lacks, as all-MiniLM-L6-v2's,
are created, and the log names what was loaded and what is new). Its weights live under `bert.*`, so
`run.py classify|ner --model.pretrained <pretrain .ckpt>` starts from the encoder, and `modeling.hf.save_bert(
self.bert)` writes a directory that `transformers.BertForPreTraining` loads (heads included).

Metrics on the held-out documents (`val/`) or `data.test_files` (`test/`), from summed torchmetrics states, so DDP
is exact: mlm_loss (mean over the chosen positions), mlm_ppl = exp(mlm_loss), mlm_acc, nsp_loss, nsp_acc, loss.
`pretrain predict` fills the [MASK] tokens of each input line (`data.top_k` fillers per mask).
"""
from __future__ import annotations

import dataclasses

import torch
from pytorch_lightning.utilities import rank_zero_info
from torch import Tensor
from torch.nn import functional as F
from torchmetrics import Metric

from data.pretrain import IGNORE_INDEX, IS_NEXT, PretrainDataModule
from modeling import BERT
from tasks.base import Task
from tasks.checkpoint import Blueprint
from tasks.encoders import bert_config, new_encoder

TIED = "mlm_head.word_embeddings.weight"                # the MLM decoder: the word embeddings themselves


# ---------------------------------------------------------------------------------------------------------
# The loss (benchmarks/pretrain_throughput.py times these functions too)
# ---------------------------------------------------------------------------------------------------------
def pretraining_logits(model: BERT, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """(MLM logits at the N chosen positions (N, V), their original ids (N,), NSP logits (B, 2)); the vocabulary
    projection runs on the N chosen hidden states only."""
    out = model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
    chosen = batch["mlm_labels"] != IGNORE_INDEX                                   # (B, T)
    mlm_logits = model.mlm_logits(out.last_hidden_state[chosen])                   # (N, V)
    return mlm_logits, batch["mlm_labels"][chosen], model.nsp_logits(out.pooled)   # ..., (N,), (B, 2)


def pretraining_losses(model: BERT, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """(masked-LM cross-entropy, mean over the chosen positions; next-sentence cross-entropy, mean over the
    examples). A batch without a chosen position contributes an MLM loss of 0, not NaN."""
    mlm_logits, targets, nsp_logits = pretraining_logits(model, batch)
    mlm = F.cross_entropy(mlm_logits.float(), targets, reduction="sum") / max(targets.numel(), 1)
    return mlm, F.cross_entropy(nsp_logits.float(), batch["nsp_labels"])


def pretraining_loss(model: BERT, batch: dict[str, Tensor]) -> Tensor:
    """BERT's pre-training loss: masked LM + next sentence."""
    mlm, nsp = pretraining_losses(model, batch)
    return mlm + nsp


class PretrainingMetrics(Metric):
    """Sums over batches and processes: the masked LM's cross-entropy and hits over the chosen positions, the
    next-sentence prediction's over the examples. `compute` divides once, so the means are token-weighted and the
    same under DDP as in one process."""

    full_state_update = False
    SUMS = ("mlm_loss_sum", "mlm_hits", "mlm_tokens", "nsp_loss_sum", "nsp_hits", "nsp_examples")

    def __init__(self):
        super().__init__()
        for name in self.SUMS:
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, mlm_logits: Tensor, mlm_targets: Tensor, nsp_logits: Tensor, nsp_labels: Tensor) -> None:
        """mlm_logits (N, V) and mlm_targets (N,) at the chosen positions; nsp_logits (B, 2), nsp_labels (B,)."""
        mlm_logits, nsp_logits = mlm_logits.float(), nsp_logits.float()
        # per-token losses summed in float64: the sum must not depend on which examples share a batch (DDP)
        self.mlm_loss_sum += F.cross_entropy(mlm_logits, mlm_targets, reduction="none").double().sum()
        self.mlm_hits += (mlm_logits.argmax(-1) == mlm_targets).sum()
        self.mlm_tokens += mlm_targets.numel()
        self.nsp_loss_sum += F.cross_entropy(nsp_logits, nsp_labels, reduction="none").double().sum()
        self.nsp_hits += (nsp_logits.argmax(-1) == nsp_labels).sum()
        self.nsp_examples += nsp_labels.numel()

    def compute(self) -> dict[str, Tensor]:
        mlm_loss = self.mlm_loss_sum / self.mlm_tokens
        nsp_loss = self.nsp_loss_sum / self.nsp_examples
        return {"mlm_loss": mlm_loss, "mlm_ppl": mlm_loss.exp(), "mlm_acc": self.mlm_hits / self.mlm_tokens,
                "nsp_loss": nsp_loss, "nsp_acc": self.nsp_hits / self.nsp_examples, "loss": mlm_loss + nsp_loss}


def weights_report(bert: BERT, source: str) -> str:
    """One line: which weights came from `source` (counted per module) and which are new (by name)."""
    new = [k for k in bert.load_report["initialised"] if k != TIED]
    loaded = [k for k in bert.state_dict() if k not in new and k != TIED]
    modules: dict[str, int] = {}
    for key in loaded:
        module = "layers.*" if key.startswith("layers.") else key.split(".")[0]
        modules[module] = modules.get(module, 0) + 1
    counts = ", ".join(f"{m} ({n})" for m, n in modules.items())
    return (f"pretrain: from {source}: loaded {len(loaded)} tensors: {counts}; new (initialised): "
            f"{', '.join(new) or 'none'}; {TIED} is tied to embeddings.token.weight")


# ---------------------------------------------------------------------------------------------------------
# LightningModule
# ---------------------------------------------------------------------------------------------------------
class PretrainTask(Task):
    name = "pretrain"
    monitor = "val/mlm_loss"
    monitor_mode = "min"

    def __init__(self, **kwargs):
        """The shared settings (tasks.base.Task). To train only the pooler and the pre-training heads, with the encoder
        as loaded (e.g. new heads on all-MiniLM-L6-v2 before measuring its masked-LM loss), freeze all of it:
        `model.freeze_depth` = num_layers + 1 (the embeddings, with the tied MLM decoder, and every layer)."""
        super().__init__(**kwargs)
        self.val_metrics, self.test_metrics = PretrainingMetrics(), PretrainingMetrics()

    # ---- building -------------------------------------------------------------------------------------------
    def create(self, data: PretrainDataModule) -> Blueprint:
        hp = self.hparams
        bert = new_encoder(hp, data, pooler=True, pretraining_heads=True)
        if hp.pretrained:
            rank_zero_info(weights_report(bert, hp.pretrained))
        bp = Blueprint(self.name, "bert", dataclasses.asdict(bert.config), data.tokenizer_json())
        self.build(bp, bert)
        return bp

    def build(self, bp: Blueprint, bert: BERT | None = None) -> None:
        self.bert = bert or BERT(bert_config(bp.model_config), pooler=True, pretraining_heads=True)

    def encoder(self) -> BERT:
        return self.bert

    # ---- training and evaluation ----------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        mlm, nsp = pretraining_losses(self.bert, batch)
        loss = mlm + nsp
        size = batch["input_ids"].size(0)
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        self.log_dict({"train/mlm_loss": mlm, "train/nsp_loss": nsp}, batch_size=size)
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self.val_metrics.update(*pretraining_logits(self.bert, batch), batch["nsp_labels"])

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self.test_metrics.update(*pretraining_logits(self.bert, batch), batch["nsp_labels"])

    def _log_metrics(self, metrics: PretrainingMetrics, stage: str) -> None:
        values = metrics.compute()                               # summed over processes already
        metrics.reset()
        for name, value in values.items():
            self.log(f"{stage}/{name}", value.float(), prog_bar=name in ("mlm_loss", "mlm_acc"), sync_dist=False)

    def on_validation_epoch_end(self) -> None:
        self._log_metrics(self.val_metrics, "val")

    def on_test_epoch_end(self) -> None:
        self._log_metrics(self.test_metrics, "test")

    # ---- predict ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def predict_step(self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> list[dict]:
        """One dict per input line, in order: the data's top_k fillers of each [MASK] with the MLM head's probability
        (special tokens never fill), the line with each mask filled by its best filler, and for a line with a tab
        the probability that B follows A."""
        data = self.trainer.datamodule
        tokenizer, special = data.tokenizer, data.masker().special
        out = self.bert(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
        is_mask = batch["input_ids"] == special.mask                                          # (B, T)
        probs = self.bert.mlm_logits(out.last_hidden_state[is_mask]).float().softmax(-1)     # (M, V)
        probs[:, list(special.all())] = 0.0
        best_p, best_id = probs.topk(min(data.top_k, probs.size(-1)), dim=-1)        # (M, k) each
        is_next = self.bert.nsp_logits(out.pooled).float().softmax(-1)[:, IS_NEXT]          # (B,)
        rows, m = [], 0
        for i, index in enumerate(batch["index"].tolist()):
            length = int(batch["attention_mask"][i].sum())
            ids, types = batch["input_ids"][i, :length].tolist(), batch["token_type_ids"][i, :length].tolist()
            masks = []
            for position in is_mask[i].nonzero().flatten().tolist():
                masks.append({"position": position, "fillers": [
                    {"token": tokenizer.id_to_token(t), "p": round(p, 6)}
                    for t, p in zip(best_id[m].tolist(), best_p[m].tolist())]})
                ids[position] = int(best_id[m, 0])
                m += 1
            segments = [[t for t, s in zip(ids, types) if s == segment] for segment in sorted(set(types))]
            row = {"line": index + 1, "text": data.predict_text(index), "masks": masks,
                   "filled": "\t".join(tokenizer.decode(segment) for segment in segments)}
            if len(segments) > 1:
                row["is_next"] = round(float(is_next[i]), 6)
            if batch["truncated"][i]:
                row["truncated"] = True
            rows.append(row)
        return rows
