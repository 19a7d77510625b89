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

import re
from dataclasses import dataclass, field
from pathlib import Path

from tokenizers import Tokenizer
from torch.utils.data import DataLoader

from data.base import TaskDataModule
from data.batching import pad_collate
from data.errors import ConfigError, DataError
from data.hub import local_file
from data.readers import read_text
from data.tokenization import load_tokenizer

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
    text = read_text(path)
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
                                               f"(an entity must start with B-{tag[2:]}); --data.iob1 true reads "
                                               f"IOB1 files")
            sentences.append(Sentence(words, bio, doc, lines[0]))
        words, tags, lines = [], [], []

    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("-DOCSTART-"):
            close()
            if line and sentences and sentences[-1].doc == doc:
                doc += 1
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
    """One sentence per line, tokenized on whitespace and punctuation; blank lines separate documents. Every line is
    kept, a blank one as a sentence without words, so predictions line up one to one with the input lines."""
    path = Path(path)
    sentences, doc = [], 0
    for lineno, line in enumerate(read_text(path).splitlines(), 1):
        matches = list(TOKEN_RE.finditer(line))
        if not matches and sentences and sentences[-1].doc == doc and sentences[-1].words:
            doc += 1
        words = [m.group() for m in matches]
        sentences.append(Sentence(words, ["O"] * len(words), doc, lineno, spans=[m.span() for m in matches],
                                  text=line))
    if not any(s.words for s in sentences):
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
    room = max_length - 2
    if room < 1:
        raise ConfigError(f"data.max_length {max_length}: leaves no room for tokens between [CLS] and [SEP]")
    stride = room if stride is None else stride
    if not 0 < stride <= room:
        raise ConfigError(f"data.stride {stride}: must be in 1..{room} (max_length - 2)")
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")

    groups: list[list[int]] = []             # sentence indices encoded together
    for i, s in enumerate(sentences):
        if context == "document" and groups and sentences[groups[-1][-1]].doc == s.doc:
            groups[-1].append(i)
        else:
            groups.append([i])

    windows = []
    for group in groups:
        # the group's sub-token stream, one entry per sub-token: token id, label id (or IGNORE), casing class,
        # and (sentence, word) on a word's first sub-token (None on the others)
        ids, labels, cases, words = [], [], [], []
        for si in group:
            s = sentences[si]
            for wi, (word, pieces) in enumerate(zip(s.words, word_pieces(tokenizer, s.words))):
                tag = s.tags[wi]
                first = label2id[tag] if label2id is not None else IGNORE
                inner = IGNORE
                if label2id is not None and label_all_subtokens:
                    inner = label2id.get("I-" + tag[2:], first) if tag.startswith("B-") else first
                ids += pieces
                labels += [first] + [inner] * (len(pieces) - 1)
                cases += [casing(word)] * len(pieces)
                words += [(si, wi)] + [None] * (len(pieces) - 1)
        n = len(ids)
        # document: starts every `stride` sub-tokens up to the first window that reaches the end of the stream
        starts = [0] if context == "sentence" else list(range(0, max(1, n - room + stride), stride))

        def margin(start: int, pos: int) -> int:
            """Sub-tokens from `pos` to the nearer edge of the window at `start` (an end of the stream is no edge)."""
            end = min(start + room, n)
            return min(pos - start if start > 0 else room, end - 1 - pos if end < n else room)

        # owner[pos]: the one window that labels and predicts the word of sub-token `pos` (None: cut off), the
        # window where the word's first sub-token is farthest from an edge
        owner: list[int | None] = []
        for pos, word in enumerate(words):
            if word is None:            # a later sub-token directly follows its word's earlier ones
                owner.append(owner[-1])
                continue
            inside = [w for w, start in enumerate(starts) if start <= pos < start + room]
            owner.append(max(inside, key=lambda w: margin(starts[w], pos), default=None))
        for w, start in enumerate(starts):
            chunk = range(start, min(start + room, n))
            window_labels = [labels[pos] if owner[pos] == w else IGNORE for pos in chunk]
            targets = [(pos - start + 1, *words[pos]) for pos in chunk if owner[pos] == w and words[pos] is not None]
            windows.append(Window([cls] + ids[start:start + room] + [sep], [IGNORE] + window_labels + [IGNORE],
                                  [0] + cases[start:start + room] + [0], targets, len(windows)))
    return windows


def words_to_tags(sentences: list[Sentence], windows: list[Window], predictions: list[list[int]],
                  id2label: list[str]) -> tuple[list[list[str]], int]:
    """Per-position label ids of each window -> one tag per original word. Returns (tags, cut): words with no
    prediction (cut off by `max_length`) are tagged `O` and counted in `cut`."""
    tags = [[None] * len(s.words) for s in sentences]
    for window, pred in zip(windows, predictions):
        for pos, si, wi in window.targets:
            tags[si][wi] = id2label[pred[pos]]
    cut = sum(tag is None for row in tags for tag in row)
    return [["O" if tag is None else tag for tag in row] for row in tags], cut


# --------------------------------------------------------------------------- batching

def window_example(w: Window) -> dict:
    """A window as the dict the padding collate takes."""
    return {"input_ids": w.input_ids, "labels": w.labels, "casing": w.casing, "index": w.index}


collate_windows = pad_collate({"input_ids": 0, "labels": IGNORE, "casing": 0})   # [PAD] is 0 in BERT vocabularies


class CoNLLDataModule(TaskDataModule):
    """CoNLL-2003 train/validation/test files, or plain text to tag (`predict_file`).

    For evaluation a task reads `examples(split)`: the sentences (gold tags) and the windows their words were cut
    into; each batch carries the windows' `index`, which maps predictions back to words (`words_to_tags`).
    """

    def __init__(self, tokenizer: str | None = None, train_file: str | None = None, val_file: str | None = None,
                 test_file: str | None = None, predict_file: str | None = None, labels: list[str] | None = None,
                 max_length: int = 128, context: str = "sentence", stride: int | None = None,
                 eval_stride: int | None = None, label_all_subtokens: bool = False, iob1: bool = False,
                 strict_bio: bool = False, group_by_length: bool = True, limit_train: int = 0, **kwargs):
        """
        Args:
            tokenizer: model directory, tokenizer.json or vocab.txt (default: model.pretrained's, or the checkpoint's).
            train_file, val_file, test_file: CoNLL files (token ... tag per line); predict_file: plain text, one
                sentence per line, blank lines between documents.
            labels: the tag set in output order (default: O then B-/I- of each type in the training file).
            max_length: sub-tokens per window, [CLS] and [SEP] included.
            context: "sentence" (each sentence alone) or "document" (windows over whole documents).
            stride, eval_stride: sub-tokens between window starts in document context (default: no overlap).
            label_all_subtokens: every sub-token carries its word's label (default: the first only).
            iob1: the files are IOB1 (converted to BIO); strict_bio: an I- that does not continue its type is an error.
            group_by_length: training batches of windows of similar length.
            limit_train: use only the first N training sentences (0: all).
        """
        super().__init__(**kwargs)
        if context not in ("sentence", "document"):
            raise ConfigError(f"data.context {context!r}: choose sentence or document")
        if max_length < 3:
            raise ConfigError(f"data.max_length {max_length}: must be at least 3 ([CLS] x [SEP])")
        self.save_hyperparameters()
        self.max_length = max_length
        self.labels = list(labels) if labels else None
        self.sentences: dict[str, list[Sentence]] = {}
        self._windows: dict[str, list[Window]] = {}

    def adopt(self, blueprint) -> None:
        super().adopt(blueprint)
        self._windows.clear()                 # cut again with the checkpoint's tokenizer

    def _read(self, path: str, labels: list[str] | None = None) -> list[Sentence]:
        h = self.hparams
        return read_conll(local_file(path, "conll"), iob1=h.iob1, strict_bio=h.strict_bio, labels=labels)

    def setup(self, stage: str | None = None) -> None:
        """Reads and checks this stage's files (windows are cut later, once the tokenizer is known)."""
        h = self.hparams
        if self.tokenizer is None and h.tokenizer:
            self.tokenizer = load_tokenizer(h.tokenizer)
        if stage == "predict":
            if not h.predict_file:
                raise DataError("ner predict: give data.predict_file (plain text, one sentence per line)")
            self.sentences["predict"] = read_plain_text(local_file(h.predict_file, "text"))
            return
        if stage == "fit":
            if not h.train_file:
                raise DataError("ner: data.train_file is required to train")
            self.sentences["train"] = self._read(h.train_file)
            if self.labels is None:
                self.labels = label_set(self.sentences["train"])
        split = {"fit": "val", "validate": "val", "test": "test"}[stage]
        path = h.test_file if split == "test" else h.val_file
        if path is not None:
            self.sentences[split] = self._read(path, self.labels)
        elif stage != "fit":                  # validation during training is optional
            raise DataError(f"ner: data.{split}_file is required for this stage")

    def examples(self, split: str) -> tuple[list[Sentence], list[Window]]:
        """The sentences of a split and the windows cut from them (each window's `targets` says which words it
        predicts; every word is predicted by at most one window)."""
        if split not in self._windows:
            if self.tokenizer is None:
                raise DataError("ner: no tokenizer: give data.tokenizer (a model directory or vocab.txt), "
                                "model.pretrained, or a checkpoint (--ckpt_path) that carries one")
            h = self.hparams
            sentences = self.sentences[split]
            if split == "train" and h.limit_train:
                sentences = sentences[:h.limit_train]
            # evaluation windows carry no labels: gold tags are read from the sentences themselves
            label2id = {t: i for i, t in enumerate(self.labels)} if split == "train" else None
            stride = h.stride if split == "train" else (h.eval_stride or h.stride)
            self._windows[split] = build_windows(self.tokenizer, sentences, label2id, max_length=h.max_length,
                                                 context=h.context, stride=stride,
                                                 label_all_subtokens=h.label_all_subtokens and split == "train")
        return self.sentences[split], self._windows[split]

    def split_loader(self, split: str, train: bool, keep_order: bool) -> DataLoader:
        """Predict keeps file order: the task writes each sentence's entities once all its windows are predicted."""
        _, windows = self.examples(split)
        return self.loader([window_example(w) for w in windows], [len(w.input_ids) for w in windows],
                           collate_windows, train=train, keep_order=keep_order,
                           group_by_length=self.hparams.group_by_length or not train)


def entities_json(sentence: Sentence, tags: list[str]) -> dict:
    """One plain-text sentence's entities: text span, type and character offsets [start, end)."""
    out = []
    for etype, first, last in entities(tags):
        start, end = sentence.spans[first][0], sentence.spans[last][1]
        out.append({"text": sentence.text[start:end], "type": etype, "start": start, "end": end})
    return {"line": sentence.line, "text": sentence.text, "entities": out}
