"""CoNLL-2003 named-entity data: reading, validation, word -> sub-word alignment, windows, batches.

File format: whitespace-separated columns, the tag in the last column, a blank line between sentences,
`-DOCSTART-` lines between documents. Tags are BIO (IOB2); `iob1=True` converts IOB1 input (an entity
may start with `I-`) to BIO. With `strict_bio=True` an `I-X` that does not continue an `X` entity is an
error. Any malformed line raises `ConllFormatError` naming the file and line.

Alignment: each word is tokenized on its own; the first sub-token carries the word's label and the others
are ignored by the loss (-100), unless `label_all_subtokens` (then every sub-token carries the label, with
`B-X` turned into `I-X` after the first). Predictions come back as one tag per original word: a word that
has no sub-token in any window (cut by `max_length` in sentence mode) is tagged `O` and counted.

Context: `context="sentence"` encodes every sentence alone, as most fine-tuning scripts do. With
`context="document"` (Devlin et al. 2019, section 5.3: "maximal document context") the sub-tokens of a
whole document are cut into windows of `max_length`; a window starting every `stride` sub-tokens, and
each word is labelled (and predicted) in the one window where it has the most context on both sides.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytorch_lightning as pl
import torch
from tokenizers import Tokenizer
from torch.utils.data import DataLoader, Dataset, Sampler

from data.errors import DataError
from data.tokenization import load_wordpiece, tokenizer_from_str

IGNORE = -100
TAG_RE = re.compile(r"^(O|[BI]-\S+)$")


class ConllFormatError(DataError):
    """A malformed CoNLL file: the message is one line, `path, line N: what is wrong`."""


@dataclass
class Sentence:
    words: list[str]
    tags: list[str]
    doc: int                       # index of the document (sentences of one document share it)
    line: int = 0                  # 1-based line of the sentence's first word (for messages)
    spans: list[tuple[int, int]] | None = None   # character offsets of each word (plain-text input only)
    text: str | None = None                      # the original line (plain-text input only)


# --------------------------------------------------------------------------- reading

def iob1_to_bio(tags: list[str]) -> list[str]:
    """IOB1 (`I-X` may start an entity, `B-X` only splits two adjacent X entities) -> BIO (IOB2)."""
    out, prev = [], "O"
    for tag in tags:
        if tag.startswith("I-") and (prev == "O" or prev[2:] != tag[2:]):
            tag = "B-" + tag[2:]
        out.append(tag)
        prev = tag
    return out


def read_conll(path: str | Path, *, iob1: bool = False, strict_bio: bool = False,
               labels: list[str] | None = None) -> list[Sentence]:
    """Sentences of a CoNLL file. `labels`, when given, is the closed tag set: any other tag is an error."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: CoNLL file not found")
    known = set(labels) if labels is not None else None
    sentences: list[Sentence] = []
    words, tags, lines = [], [], []
    doc, columns = 0, None

    def close() -> None:
        nonlocal words, tags, lines
        if words:
            bio = iob1_to_bio(tags) if iob1 else tags
            for i, tag in enumerate(bio):
                if known is not None and tag not in known:
                    raise ConllFormatError(f"{path}, line {lines[i]}: tag {tag!r} is not in the label set "
                                           f"read from the training data ({', '.join(sorted(known))})")
                if strict_bio and tag.startswith("I-"):
                    prev = bio[i - 1] if i else "O"
                    if prev[2:] != tag[2:] or prev == "O":
                        raise ConllFormatError(f"{path}, line {lines[i]}: {tag!r} after {prev!r} is not valid BIO "
                                               f"(an entity must start with B-{tag[2:]}); use iob1=True for IOB1 files")
            sentences.append(Sentence(words, bio, doc, lines[0]))
        words, tags, lines = [], [], []

    with path.open(encoding="utf-8") as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.strip()
            if line.startswith("-DOCSTART-"):
                close()
                if sentences and sentences[-1].doc == doc:
                    doc += 1
                continue
            if not line:
                close()
                continue
            cols = line.split()
            if columns is None:
                if len(cols) < 2:
                    raise ConllFormatError(f"{path}, line {lineno}: expected at least 2 columns (token ... tag), "
                                           f"got {len(cols)}: {line!r}")
                columns = len(cols)
            elif len(cols) != columns:
                raise ConllFormatError(f"{path}, line {lineno}: expected {columns} columns like the file's first line, "
                                       f"got {len(cols)}: {line!r}")
            tag = cols[-1]
            if not TAG_RE.match(tag):
                raise ConllFormatError(f"{path}, line {lineno}: tag {tag!r} is not BIO (O, B-TYPE or I-TYPE)")
            words.append(cols[0])
            tags.append(tag)
            lines.append(lineno)
    close()
    if not sentences:
        raise ConllFormatError(f"{path}: no sentences in this file")
    return sentences


def label_set(sentences: list[Sentence]) -> list[str]:
    """The tags of the training data: `O` first, then B-/I- of each type in alphabetical order."""
    types = sorted({t[2:] for s in sentences for t in s.tags if t != "O"})
    return ["O"] + [f"{p}-{t}" for t in types for p in "BI"]


TOKEN_RE = re.compile(r"\w+|[^\w\s]")


def read_plain_text(path: str | Path) -> list[Sentence]:
    """One sentence per line, tokenized on whitespace and punctuation; blank lines separate documents."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: text file not found")
    sentences, doc = [], 0
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        matches = list(TOKEN_RE.finditer(line))
        if not matches:
            if sentences and sentences[-1].doc == doc:
                doc += 1
            continue
        words = [m.group() for m in matches]
        sentences.append(Sentence(words, ["O"] * len(words), doc, lineno,
                                  spans=[m.span() for m in matches], text=line))
    if not sentences:
        raise DataError(f"{path}: no text to tag")
    return sentences


# --------------------------------------------------------------------------- entities

def entities(tags: list[str], strict: bool = False) -> list[tuple[str, int, int]]:
    """(type, first word, last word) of each entity in one sentence's BIO tags, decoded as seqeval does.

    Default mode (conlleval's rules): an `I-X` after `O` or after another type starts an entity.
    Strict mode (seqeval `mode="strict"`, IOB2): an entity is `B-X` followed by `I-X`*; a stray `I-X` is no entity.
    """
    found, start, etype = [], None, None
    for i, tag in enumerate(list(tags) + ["O"]):
        prefix, kind = (tag[0], tag[2:]) if tag != "O" else ("O", None)
        continues = prefix == "I" and kind == etype and start is not None
        if start is not None and not continues:
            found.append((etype, start, i - 1))
            start, etype = None, None
        if prefix == "B" or (prefix == "I" and not continues and not strict):
            start, etype = i, kind
    return found


# --------------------------------------------------------------------------- casing

CASING = ("other", "lower", "title", "upper", "mixed", "digit")


def casing(word: str) -> int:
    """Index into CASING: the capitalisation an uncased tokenizer throws away."""
    letters = [c for c in word if c.isalpha()]
    if not letters:
        return 5 if any(c.isdigit() for c in word) else 0
    if all(c.islower() for c in letters):
        return 1
    if all(c.isupper() for c in letters):
        return 3 if len(letters) > 1 else 2
    if letters[0].isupper() and all(c.islower() for c in letters[1:]):
        return 2
    return 4


# --------------------------------------------------------------------------- alignment and windows

@dataclass
class Window:
    """One model input: sub-token ids with [CLS]/[SEP], and which word each labelled position predicts."""
    input_ids: list[int]
    labels: list[int]                       # per position: label id, or IGNORE
    casing: list[int]                       # per position: casing class of the word (0 for specials)
    targets: list[tuple[int, int, int]] = field(default_factory=list)  # (position, sentence index, word index)
    index: int = 0                          # position in its split, so predictions find their way back


def word_pieces(tokenizer: Tokenizer, words: list[str]) -> list[list[int]]:
    """Sub-token ids of each word. A word the tokenizer maps to nothing gets [UNK], so it is never lost."""
    unk = tokenizer.token_to_id("[UNK]")
    enc = tokenizer.encode(words, is_pretokenized=True, add_special_tokens=False)
    pieces: list[list[int]] = [[] for _ in words]
    for tok_id, word_id in zip(enc.ids, enc.word_ids):
        if word_id is not None:
            pieces[word_id].append(tok_id)
    return [p if p else [unk] for p in pieces]


def build_windows(tokenizer: Tokenizer, sentences: list[Sentence], label2id: dict[str, int] | None, *,
                  max_length: int = 128, context: str = "sentence", stride: int | None = None,
                  label_all_subtokens: bool = False) -> list[Window]:
    """Cut sentences (or whole documents) into windows of at most `max_length` sub-tokens with specials.
    `label2id=None` leaves every position unlabelled (IGNORE), for inputs without gold tags."""
    if context not in ("sentence", "document"):
        raise ValueError(f"context must be 'sentence' or 'document', got {context!r}")
    room = max_length - 2
    if room < 1:
        raise ValueError(f"max_length {max_length} leaves no room for tokens between [CLS] and [SEP]")
    stride = room if stride is None else stride
    if not 0 < stride <= room:
        raise ValueError(f"stride must be in 1..{room} (max_length - 2), got {stride}")
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")

    groups: list[list[int]] = []             # sentence indices encoded together
    for i, s in enumerate(sentences):
        if context == "document" and groups and sentences[groups[-1][-1]].doc == s.doc:
            groups[-1].append(i)
        else:
            groups.append([i])

    windows = []
    for group in groups:
        # the group's sub-token stream: (token id, label id or IGNORE, casing, (sentence, word) or None)
        stream: list[tuple[int, int, int, tuple[int, int] | None]] = []
        for si in group:
            s = sentences[si]
            for wi, (word, pieces) in enumerate(zip(s.words, word_pieces(tokenizer, s.words))):
                tag, case = s.tags[wi], casing(word)
                first = label2id[tag] if label2id is not None else IGNORE
                inner = IGNORE
                if label2id is not None and label_all_subtokens:
                    inner = label2id.get("I-" + tag[2:], first) if tag.startswith("B-") else first
                for k, piece in enumerate(pieces):
                    stream.append((piece, first, case, (si, wi)) if k == 0 else (piece, inner, case, None))
        starts = [0] if context == "sentence" else list(range(0, max(1, len(stream) - room + stride), stride))
        if context == "document" and starts[-1] + room < len(stream):
            starts.append(starts[-1] + stride)
        # each word goes to the window where its first sub-token is farthest from an edge
        owner: dict[int, int] = {}
        for pos, item in enumerate(stream):
            if item[3] is None:
                continue
            best, best_margin = None, -1
            for w, start in enumerate(starts):
                if start <= pos < start + room:
                    end = min(start + room, len(stream))
                    margin = min(pos - start if start > 0 else room, end - 1 - pos if end < len(stream) else room)
                    if margin > best_margin:
                        best, best_margin = w, margin
            if best is not None:
                owner[pos] = best
        for w, start in enumerate(starts):
            chunk = stream[start:start + room]
            ids, labels, cases, targets = [cls], [IGNORE], [0], []
            for offset, (piece, label, case, word) in enumerate(chunk):
                pos = start + offset
                mine = word is not None and owner.get(pos) == w
                ids.append(piece)
                cases.append(case)
                if word is None:       # later sub-token: labelled only if its word's first piece is ours
                    first = next(p for p in range(pos, -1, -1) if stream[p][3] is not None)
                    labels.append(label if owner.get(first) == w else IGNORE)
                else:
                    labels.append(label if mine else IGNORE)
                if mine:
                    targets.append((offset + 1, word[0], word[1]))
            ids.append(sep)
            labels.append(IGNORE)
            cases.append(0)
            windows.append(Window(ids, labels, cases, targets, len(windows)))
    return windows


def words_to_tags(sentences: list[Sentence], windows: list[Window], predictions: list[list[int]],
                  id2label: list[str]) -> tuple[list[list[str]], int]:
    """Per-position label ids of each window -> one tag per original word. Returns (tags, cut): words with no
    prediction (cut off by `max_length`) are tagged `O` and counted in `cut`."""
    tags = [[None] * len(s.words) for s in sentences]
    for window, pred in zip(windows, predictions):
        for pos, si, wi in window.targets:
            tags[si][wi] = id2label[pred[pos]]
    cut = 0
    for row in tags:
        for i, tag in enumerate(row):
            if tag is None:
                row[i] = "O"
                cut += 1
    return tags, cut


# --------------------------------------------------------------------------- batching

class WindowDataset(Dataset):
    def __init__(self, windows: list[Window]):
        self.windows = windows

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> Window:
        return self.windows[index]


def collate(windows: list[Window], pad_id: int = 0) -> dict[str, torch.Tensor]:
    width = max(len(w.input_ids) for w in windows)
    batch = {
        "input_ids": torch.full((len(windows), width), pad_id, dtype=torch.long),
        "attention_mask": torch.zeros(len(windows), width, dtype=torch.long),
        "labels": torch.full((len(windows), width), IGNORE, dtype=torch.long),
        "casing": torch.zeros(len(windows), width, dtype=torch.long),
        "index": torch.tensor([w.index for w in windows], dtype=torch.long),
    }
    for i, w in enumerate(windows):
        n = len(w.input_ids)
        batch["input_ids"][i, :n] = torch.tensor(w.input_ids)
        batch["attention_mask"][i, :n] = 1
        batch["labels"][i, :n] = torch.tensor(w.labels)
        batch["casing"][i, :n] = torch.tensor(w.casing)
    return batch


class LengthGroupedSampler(Sampler[list[int]]):
    """Batches of similar length (less padding): shuffle, sort within pools of 50 batches, shuffle batches."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int = 0, pool: int = 50):
        self.lengths, self.batch_size, self.seed, self.pool, self.epoch = lengths, batch_size, seed, pool, 0

    def __len__(self) -> int:
        return (len(self.lengths) + self.batch_size - 1) // self.batch_size

    def __iter__(self):
        rng = random.Random(self.seed + self.epoch)
        self.epoch += 1
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        size = self.batch_size * self.pool
        batches = []
        for start in range(0, len(order), size):
            pool = sorted(order[start:start + size], key=lambda i: self.lengths[i])
            batches += [pool[i:i + self.batch_size] for i in range(0, len(pool), self.batch_size)]
        rng.shuffle(batches)
        return iter(batches)


class CoNLLDataModule(pl.LightningDataModule):
    """CoNLL-2003 train/validation/test files, or plain text to tag (`predict_file`)."""

    def __init__(self, tokenizer: str | None = None, train_file: str | None = None, val_file: str | None = None,
                 test_file: str | None = None, predict_file: str | None = None, max_length: int = 128,
                 context: str = "sentence", stride: int | None = None, eval_stride: int | None = None,
                 label_all_subtokens: bool = False, iob1: bool = False, strict_bio: bool = False,
                 batch_size: int = 32, eval_batch_size: int = 64, length_grouped: bool = True,
                 num_workers: int = 0, seed: int = 0, limit_train: int = 0):
        super().__init__()
        self.save_hyperparameters()
        self.tokenizer: Tokenizer | None = load_wordpiece(tokenizer) if tokenizer else None
        self.labels: list[str] | None = None
        self.sentences: dict[str, list[Sentence]] = {}
        self.windows: dict[str, list[Window]] = {}
        self.truncated_words: dict[str, int] = {}

    def use_vocabulary(self, tokenizer_str: str, labels: list[str] | None) -> None:
        """A restored checkpoint's tokenizer and labels are the ones its model was trained with: switch to them
        (windows already built with another tokenizer are rebuilt on the next `setup`)."""
        tokenizer = tokenizer_from_str(tokenizer_str)
        if self.tokenizer is None or tokenizer.to_str() != self.tokenizer.to_str() or labels != self.labels:
            self.tokenizer, self.labels = tokenizer, list(labels) if labels else self.labels
            self.windows.clear()
            for split in getattr(self, "stage_splits", []):
                self._build(split)

    def read_labels(self) -> list[str]:
        """The label set of the training file (read once); used to size the model before `setup`."""
        if self.labels is None:
            if not self.hparams.train_file:
                raise DataError("ner: no label set: give data.train_file or load a checkpoint that stores labels")
            self.sentences["train"] = self._read(self.hparams.train_file)
            self.labels = label_set(self.sentences["train"])
        return self.labels

    def _read(self, path: str, labels: list[str] | None = None) -> list[Sentence]:
        h = self.hparams
        return read_conll(path, iob1=h.iob1, strict_bio=h.strict_bio, labels=labels)

    def setup(self, stage: str | None = None) -> None:
        splits = {"fit": ["train", "val"], "validate": ["val"], "test": ["test"], "predict": ["predict"]}
        self.stage_splits = splits.get(stage, ["train", "val", "test"])
        if self.tokenizer is None:
            return       # a checkpoint being restored may bring one (use_vocabulary); the loaders check
        for split in self.stage_splits:
            if split not in self.windows:
                self._build(split)

    def _build(self, split: str) -> None:
        h = self.hparams
        if split == "predict":
            if not h.predict_file:
                raise DataError("ner predict: give data.predict_file (plain text, one sentence per line)")
            sentences = read_plain_text(h.predict_file)
        else:
            path = {"train": h.train_file, "val": h.val_file, "test": h.test_file}[split]
            if not path:
                raise DataError(f"ner: data.{split}_file is required for this stage")
            if split == "train":
                sentences = self.sentences["train"] if "train" in self.sentences else self._read(h.train_file)
                self.sentences["train"] = sentences
                if self.labels is None:
                    self.labels = label_set(sentences)
                if h.limit_train:
                    sentences = sentences[:h.limit_train]
            else:
                if self.labels is None and h.train_file:
                    self.read_labels()
                sentences = self._read(path, self.labels)
        # evaluation windows carry no labels: gold tags are read from the sentences themselves
        label2id = {t: i for i, t in enumerate(self.labels)} if split == "train" else None
        stride = h.stride if split == "train" else (h.eval_stride or h.stride)
        self.sentences[split] = sentences
        self.windows[split] = build_windows(self.tokenizer, sentences, label2id, max_length=h.max_length,
                                            context=h.context, stride=stride,
                                            label_all_subtokens=h.label_all_subtokens and split == "train")
        covered = sum(len(w.targets) for w in self.windows[split])
        self.truncated_words[split] = sum(len(s.words) for s in sentences) - covered

    def _windows(self, split: str) -> list[Window]:
        if split not in self.windows:
            raise DataError("ner: no tokenizer: give data.tokenizer (a model directory or vocab.txt) "
                            "or a checkpoint (--ckpt_path) that carries one")
        return self.windows[split]

    def train_dataloader(self) -> DataLoader:
        windows = self._windows("train")
        h = self.hparams
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        # several processes: a plain shuffled loader, which Lightning shards with a DistributedSampler (document
        # windows are nearly all full length, so grouping by length matters little there)
        if h.length_grouped and not distributed:
            sampler = LengthGroupedSampler([len(w.input_ids) for w in windows], h.batch_size, seed=h.seed)
            return DataLoader(WindowDataset(windows), batch_sampler=sampler, collate_fn=collate,
                              num_workers=h.num_workers)
        return DataLoader(WindowDataset(windows), batch_size=h.batch_size, shuffle=True, collate_fn=collate,
                          num_workers=h.num_workers)

    def _eval_loader(self, split: str) -> DataLoader:
        # keep file order: the task maps predictions back to words by batch position
        return DataLoader(WindowDataset(self._windows(split)), batch_size=self.hparams.eval_batch_size,
                          shuffle=False, collate_fn=collate, num_workers=self.hparams.num_workers)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader("predict")


def entities_json(sentence: Sentence, tags: list[str]) -> dict:
    """One plain-text sentence's entities: text span, type and character offsets [start, end)."""
    out = []
    for etype, first, last in entities(tags):
        start, end = sentence.spans[first][0], sentence.spans[last][1]
        out.append({"text": sentence.text[start:end], "type": etype, "start": start, "end": end})
    return {"line": sentence.line, "text": sentence.text, "entities": out}
