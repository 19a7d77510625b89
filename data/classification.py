"""Sentence and sentence-pair classification / regression data (GLUE style).

Local `.tsv` / `.csv` / `.jsonl` files (columns named in the config) or dataset splits (`hub:glue:sst2:train`,
data/hub.py) are read and checked row by row (`data.readers`), labels are mapped
to class ids (or floats for regression), and text is tokenised with the `tokenizers` library:
`[CLS] A [SEP]` or `[CLS] A [SEP] B [SEP]` with segment ids 0 / 1. Tokenised splits are cached as
`datasets` Arrow files keyed by file content, tokenizer and settings, so a second run skips tokenisation.
Batches are padded dynamically and grouped by length (the base's `loader`).

The tokenizer and label names travel in the task's checkpoint (data.base), so `predict` needs nothing else.
"""
from __future__ import annotations

import json
import logging
from typing import Optional, Union

from torch.utils.data import DataLoader, Dataset

from data.base import TaskDataModule
from data.batching import pad_collate
from data.cache import cached_columns, content_key
from data.errors import ConfigError, DataError
from data.hub import local_file
from data.readers import read_table
from data.tokenization import load_tokenizer

log = logging.getLogger(__name__)


class EncodedDataset(Dataset):
    """Token ids per example, held as Python lists (fast to index from a collate function)."""

    def __init__(self, columns: dict[str, list]):
        self.columns = columns

    def __len__(self) -> int:
        return len(self.columns["input_ids"])

    def __getitem__(self, i: int) -> dict:
        return {k: v[i] for k, v in self.columns.items()}

    @property
    def lengths(self) -> list[int]:
        return [len(x) for x in self.columns["input_ids"]]


class ClassificationDataModule(TaskDataModule):
    def __init__(
        self,
        train_file: Optional[str] = None,
        val_file: Optional[str] = None,
        test_file: Optional[str] = None,
        predict_file: Optional[str] = None,
        text_column: str = "sentence",
        text_pair_column: Optional[str] = None,
        label_column: str = "label",
        labels: Optional[list[Union[str, int]]] = None,
        regression: bool = False,
        tokenizer: Optional[str] = None,
        max_length: int = 128,
        group_by_length: bool = True,
        cache_dir: Optional[str] = ".cache/tokenized",
        **kwargs,
    ):
        """
        Args:
            train_file, val_file, test_file, predict_file: .tsv/.csv/.jsonl files (a header names the columns), or
                dataset splits: hub:NAME[:CONFIG]:SPLIT (e.g. hub:glue:sst2:validation; data/hub.py).
            text_column, text_pair_column: the sentence column, and the second sentence's for pairs.
            label_column: the label column (not needed in predict_file).
            labels: the label set, in class-id order, as written in the files (e.g. ["0", "1"]).
                Default: the sorted distinct labels of the training file. A label outside the set is an error.
            regression: float targets (STS-B style) instead of classes.
            tokenizer: model directory, tokenizer.json, vocab.txt or a hub name. Default: the tokenizer of
                model.pretrained (or of the checkpoint being restored).
            max_length: longest encoding in tokens; longer inputs are truncated (and counted in the log).
            group_by_length: build training batches from examples of similar length.
            cache_dir: where tokenised splits are cached (None: no cache).
        """
        super().__init__(**kwargs)
        if max_length < 3:
            raise ConfigError(f"data.max_length {max_length}: must be at least 3 ([CLS] x [SEP])")
        self.save_hyperparameters()
        self.labels: Optional[list[str]] = [str(x) for x in labels] if labels is not None else None
        self.regression, self.text_pair_column, self.max_length = regression, text_pair_column, max_length
        self._raw: dict[str, dict] = {}
        self._encoded: dict[str, EncodedDataset] = {}

    # ---- reading and checking ---------------------------------------------------------------------------
    def _read(self, split: str) -> dict[str, list]:
        """The rows of `train`, `val`, `test` or `predict` (which has no label column)."""
        hp = self.hparams
        columns = [hp.text_column] + ([hp.text_pair_column] if hp.text_pair_column else [])
        if split != "predict":
            columns.append(hp.label_column)
        spec = {"train": hp.train_file, "val": hp.val_file, "test": hp.test_file, "predict": hp.predict_file}[split]
        if not spec:
            raise DataError(f"no {split} data: set data.{split}_file (a file, or a dataset split hub:NAME:SPLIT)")
        path = local_file(spec, "table")
        return {**read_table(path, columns), "_origin": str(path)}

    def _labels_to_targets(self, table: dict) -> list:
        """Class ids (or floats for regression); an unknown label is an error naming file and line."""
        origin, index = table["_origin"], {name: i for i, name in enumerate(self.labels or [])}
        out = []
        for value, line in zip(table[self.hparams.label_column], table["_line"]):
            if self.regression:
                try:
                    out.append(float(value))
                except ValueError:
                    raise DataError(f"{origin}, line {line}: label {value!r} is not a number "
                                    f"(regression data)") from None
            elif value in index:
                out.append(index[value])
            else:
                raise DataError(f"{origin}, line {line}: label {value!r} is not in the label set {self.labels}")
        return out

    # ---- Lightning hooks ----------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Reads and checks the files this stage needs (errors stop the run before any training)."""
        hp = self.hparams
        fit = ["train", "val"] if hp.val_file else ["train"]              # validation is optional in fit
        splits = {"fit": fit, "validate": ["val"], "test": ["test"], "predict": ["predict"]}[stage]
        for split in splits:
            if split not in self._raw:
                self._raw[split] = self._read(split)
        if stage == "fit" and not self.regression and self.labels is None:
            distinct = set(self._raw["train"][hp.label_column])
            try:
                self.labels = sorted(distinct, key=float)
            except ValueError:
                self.labels = sorted(distinct)
            log.info("labels inferred from %s: %s", self._raw["train"]["_origin"], self.labels)
        if self.regression or self.labels is not None:  # else: labels come from the checkpoint
            for split in splits:
                if split != "predict" and "targets" not in self._raw[split]:
                    self._raw[split]["targets"] = self._labels_to_targets(self._raw[split])
        if self.tokenizer is None and hp.tokenizer:
            self.tokenizer = load_tokenizer(hp.tokenizer)

    def adopt(self, blueprint) -> None:
        """A restored checkpoint's tokenizer, labels and kind (classes or regression) win over the settings."""
        if self.hparams.labels is not None and blueprint.labels is not None and \
                [str(x) for x in self.hparams.labels] != list(blueprint.labels):
            raise DataError(f"the checkpoint's labels {blueprint.labels} differ from data.labels {self.hparams.labels}")
        super().adopt(blueprint)
        self.regression = blueprint.settings.get("regression", self.regression)
        for table in self._raw.values():          # re-mapped with the checkpoint's labels when first loaded
            table.pop("targets", None)
        self._encoded.clear()

    # ---- tokenisation (cached) -------------------------------------------------------------------------------
    def _encoded_split(self, split: str) -> EncodedDataset:
        if split in self._encoded:
            return self._encoded[split]
        if self.tokenizer is None:
            raise DataError("no tokenizer: set data.tokenizer (a model directory, tokenizer.json or vocab.txt) or "
                            "model.pretrained")
        if split not in self._raw:
            self._raw[split] = self._read(split)
        table = self._raw[split]
        if split != "predict" and "targets" not in table:
            if self.labels is None and not self.regression:
                raise DataError(f"{table['_origin']}: unknown label set: set data.labels or evaluate a checkpoint")
            table["targets"] = self._labels_to_targets(table)
        write = self.trainer is None or self.trainer.global_rank == 0     # DDP: rank 0 stores the cache
        cached = cached_columns(self.hparams.cache_dir or None, self._cache_key(table),
                                lambda: self._tokenize(table), write)
        if "targets" in table:
            cached["labels"] = table["targets"]
        cached["index"] = list(range(len(cached["input_ids"])))
        self._encoded[split] = EncodedDataset(cached)
        return self._encoded[split]

    def _tokenize(self, table: dict) -> dict[str, list]:
        hp = self.hparams
        tok = self.tokenizer
        texts = table[hp.text_column]
        inputs = list(zip(texts, table[hp.text_pair_column])) if hp.text_pair_column else texts
        tok.enable_truncation(hp.max_length, strategy="longest_first")
        try:
            encodings = tok.encode_batch(inputs)
        finally:
            tok.no_truncation()
        truncated = sum(1 for e in encodings if e.overflowing)
        if truncated:
            log.warning("%s: %d of %d examples truncated to %d tokens", table["_origin"], truncated, len(encodings),
                        hp.max_length)
        return {"input_ids": [e.ids for e in encodings], "token_type_ids": [e.type_ids for e in encodings]}

    def _cache_key(self, table: dict) -> str:
        hp = self.hparams
        texts = ["\x00".join(table[column]) for column in (hp.text_column, hp.text_pair_column) if column]
        return content_key(self.tokenizer.to_str(), json.dumps([hp.text_column, hp.text_pair_column, hp.max_length]),
                           *texts)

    # ---- loaders ------------------------------------------------------------------------------------------
    def split_loader(self, split: str, train: bool, keep_order: bool) -> DataLoader:
        data = self._encoded_split(split)
        pad = self.tokenizer.token_to_id("[PAD]") or 0
        collate = pad_collate({"input_ids": pad, "token_type_ids": 0})
        return self.loader(data, data.lengths, collate, train=train, keep_order=keep_order,
                           group_by_length=self.hparams.group_by_length or not train)

    def predict_text(self, index: int) -> dict:
        """The input row `index` of the predict file (for the prediction output): its line in the file (1-based, as
        every task's predictions say where their input was) and its text."""
        hp, table = self.hparams, self._raw["predict"]
        out = {"line": table["_line"][index], hp.text_column: table[hp.text_column][index]}
        if hp.text_pair_column:
            out[hp.text_pair_column] = table[hp.text_pair_column][index]
        return out
