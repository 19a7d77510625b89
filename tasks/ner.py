"""Named-entity tagging over BERT: fine-tuning, or a tagger on frozen features (Devlin et al. 2019, 5.3).

`mode="finetune"` trains BERT and a linear layer over each word's first sub-token. `mode="features"` freezes
BERT and feeds `combine_layers(hidden_states, layers)` ("embeddings", "last", "second_to_last",
"sum_last_four", "concat_last_four", ...) to the tagger (`tagger="bilstm"`, as the paper, or "linear").
`casing=True` gives the encoder the capitalisation an uncased vocabulary throws away: the segment embedding
table is widened to one row per casing class (all rows start as the pretrained segment-0 row, so training
starts from the pretrained model exactly) and each sub-token gets its word's class as its segment id.

Evaluation maps window predictions back to one tag per original word and scores entities with `EntityF1`
(equal to seqeval). The checkpoint carries the label names, the tokenizer and the encoder's config, so
`predict` needs nothing but the .ckpt.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from data.conll import CASING, IGNORE, entities_json, words_to_tags
from data.tokenization import tokenizer_to_str
from modeling import BERT, BertConfig, combine_layers
from modeling.bert import combined_width
from tasks.encoders import load_bert_encoder
from tasks.optim import param_groups, warmup_schedule
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


class NERTask(pl.LightningModule):
    monitor = "val/f1"          # run.py keeps the checkpoint with the best dev entity F1
    monitor_mode = "max"

    def __init__(self, pretrained: str | None = None, labels: list[str] | None = None,
                 bert_config: dict | None = None,
                 mode: str = "finetune", layers: str = "last", tagger: str = "linear", lstm_hidden: int = 256,
                 dropout: float = 0.1, casing: bool = False, lr: float = 5e-5, head_lr: float | None = None,
                 weight_decay: float = 0.01, warmup_ratio: float = 0.1, schedule: str = "linear",
                 strict_eval: bool = False):
        """
        Args:
            pretrained: Hugging Face BERT directory (or hub name) or one of our .ckpt files; ignored when the
                task itself is restored from a checkpoint (bert_config is set then).
            labels: BIO label names; read from the training data when not given, then stored.
            mode: "finetune" or "features" (frozen encoder, features from `layers`).
            layers: combine_layers choice for the features.
            tagger: "linear" or "bilstm" head.
            casing: feed each word's capitalisation class as the segment id (see module doc).
            lr, head_lr: peak learning rates of the encoder and of the head (head_lr defaults to lr).
            warmup_ratio, schedule: linear warm-up over this fraction of steps, then "linear"/"cosine"/"constant".
            strict_eval: score entities as seqeval's strict IOB2 mode instead of the default (conlleval) mode.
        """
        super().__init__()
        if mode not in ("finetune", "features"):
            raise ValueError(f"mode must be 'finetune' or 'features', got {mode!r}")
        self.save_hyperparameters()
        self.tokenizer_json: str | None = None    # the serialised tokenizer, saved in every checkpoint
        if bert_config is not None:               # restored from our checkpoint: weights come from the state dict
            self.bert = BERT(BertConfig(**bert_config), pooler=False)
        else:
            if not pretrained:
                raise ValueError("ner: model.pretrained is required (a BERT directory or .ckpt)")
            self.bert, ckpt_tokenizer = load_bert_encoder(pretrained, pooler=False)
            if casing and self.bert.embeddings.segment.num_embeddings != len(CASING):
                self._widen_segments()
            self.hparams.bert_config = dataclasses.asdict(self.bert.config)
            self.tokenizer_json = ckpt_tokenizer
        if mode == "features":
            self.bert.requires_grad_(False)
        self.head: TaggerHead | None = None
        if labels:
            self._build_head(labels)

    # ---------------------------------------------------------------- construction
    def _widen_segments(self) -> None:
        old = self.bert.embeddings.segment
        new = nn.Embedding(len(CASING), old.embedding_dim)
        with torch.no_grad():
            new.weight.copy_(old.weight[0].expand_as(new.weight))
        self.bert.embeddings.segment = new
        self.bert.config.type_vocab_size = len(CASING)

    def _build_head(self, labels: list[str]) -> None:
        self.hparams.labels = list(labels)
        h = self.hparams
        width = combined_width(self.bert.config, h.layers) if h.mode == "features" else self.bert.config.hidden_size
        self.head = TaggerHead(width, len(labels), h.tagger, h.lstm_hidden, h.dropout)
        self._head_kind = h.tagger
        types = sorted({t[2:] for t in labels if t != "O"})
        self.val_f1 = EntityF1(types, strict=h.strict_eval)
        self.test_f1 = EntityF1(types, strict=h.strict_eval)

    @property
    def labels(self) -> list[str] | None:
        return self.hparams.labels

    def setup(self, stage: str) -> None:
        """Labels and tokenizer from the data (a checkpoint being restored overrides them: on_load_checkpoint)."""
        dm = self.trainer.datamodule if self.trainer is not None else None
        if dm is None:
            return
        if getattr(dm, "tokenizer", None) is not None:
            self.tokenizer_json = tokenizer_to_str(dm.tokenizer)
        if self.head is None:
            if dm.labels is None and not dm.hparams.train_file:
                return                     # predict/test from a checkpoint: on_load_checkpoint builds the head
            self._build_head(dm.read_labels())
        elif dm.labels is not None and list(dm.labels) != list(self.labels):
            raise ValueError(f"ner: the data's labels {dm.labels} differ from the model's {self.labels}")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["tokenizer_json"] = self.tokenizer_json

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._adopt(checkpoint.get("hyper_parameters", {}), checkpoint.get("tokenizer_json"))

    def _adopt(self, hp: dict, tokenizer_json: str | None) -> None:
        """Shape this task like the checkpoint's, so its state dict loads (the config may say otherwise), and
        make the data use the checkpoint's tokenizer. Called before Lightning loads the state dict."""
        if hp.get("bert_config") and hp["bert_config"] != dataclasses.asdict(self.bert.config):
            self.bert = BERT(BertConfig(**hp["bert_config"]), pooler=False)
            self.hparams.bert_config = dict(hp["bert_config"])
        self.hparams.casing = bool(hp.get("casing", self.hparams.casing))
        for key in ("mode", "layers", "tagger", "lstm_hidden", "dropout"):
            if key in hp:
                self.hparams[key] = hp[key]
        if hp.get("labels") and (self.head is None or list(hp["labels"]) != list(self.labels)
                                 or hp.get("tagger") != getattr(self, "_head_kind", None)):
            self._build_head(hp["labels"])
        if self.hparams.mode == "features":
            self.bert.requires_grad_(False)
        dm = self.trainer.datamodule if self._trainer is not None else None
        if tokenizer_json:
            self.tokenizer_json = tokenizer_json
            if dm is not None:
                dm.use_vocabulary(tokenizer_json, hp.get("labels"))

    # ---------------------------------------------------------------- forward
    def forward(self, input_ids: Tensor, attention_mask: Tensor, casing: Tensor | None = None) -> Tensor:
        segments = casing if self.hparams.casing else None
        if self.hparams.mode == "features":
            self.bert.eval()
            with torch.no_grad():
                out = self.bert(input_ids, segments, attention_mask, output_hidden_states=True)
            features = combine_layers(out.hidden_states, self.hparams.layers)
        else:
            features = self.bert(input_ids, segments, attention_mask).last_hidden_state
        return self.head(features, attention_mask)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        logits = self(batch["input_ids"], batch["attention_mask"], batch["casing"])
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORE)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].size(0))
        return loss

    # ---------------------------------------------------------------- evaluation
    def _predict_batch(self, batch: dict) -> tuple[Tensor, Tensor]:
        logits = self(batch["input_ids"], batch["attention_mask"], batch["casing"])
        best = logits.argmax(-1)
        return batch["index"], best

    def on_validation_epoch_start(self) -> None:
        self._outputs = []

    on_test_epoch_start = on_validation_epoch_start

    def on_predict_epoch_start(self) -> None:
        windows = self.trainer.datamodule.windows["predict"]
        self._pending: dict[int, list[int]] = {}
        self._emitted = 0
        # _open_from[w]: the first sentence that window w or a later one still predicts words of
        self._open_from = [len(self.trainer.datamodule.sentences["predict"])] * (len(windows) + 1)
        for w in range(len(windows) - 1, -1, -1):
            first = min((si for _, si, _ in windows[w].targets), default=self._open_from[w + 1])
            self._open_from[w] = min(first, self._open_from[w + 1])

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._outputs.append(self._predict_batch(batch))

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._outputs.append(self._predict_batch(batch))

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        """Entities of every input sentence whose words have all been predicted by now, as JSON-able dicts
        (run.py writes one line each). Windows come in file order, so sentences complete in order."""
        dm = self.trainer.datamodule
        windows, sentences = dm.windows["predict"], dm.sentences["predict"]
        index, best = self._predict_batch(batch)
        for i, row in zip(index.tolist(), best.tolist()):
            self._pending[i] = row
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

    def _word_tags(self, split: str) -> tuple[list[list[str]], list[int], int]:
        """All processes' window predictions -> tags per word of the split; and the sentence indices this
        process scores (every sentence is scored by exactly one process, so summed counts are exact); and the
        number of words no window predicted (cut by max_length, tagged O)."""
        dm = self.trainer.datamodule
        windows, sentences = dm.windows[split], dm.sentences[split]
        width = dm.hparams.max_length
        index = torch.cat([i for i, _ in self._outputs]) if self._outputs else torch.zeros(0, dtype=torch.long)
        preds = torch.full((len(index), width), 0, dtype=torch.long, device=index.device)
        row = 0
        for _, best in self._outputs:
            preds[row:row + best.size(0), :best.size(1)] = best
            row += best.size(0)
        world, rank = self.trainer.world_size, self.trainer.global_rank
        if world > 1:
            index = self.all_gather(index).flatten(0, 1)
            preds = self.all_gather(preds).flatten(0, 1)
        by_window: dict[int, list[int]] = {}
        for i, p in zip(index.tolist(), preds.tolist()):
            by_window[i] = p
        ordered = [by_window.get(i, [0] * width) for i in range(len(windows))]
        tags, cut = words_to_tags(sentences, windows, ordered, self.labels)
        mine = [i for i in range(len(sentences)) if i % world == rank]
        return tags, mine, cut

    def _score(self, split: str, metric: EntityF1, prefix: str) -> None:
        tags, mine, cut = self._word_tags(split)
        gold = self.trainer.datamodule.sentences[split]
        metric.update([tags[i] for i in mine], [gold[i].tags for i in mine])
        result = metric.compute()
        metric.reset()
        for name, value in result.items():
            self.log(f"{prefix}/{name}", value, prog_bar=name == "f1", sync_dist=False)
        self.log(f"{prefix}/truncated_words", float(cut))

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        self._score("val", self.val_f1, "val")

    def on_test_epoch_end(self) -> None:
        self._score("test", self.test_f1, "test")

    # ---------------------------------------------------------------- optimisation
    def configure_optimizers(self):
        h = self.hparams
        groups = [{**g, "lr": lr} for module, lr in ((self.bert, h.lr), (self.head, h.head_lr or h.lr))
                  for g in param_groups(module, h.weight_decay) if g["params"]]
        optimizer = torch.optim.AdamW(groups, lr=h.lr, fused=True)
        total = self.trainer.estimated_stepping_batches
        scheduler = warmup_schedule(optimizer, int(h.warmup_ratio * total), total, h.schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


@torch.no_grad()
def tag_conll_file(checkpoint: str | Path, path: str | Path) -> list[list[str]]:
    """One tag per word of every sentence of a CoNLL file, predicted by a ner checkpoint (with its own tokenizer,
    labels and windowing)."""
    from data.conll import CoNLLDataModule
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    model = NERTask.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    data_hp = ckpt.get("datamodule_hyper_parameters", {})
    dm = CoNLLDataModule(val_file=str(path), context=data_hp.get("context", "sentence"),
                         max_length=data_hp.get("max_length", 128), eval_stride=data_hp.get("eval_stride"),
                         stride=data_hp.get("stride"))
    dm.use_vocabulary(ckpt["tokenizer_json"], model.labels)
    dm.setup("validate")
    preds: dict[int, list[int]] = {}
    for batch in dm.val_dataloader():
        best = model(batch["input_ids"], batch["attention_mask"], batch["casing"]).argmax(-1)
        for i, row in zip(batch["index"].tolist(), best.tolist()):
            preds[i] = row
    tags, _ = words_to_tags(dm.sentences["val"], dm.windows["val"], [preds[i] for i in range(len(preds))],
                            model.labels)
    return tags

