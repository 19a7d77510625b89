"""Extractive question answering over BERT (Devlin et al. 2019, section 4.2: SQuAD).

A start vector S and an end vector E score every token of `[CLS] question [SEP] context part [SEP]`: the start
logit of token i is S·T_i and its end logit E·T_i (one linear layer of 2 outputs over the last hidden states T).
Training maximises the log-likelihood of the labelled start and end tokens, loss = (CE(start) + CE(end)) / 2, with
padding masked out of both softmaxes; a window that does not hold the answer is labelled [CLS] (data/squad.py).
The answer is the span (i, j), j >= i, that maximises S·T_i + E·T_j over all windows of a question
(`best_answers`: n-best starts and ends, at most `max_answer_length` tokens, inside the context); SQuAD 2.0
answers nothing when the [CLS] score beats the best span by more than `null_threshold`.

Evaluation: every process predicts its share of the windows; the logits are gathered, the answers found once over
the whole set, and each question is scored by exactly one process, so EM and F1 (tasks/squad_metric.py) are exact
under DDP. The checkpoint carries the tokenizer and the encoder's config, so `predict` needs nothing but the .ckpt.
"""
from __future__ import annotations

import dataclasses
import math
from collections import Counter

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from data.errors import ConfigError
from data.squad import IGNORE_TARGET, best_answers
from modeling import BERT
from tasks.base import Task
from tasks.checkpoint import Blueprint
from tasks.encoders import bert_config, new_encoder
from tasks.squad_metric import SquadScores


def span_loss(logits: Tensor, positions: Tensor) -> Tensor:
    """Cross-entropy of start (or end) logits (B, T) against one position per window (B,), or against each of a
    window's answers (B, A), padded with IGNORE_TARGET: the mean over all (window, answer) pairs of the batch, what
    the same windows repeated once per answer would give."""
    if positions.dim() == 2:
        logits = logits[:, :, None].expand(-1, -1, positions.shape[1])        # (B, T, A): the logits per answer
    return F.cross_entropy(logits, positions, ignore_index=IGNORE_TARGET)


class QATask(Task):
    name = "qa"
    monitor = "val/f1"          # the checkpoint with the best evaluation F1 is kept
    monitor_mode = "max"
    decoding = ("n_best", "max_answer_length", "null_threshold")         # each test / predict run's own

    def __init__(self, n_best: int = 20, max_answer_length: int = 30, null_threshold: float = 0.0, **kwargs):
        """
        Args:
            n_best: start and end candidates per window that are paired into spans.
            max_answer_length: the longest answer, in tokens.
            null_threshold: SQuAD 2.0: no answer when the [CLS] score exceeds the best span's by more than this.
        """
        super().__init__(**kwargs)
        for key, value in (("n_best", n_best), ("max_answer_length", max_answer_length)):
            if value < 1:
                raise ConfigError(f"model.{key} {value}: must be at least 1")

    # ---------------------------------------------------------------- construction
    def create(self, data) -> Blueprint:
        h = self.hparams
        bert = new_encoder(h, data, pooler=False)
        bp = Blueprint(self.name, "bert", dataclasses.asdict(bert.config), data.tokenizer_json(),
                       settings={"version_2": data.version_2})
        self.build(bp, bert)
        return bp

    def build(self, bp: Blueprint, bert: BERT | None = None) -> None:
        self.bert = bert or BERT(bert_config(bp.model_config), pooler=False)
        self.span = nn.Linear(self.bert.config.hidden_size, 2)          # the start vector S and end vector E
        nn.init.normal_(self.span.weight, std=0.02)
        nn.init.zeros_(self.span.bias)
        self.version_2 = bp.settings["version_2"]
        self.val_scores, self.test_scores = SquadScores(), SquadScores()

    def encoder(self) -> BERT:
        return self.bert

    # ---------------------------------------------------------------- forward
    def forward(self, input_ids: Tensor, token_type_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        """Start and end logits (B, T) each, -inf at padding."""
        hidden = self.bert(input_ids, token_type_ids, attention_mask).last_hidden_state       # (B, T, D)
        with torch.autocast(hidden.device.type, enabled=False):   # fp32 scores: bf16 would tie n-best candidates
            # the weights too: FSDP's and DeepSpeed's bf16 hand the forward bf16 parameters
            logits = F.linear(hidden.float(), self.span.weight.float(), self.span.bias.float())   # (B, T, 2)
        logits = logits.masked_fill(attention_mask[..., None] == 0, float("-inf"))
        return logits[..., 0], logits[..., 1]

    def _logits(self, batch: dict) -> tuple[Tensor, Tensor]:
        return self(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        start, end = self._logits(batch)
        loss = (span_loss(start, batch["start_positions"]) + span_loss(end, batch["end_positions"])) / 2
        self.log("train/loss", loss, prog_bar=True, batch_size=start.size(0))
        return loss

    # ---------------------------------------------------------------- evaluation
    def _window_logits(self, batch: dict) -> tuple[Tensor, Tensor, Tensor]:
        """(window indices (B,), start logits (B, max_length), end logits (B, max_length)): padded to the data's
        max_length, so batches of any length stack and gather."""
        start, end = self._logits(batch)
        width = self.trainer.datamodule.max_length
        pad = (0, width - start.size(1))
        return batch["index"], F.pad(start, pad, value=float("-inf")), F.pad(end, pad, value=float("-inf"))

    def on_validation_epoch_start(self) -> None:
        self._outputs: list[tuple[Tensor, Tensor, Tensor]] = []

    on_test_epoch_start = on_validation_epoch_start

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._outputs.append(self._window_logits(batch))

    test_step = validation_step

    def _gathered(self) -> tuple[list[int], Tensor, Tensor]:
        """Every process's (window indices, start logits, end logits), concatenated."""
        if self._outputs:
            index, start, end = (torch.cat(parts) for parts in zip(*self._outputs))
        else:
            index = torch.zeros(0, dtype=torch.long, device=self.device)
            start = end = torch.zeros(0, self.trainer.datamodule.max_length, device=self.device)
        self._outputs = []
        return self.all_gather_uneven(index).tolist(), self.all_gather_uneven(start), self.all_gather_uneven(end)

    def _score(self, split: str, metric: SquadScores) -> None:
        """EM and F1 over the questions whose windows were all predicted (all of them, unless limit_*_batches
        cut the split): answers found once over all processes' windows, each question scored by one process."""
        questions, windows = self.trainer.datamodule.examples(split)
        index, start, end = self._gathered()
        predicted = [windows[i] for i in index]
        per_question, seen = Counter(w.question for w in windows), Counter(w.question for w in predicted)
        answers = best_answers(questions, predicted, start.cpu(), end.cpu(), self.hparams.n_best,
                               self.hparams.max_answer_length, self._null_threshold())
        complete = [(q, a) for q, a in zip(sorted(seen), answers) if seen[q] == per_question[q]]
        mine = complete[self.trainer.global_rank::self.trainer.world_size]
        metric.update([a.text for _, a in mine], [questions[q].answers for q, _ in mine])
        result = metric.compute()
        metric.reset()
        for name, value in result.items():
            self.log(f"{split}/{name}", value, prog_bar=name == "f1", sync_dist=False)
        self.log(f"{split}/questions", float(len(complete)), sync_dist=False)

    def _null_threshold(self) -> float | None:
        return self.hparams.null_threshold if self.version_2 else None

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            self._outputs = []
            return
        self._score("val", self.val_scores)

    def on_test_epoch_end(self) -> None:
        self._score("test", self.test_scores)

    # ---------------------------------------------------------------- predict
    def on_predict_epoch_start(self) -> None:
        questions, windows = self.trainer.datamodule.examples("predict")
        self._last_window = {w.question: i for i, w in enumerate(windows)}    # question -> its last window
        self._pending: dict[int, tuple[Tensor, Tensor]] = {}                  # window -> (start, end) logits
        self._answered = 0                                                     # questions written so far

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> list[dict]:
        """The answer of every input question whose windows have all been predicted by now, as JSON-able dicts
        (run.py writes one line each). Windows come in file order, so questions complete in order."""
        questions, windows = self.trainer.datamodule.examples("predict")
        index, start, end = self._window_logits(batch)
        for i, s, e in zip(index.tolist(), start.cpu(), end.cpu()):
            self._pending[i] = (s, e)
        first = done = self._answered
        while done < len(questions) and self._last_window[done] in self._pending:
            done += 1
        if done == first:
            return []
        chosen = sorted(i for i in self._pending if windows[i].question < done)
        starts, ends = (torch.stack(rows) for rows in zip(*(self._pending.pop(i) for i in chosen)))
        answers = best_answers(questions, [windows[i] for i in chosen], starts, ends, self.hparams.n_best,
                               self.hparams.max_answer_length, self._null_threshold())
        self._answered = done
        return [{"id": a.id, "question": questions[q].question, "answer": a.text, "start": a.start, "end": a.end,
                 "score": round(a.score, 4) if math.isfinite(a.score) else None}
                for q, a in zip(range(first, done), answers)]
