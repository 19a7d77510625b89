"""Sentence and sentence-pair classification / regression data (GLUE style).

Local `.tsv` / `.csv` / `.jsonl` files (columns named in the config) or a hub dataset (`dataset: glue`,
`dataset_config: sst2`, when online) are read and checked row by row (`data.readers`), labels are mapped
to class ids (or floats for regression), and text is tokenised with the `tokenizers` library:
`[CLS] A [SEP]` or `[CLS] A [SEP] B [SEP]` with segment ids 0 / 1. Tokenised splits are cached as
`datasets` Arrow files keyed by file content, tokenizer and settings, so a second run skips tokenisation.
Batches are padded dynamically and grouped by length (`data.batching`).

Everything `predict` needs (tokenizer, label names) is saved in the checkpoint through `state_dict`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import warnings
from pathlib import Path
from typing import Optional, Union

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from data.batching import LengthGroupedSampler, pad_collate
from data.errors import DataError
from data.readers import read_table
from data.tokenization import load_wordpiece, tokenizer_from_str, tokenizer_to_str

log = logging.getLogger(__name__)


class EncodedDataset(Dataset):
    """Token ids per example, held as Python lists (fast to index from a collate function)."""

    def __init__(self, columns: dict[str, list]):
        self.columns = columns
        self.n = len(columns["input_ids"])

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        return {k: v[i] for k, v in self.columns.items()}

    @property
    def lengths(self) -> list[int]:
        return [len(x) for x in self.columns["input_ids"]]


def load_tokenizer(spec: str):
    """A tokenizer from a checkpoint directory / tokenizer.json / vocab.txt, one of our `.ckpt` files,
    or a hub model name (when online)."""
    path = Path(spec).expanduser()
    if path.suffix == ".ckpt":
        if not path.is_file():
            raise DataError(f"{path}: checkpoint not found (data.tokenizer)")
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        state = ckpt.get(ClassificationDataModule.__qualname__) or {}
        text = state.get("tokenizer") or ckpt.get("tokenizer")
        if not text:
            raise DataError(f"{path}: this checkpoint holds no tokenizer")
        return tokenizer_from_str(text)
    if path.exists():
        return load_wordpiece(path)
    try:
        from tokenizers import Tokenizer
        tokenizer = Tokenizer.from_pretrained(spec)
    except Exception as e:  # noqa: BLE001 - offline or unknown name
        raise DataError(f"{spec}: not a tokenizer file or directory here, and not loadable from the hub "
                        f"({type(e).__name__})") from None
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


class ClassificationDataModule(pl.LightningDataModule):
    def __init__(
        self,
        train_file: Optional[str] = None,
        val_file: Optional[str] = None,
        test_file: Optional[str] = None,
        predict_file: Optional[str] = None,
        dataset: Optional[str] = None,
        dataset_config: Optional[str] = None,
        train_split: str = "train",
        val_split: str = "validation",
        test_split: str = "test",
        text_column: str = "sentence",
        text_pair_column: Optional[str] = None,
        label_column: str = "label",
        labels: Optional[list[Union[str, int]]] = None,
        regression: bool = False,
        tokenizer: Optional[str] = None,
        max_length: int = 128,
        batch_size: int = 32,
        eval_batch_size: int = 128,
        group_by_length: bool = True,
        group_size: int = 64,
        num_workers: int = 0,
        cache_dir: Optional[str] = ".cache/tokenized",
        seed: int = 42,
    ):
        """
        Args:
            train_file, val_file, test_file, predict_file: local .tsv/.csv/.jsonl files (header names the columns).
            dataset, dataset_config: a `datasets` hub name (e.g. glue, sst2), used for splits without a file.
            text_column, text_pair_column: the sentence column, and the second sentence's for pairs.
            label_column: the label column (not needed in predict_file).
            labels: the label set, in class-id order, as written in the files (e.g. ["0", "1"]).
                Default: the sorted distinct labels of the training file. A label outside the set is an error.
            regression: float targets (STS-B style) instead of classes.
            tokenizer: checkpoint directory, tokenizer.json, vocab.txt, our .ckpt, or a hub name.
                Default: taken from the checkpoint when evaluating one.
            max_length: longest encoding in tokens; longer inputs are truncated (and counted in the log).
            batch_size, eval_batch_size: examples per training / evaluation batch (per device).
            group_by_length: build training batches from examples of similar length.
            group_size: batches per length-sorted chunk when grouping.
            cache_dir: where tokenised splits are cached (None: no cache).
            seed: seed of the batch order (epoch e uses seed + e).
        """
        super().__init__()
        self.save_hyperparameters()
        self.files = {"fit": train_file, "validate": val_file, "test": test_file, "predict": predict_file}
        self.label_names: Optional[list[str]] = [str(x) for x in labels] if labels is not None else None
        self.tokenizer = None
        self._raw: dict[str, dict] = {}
        self._encoded: dict[str, EncodedDataset] = {}
        self._resume: tuple[int, int] | None = None
        self._train_sampler: Optional[LengthGroupedSampler] = None

    # ---- reading and checking ---------------------------------------------------------------------------
    def _source(self, split: str) -> tuple[Optional[str], Optional[str]]:
        """(local file, hub split) for `train`, `val`, `test` or `predict`."""
        hp = self.hparams
        local = {"train": hp.train_file, "val": hp.val_file, "test": hp.test_file, "predict": hp.predict_file}[split]
        hub = {"train": hp.train_split, "val": hp.val_split, "test": hp.test_split, "predict": None}[split]
        return local, (hub if hp.dataset and not local else None)

    def _read(self, split: str, need_labels: bool) -> dict[str, list]:
        hp = self.hparams
        columns = [hp.text_column] + ([hp.text_pair_column] if hp.text_pair_column else [])
        local, hub_split = self._source(split)
        if local:
            table = read_table(local, columns + ([hp.label_column] if need_labels else []))
            origin = local
        elif hub_split:
            table, origin = self._read_hub(hub_split, columns + ([hp.label_column] if need_labels else [])), \
                f"{hp.dataset}/{hp.dataset_config or ''}:{hub_split}"
        else:
            raise DataError(f"no {split} data: set data.{split}_file (or data.dataset for a hub dataset)")
        table["_origin"] = origin
        return table

    def _read_hub(self, split: str, columns: list[str]) -> dict[str, list]:
        import datasets
        hp = self.hparams
        try:
            ds = datasets.load_dataset(hp.dataset, hp.dataset_config, split=split)
        except Exception as e:  # noqa: BLE001
            raise DataError(f"{hp.dataset}/{hp.dataset_config}: cannot load split {split!r} "
                            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
        missing = [c for c in columns if c not in ds.column_names]
        if missing:
            raise DataError(f"{hp.dataset}/{hp.dataset_config}:{split}: no column {missing[0]!r} "
                            f"(columns: {', '.join(ds.column_names)})")
        table = {c: [str(v) for v in ds[c]] for c in columns}
        table["_line"] = list(range(1, len(ds) + 1))
        return table

    def _labels_to_targets(self, table: dict) -> list:
        """Class ids (or floats for regression); an unknown label is an error naming file and line."""
        hp, origin = self.hparams, table["_origin"]
        raw = table[hp.label_column]
        if hp.regression:
            out = []
            for value, line in zip(raw, table["_line"]):
                try:
                    out.append(float(value))
                except ValueError:
                    raise DataError(f"{origin}, line {line}: label {value!r} is not a number "
                                    f"(regression data)") from None
            return out
        index = {name: i for i, name in enumerate(self.label_names)}
        out = []
        for value, line in zip(raw, table["_line"]):
            if value not in index:
                raise DataError(f"{origin}, line {line}: label {value!r} is not in the label set "
                                f"{self.label_names}")
            out.append(index[value])
        return out

    @staticmethod
    def _infer_labels(values: list[str]) -> list[str]:
        distinct = set(values)
        try:
            return sorted(distinct, key=float)
        except ValueError:
            return sorted(distinct)

    # ---- Lightning hooks ----------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Reads and checks the files this stage needs (errors stop the run before any training)."""
        hp = self.hparams
        splits = {"fit": ["train", "val"], "validate": ["val"], "test": ["test"], "predict": ["predict"]}[stage]
        for split in splits:
            if split in self._raw:
                continue
            if split == "val" and stage == "fit" and not (hp.val_file or hp.dataset):
                continue
            self._raw[split] = self._read(split, need_labels=split != "predict")
        if stage == "fit" and not hp.regression and self.label_names is None:
            self.label_names = self._infer_labels(self._raw["train"][hp.label_column])
            log.info("labels inferred from %s: %s", self._raw["train"]["_origin"], self.label_names)
        if hp.regression or self.label_names is not None:  # else: labels come from the checkpoint
            for split in splits:
                table = self._raw.get(split)
                if table is not None and split != "predict" and "targets" not in table:
                    table["targets"] = self._labels_to_targets(table)
        if stage == "fit" and self.tokenizer is None:
            self.tokenizer = self._tokenizer_from_config()

    def _tokenizer_from_config(self):
        if not self.hparams.tokenizer:
            raise DataError("no tokenizer: set data.tokenizer (a checkpoint directory, tokenizer.json or vocab.txt)")
        return load_tokenizer(self.hparams.tokenizer)

    @property
    def num_labels(self) -> int:
        return 1 if self.hparams.regression else len(self.label_names or [])

    def state_dict(self) -> dict:
        state = {"tokenizer": tokenizer_to_str(self.tokenizer) if self.tokenizer is not None else None,
                 "labels": self.label_names, "regression": self.hparams.regression,
                 "text_pair": self.hparams.text_pair_column is not None}
        trainer = self.trainer
        if trainer is not None and trainer.state.fn == "fit":
            state["epoch"] = trainer.current_epoch
            state["batches_done"] = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return state

    def load_state_dict(self, state: dict) -> None:
        if state.get("tokenizer"):
            self.tokenizer = tokenizer_from_str(state["tokenizer"])
        if state.get("labels") is not None and state["labels"] != self.label_names:
            if self.hparams.labels is not None:
                raise DataError(f"the checkpoint's labels {state['labels']} differ from data.labels "
                                f"{self.label_names}")
            self.label_names = list(state["labels"])
            for table in self._raw.values():  # re-mapped with the checkpoint's labels when first loaded
                table.pop("targets", None)
            self._encoded.clear()
        if "batches_done" in state:
            self._resume = (state["epoch"], state["batches_done"])
            # Lightning cannot see that the sampler resumes mid-epoch (skip_batches); do not warn that it won't
            warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch")

    # ---- tokenisation (cached) -------------------------------------------------------------------------------
    def _encoded_split(self, split: str) -> EncodedDataset:
        if split in self._encoded:
            return self._encoded[split]
        if self.tokenizer is None:
            self.tokenizer = self._tokenizer_from_config()
        if split not in self._raw:
            self._raw[split] = self._read(split, need_labels=split != "predict")
        table = self._raw[split]
        if split != "predict" and "targets" not in table:
            if self.label_names is None and not self.hparams.regression:
                raise DataError(f"{table['_origin']}: unknown label set: set data.labels or evaluate a checkpoint")
            table["targets"] = self._labels_to_targets(table)
        key = self._cache_key(table)
        cached = self._load_cache(key)
        if cached is None:
            cached = self._tokenize(table)
            self._save_cache(key, cached)
        if "targets" in table:
            cached["label"] = table["targets"]
        cached["index"] = list(range(len(cached["input_ids"])))
        self._encoded[split] = EncodedDataset(cached)
        return self._encoded[split]

    def _tokenize(self, table: dict) -> dict[str, list]:
        hp = self.hparams
        tok = self.tokenizer
        tok.enable_truncation(hp.max_length, strategy="longest_first")
        try:
            texts = table[hp.text_column]
            if hp.text_pair_column:
                encodings = tok.encode_batch(list(zip(texts, table[hp.text_pair_column])))
            else:
                encodings = tok.encode_batch(texts)
        finally:
            tok.no_truncation()
        truncated = sum(1 for e in encodings if e.overflowing)
        if truncated:
            log.warning("%s: %d of %d examples truncated to %d tokens", table["_origin"], truncated, len(encodings),
                        hp.max_length)
        return {"input_ids": [e.ids for e in encodings], "token_type_ids": [e.type_ids for e in encodings]}

    def _cache_key(self, table: dict) -> str:
        hp = self.hparams
        h = hashlib.sha1()
        h.update(tokenizer_to_str(self.tokenizer).encode())
        h.update(json.dumps([hp.text_column, hp.text_pair_column, hp.max_length]).encode())
        for column in (hp.text_column, hp.text_pair_column):
            if column:
                h.update("\x00".join(table[column]).encode())
        return h.hexdigest()[:20]

    def _load_cache(self, key: str) -> Optional[dict]:
        if not self.hparams.cache_dir:
            return None
        path = Path(self.hparams.cache_dir) / key
        if not (path / "dataset_info.json").exists():
            return None
        import datasets
        ds = datasets.load_from_disk(str(path))
        return {"input_ids": ds["input_ids"], "token_type_ids": ds["token_type_ids"]}

    def _save_cache(self, key: str, columns: dict) -> None:
        if not self.hparams.cache_dir:
            return
        import datasets
        path = Path(self.hparams.cache_dir) / key
        if self.trainer is not None and self.trainer.global_rank != 0:
            return
        tmp = path.with_name(path.name + ".tmp")
        datasets.disable_progress_bars()
        datasets.Dataset.from_dict(columns).save_to_disk(str(tmp))
        tmp.rename(path) if not path.exists() else None

    # ---- loaders ------------------------------------------------------------------------------------------
    def _pad_id(self) -> int:
        pad = self.tokenizer.token_to_id("[PAD]")
        return 0 if pad is None else pad

    def _world(self) -> tuple[int, int]:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_world_size(), torch.distributed.get_rank()
        return 1, 0

    def _loader(self, split: str, train: bool) -> DataLoader:
        hp = self.hparams
        data = self._encoded_split(split)
        world, rank = self._world()
        batch_size = hp.batch_size if train else hp.eval_batch_size
        sampler = LengthGroupedSampler(data.lengths, batch_size, shuffle=train,
                                       group_by_length=hp.group_by_length or not train, group_size=hp.group_size,
                                       seed=hp.seed, num_replicas=world, rank=rank)
        if train:
            self._train_sampler = sampler
            if self._resume is not None:
                sampler.skip_batches(*self._resume)
                self._resume = None
        return DataLoader(data, batch_size=batch_size, sampler=sampler, collate_fn=pad_collate(self._pad_id()),
                          num_workers=hp.num_workers, persistent_workers=hp.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)

    def predict_dataloader(self) -> DataLoader:
        data = self._encoded_split("predict")
        return DataLoader(data, batch_size=self.hparams.eval_batch_size, shuffle=False,
                          collate_fn=pad_collate(self._pad_id()), num_workers=self.hparams.num_workers)

    def predict_text(self, index: int) -> dict:
        """The input row `index` of the predict file (for the prediction output)."""
        hp, table = self.hparams, self._raw["predict"]
        out = {hp.text_column: table[hp.text_column][index]}
        if hp.text_pair_column:
            out[hp.text_pair_column] = table[hp.text_pair_column][index]
        return out
