"""Sequence-to-sequence data: parallel text (translation) and document -> summary pairs (summarization).

Pipeline, each step a plain function the DataModule calls:

    read_parallel / read_pairs / read_aeslc  ->  Pairs (source, target, file line, references)
    train_tokenizer(training sources + targets)  ->  one joint subword `tokenizers.Tokenizer`
    encode_pairs(tokenizer, pairs)  ->  EncodedPairs (source ids + </s>; <s> + target ids + </s>)
    filter_by_length(...)  ->  LengthFilter (the kept indices and what was removed, by reason)

Nothing is dropped silently: an empty line or a misaligned file is a `DataError` naming the file and line, and
length filtering returns counts for the caller to log. Batching is data/batching.py's job: `EncodedPairs.lengths`
is what its sampler groups by. `Seq2SeqDataModule` puts these steps together for `run.py translate` and
`run.py summarize`.

The tokenizer is SentencePiece-style: spaces become "▁" (Metaspace) before a BPE or unigram model, and the Metaspace
decoder turns them back, with no normaliser, so `decode(encode(text)) == text` for text whose characters all
occur in the training data (tested on the Multi30k test set). That makes detokenised, cased BLEU possible.
`lowercase=True` adds a lowercasing normaliser instead, for metrics that ignore case (ROUGE): "Meeting", "MEETING"
and "meeting" become one piece, and outputs are lowercase.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

from pytorch_lightning.utilities import rank_zero_info
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from torch.utils.data import DataLoader

from data.base import TaskDataModule
from data.batching import pad_collate
from data.cache import cached_columns, cached_text, content_key
from data.errors import ConfigError, DataError
from data.hub import is_hub, local_file
from data.readers import read_json_lines, read_table, read_text
from data.tokenization import load_tokenizer, tokenizer_from_str

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")
PAD_ID, BOS_ID, EOS_ID, UNK_ID = range(len(SPECIAL_TOKENS))
TABLE_SUFFIXES = (".tsv", ".csv", ".jsonl", ".json")


@dataclass(frozen=True)
class SpecialTokens:
    """Where a vocabulary keeps padding and the start and end of a sequence. With ours (`train_tokenizer`) a source
    is `x </s>` and a target `<s> y </s>`; with a BERT WordPiece vocabulary (a warm start) `[CLS] x [SEP]`, as BERT
    was trained to read, and `[CLS] y [SEP]` (Rothe et al. 2020)."""
    pad: int
    bos: int                # starts the decoder's input
    eos: int                # ends the source and the target
    source_bos: bool        # the source starts with `bos` too


SUBWORD_SPECIALS = SpecialTokens(PAD_ID, BOS_ID, EOS_ID, source_bos=False)


def special_tokens(tokenizer: Tokenizer) -> SpecialTokens:
    """The special tokens of our subword vocabulary (<pad> <s> </s>) or of a BERT vocabulary ([PAD] [CLS] [SEP])."""
    for (pad, bos, eos), source_bos in ((("<pad>", "<s>", "</s>"), False), (("[PAD]", "[CLS]", "[SEP]"), True)):
        ids = [tokenizer.token_to_id(t) for t in (pad, bos, eos)]
        if None not in ids:
            return SpecialTokens(*ids, source_bos=source_bos)
    raise ConfigError("data.tokenizer: a sequence-to-sequence vocabulary needs <pad> <s> </s> (ours) or "
                      "[PAD] [CLS] [SEP] (a BERT's)")


# ---------------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------------
@dataclass
class Pairs:
    """Aligned examples `sources[i] -> targets[i]`, each with the file line it came from. `references[i]` is every
    reference of example i, the target first (AESLC dev/test add three human subject lines)."""
    sources: list[str]
    targets: list[str]
    lines: list[int]
    references: list[list[str]]

    def __len__(self) -> int:
        return len(self.sources)

    def subset(self, indices: Sequence[int]) -> "Pairs":
        return Pairs([self.sources[i] for i in indices], [self.targets[i] for i in indices],
                     [self.lines[i] for i in indices], [self.references[i] for i in indices])


def read_lines(path: str | Path) -> list[str]:
    """The lines of a UTF-8 text file, split on "\\n" only (as `wc -l` counts them), stripped at both ends.
    An empty line is an error: it would shift or drop a pair."""
    text = read_text(path)
    lines = text.split("\n")
    if lines[-1] == "":                      # the newline that ends the last line
        lines.pop()
    if not lines:
        raise DataError(f"{path}: file is empty")
    stripped = [line.strip() for line in lines]
    for number, line in enumerate(stripped, start=1):
        if not line:
            raise DataError(f"{path}, line {number}: empty line (every line must hold a sentence)")
    return stripped


def read_parallel(source_path: str | Path, target_path: str | Path) -> Pairs:
    """Two line-aligned files (`train.en`, `train.de`): line n of one translates line n of the other."""
    sources, targets = read_lines(source_path), read_lines(target_path)
    if len(sources) != len(targets):
        raise DataError(f"{source_path} has {len(sources)} lines but {target_path} has {len(targets)}: "
                        f"parallel files must be line-aligned")
    return Pairs(sources, targets, list(range(1, len(sources) + 1)), [[t] for t in targets])


def read_pairs(path: str | Path, source_column: str, target_column: str,
               references_column: str | None = None) -> Pairs:
    """A .tsv/.csv/.jsonl file with named source and target columns (data/readers.py checks every row).
    `references_column` (JSON lines only) names a list of extra references; rows without it have only the target."""
    table = read_table(path, [source_column, target_column])
    targets = table[target_column]
    references = [[t] for t in targets]
    if references_column is not None:
        extra = _json_string_lists(Path(path), references_column, table["_line"])
        references = [[t, *more] for t, more in zip(targets, extra)]
    return Pairs(table[source_column], targets, table["_line"], references)


def read_aeslc(path: str | Path) -> Pairs:
    """AESLC (JSON lines): `email` -> `subject`, with the dev/test `annotations` as extra references."""
    return read_pairs(path, "email", "subject", references_column="annotations")


def _json_string_lists(path: Path, key: str, lines: list[int]) -> list[list[str]]:
    """`row[key]` (a list of non-empty strings, or absent) of the JSON rows at file `lines`. read_table returns
    scalar columns only, so the lists are read here."""
    if path.suffix.lower() not in (".jsonl", ".json"):
        raise ConfigError(f"data.references_column {key!r}: extra references need a JSON lines file, not {path.name}")
    rows = dict(read_json_lines(path))                                 # line number -> object, as read_table
    lists = []
    for line in lines:
        value = rows[line].get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
            raise DataError(f"{path}, line {line}: {key!r} must be a list of non-empty strings")
        lists.append([v.strip() for v in value])
    return lists


# ---------------------------------------------------------------------------------------------------------
# Joint subword vocabulary
# ---------------------------------------------------------------------------------------------------------
def train_tokenizer(texts: Iterable[str], vocab_size: int = 8000, model: str = "bpe",
                    min_frequency: int = 2, lowercase: bool = False) -> Tokenizer:
    """A joint subword vocabulary trained on `texts` (the training sources and targets together, never the
    evaluation data). Metaspace pre-tokenizer and decoder around a BPE or unigram model, as SentencePiece does;
    `<pad>`, `<s>`, `</s>`, `<unk>` get ids 0-3; `lowercase`: text is lowercased before it is split. Save it in a
    checkpoint with `tokenizer.to_str()` (the normaliser travels with it)."""
    if vocab_size <= len(SPECIAL_TOKENS):
        raise ConfigError(f"data.vocab_size {vocab_size}: must be > {len(SPECIAL_TOKENS)}")
    if model == "bpe":
        tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                      special_tokens=list(SPECIAL_TOKENS), show_progress=False)
    elif model == "unigram":
        tokenizer = Tokenizer(models.Unigram())
        trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                          unk_token="<unk>", show_progress=False)
    else:
        raise ConfigError(f"data.tokenizer_model {model!r}: expected 'bpe' or 'unigram'")
    if lowercase:
        tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


# ---------------------------------------------------------------------------------------------------------
# Encoding and length filtering
# ---------------------------------------------------------------------------------------------------------
@dataclass
class EncodedPairs:
    """Token ids of aligned pairs. `source_ids[i]` ends with </s>; `target_ids[i]` is <s> y </s>, so the decoder
    reads `target_ids[i][:-1]` and predicts `target_ids[i][1:]` (with a BERT vocabulary: [CLS] x [SEP], [CLS] y [SEP]).
    `source_tokens` / `target_tokens` count the subwords before truncation (no special tokens): what length
    filtering looks at."""
    source_ids: list[list[int]]
    target_ids: list[list[int]]
    source_tokens: list[int]
    target_tokens: list[int]
    specials: SpecialTokens = SUBWORD_SPECIALS

    def __len__(self) -> int:
        return len(self.source_ids)

    @property
    def lengths(self) -> list[int]:
        """Padded positions an example needs in a batch: max(source length, decoder length), for token budgets."""
        return [max(len(s), len(t) - 1) for s, t in zip(self.source_ids, self.target_ids)]

    @property
    def num_truncated(self) -> tuple[int, int]:
        """(sources, targets) cut by `max_source_length` / `max_target_length`, for the log."""
        source_extra = 1 + self.specials.source_bos
        return (sum(len(ids) - source_extra < n for ids, n in zip(self.source_ids, self.source_tokens)),
                sum(len(ids) - 2 < n for ids, n in zip(self.target_ids, self.target_tokens)))

    def subset(self, indices: Sequence[int]) -> "EncodedPairs":
        return EncodedPairs([self.source_ids[i] for i in indices], [self.target_ids[i] for i in indices],
                            [self.source_tokens[i] for i in indices], [self.target_tokens[i] for i in indices],
                            self.specials)


def encode_sources(tokenizer: Tokenizer, sources: Sequence[str], max_source_length: int | None = None,
                   specials: SpecialTokens = SUBWORD_SPECIALS) -> tuple[list[list[int]], list[int]]:
    """(source ids, subwords per source before the cut): `x </s>` (or `[CLS] x [SEP]`) with x cut so that at most
    `max_source_length` ids remain."""
    extra = 1 + specials.source_bos
    if max_source_length is not None and max_source_length < extra + 1:
        raise ConfigError(f"data.max_source_length {max_source_length}: must be >= {extra + 1} "
                          f"(one subword and the special tokens)")
    pieces = [e.ids for e in tokenizer.encode_batch(list(sources), add_special_tokens=False)]
    keep = None if max_source_length is None else max_source_length - extra
    start = [specials.bos] if specials.source_bos else []
    return [start + ids[:keep] + [specials.eos] for ids in pieces], [len(ids) for ids in pieces]


def encode_pairs(tokenizer: Tokenizer, sources: Sequence[str], targets: Sequence[str],
                 max_source_length: int | None = None, max_target_length: int | None = None,
                 specials: SpecialTokens = SUBWORD_SPECIALS) -> EncodedPairs:
    """Source: subwords cut to `max_source_length - 1`, then </s>. Target: <s>, subwords cut to
    `max_target_length - 1`, </s> (the decoder input and output are then at most `max_target_length` long)."""
    if max_target_length is not None and max_target_length < 2:
        raise ConfigError(f"data.max_target_length {max_target_length}: must be >= 2 (one subword and </s>)")
    source_ids, source_tokens = encode_sources(tokenizer, sources, max_source_length, specials)
    target_pieces = [e.ids for e in tokenizer.encode_batch(list(targets), add_special_tokens=False)]
    target_keep = None if max_target_length is None else max_target_length - 1
    return EncodedPairs(
        source_ids=source_ids,
        target_ids=[[specials.bos] + ids[:target_keep] + [specials.eos] for ids in target_pieces],
        source_tokens=source_tokens,
        target_tokens=[len(ids) for ids in target_pieces],
        specials=specials,
    )


@dataclass
class LengthFilter:
    """Outcome of length filtering: the indices kept and how many pairs each rule removed (a pair that breaks
    several rules counts under the first: too short, too long, ratio)."""
    kept: list[int]
    too_short: int
    too_long: int
    bad_ratio: int

    @property
    def removed(self) -> int:
        return self.too_short + self.too_long + self.bad_ratio

    def summary(self) -> str:
        return (f"kept {len(self.kept)} pairs, removed {self.removed} ({self.too_short} too short, "
                f"{self.too_long} too long, {self.bad_ratio} with a length ratio over the limit)")


def filter_by_length(source_tokens: Sequence[int], target_tokens: Sequence[int], min_tokens: int = 1,
                     max_tokens: int | None = None, max_ratio: float | None = None) -> LengthFilter:
    """Keep training pairs whose source and target both have `min_tokens`..`max_tokens` subwords and whose
    longer side is at most `max_ratio` times the shorter (Moses' clean-corpus-n rule). Never used on evaluation
    data, where every example is scored."""
    if max_tokens is not None and max_tokens < min_tokens:
        raise ConfigError(f"data.max_length {max_tokens}: must be >= data.min_length {min_tokens}")
    if max_ratio is not None and max_ratio < 1:
        raise ConfigError(f"data.max_ratio {max_ratio}: must be >= 1")
    kept, too_short, too_long, bad_ratio = [], 0, 0, 0
    for i, (s, t) in enumerate(zip(source_tokens, target_tokens, strict=True)):
        if min(s, t) < min_tokens:
            too_short += 1
        elif max_tokens is not None and max(s, t) > max_tokens:
            too_long += 1
        elif max_ratio is not None and max(s, t) > max_ratio * min(s, t):
            bad_ratio += 1
        else:
            kept.append(i)
    return LengthFilter(kept, too_short, too_long, bad_ratio)


# ---------------------------------------------------------------------------------------------------------
# DataModule
# ---------------------------------------------------------------------------------------------------------
SplitFiles = Union[list[str], str]          # one table file, or [source file, target file] (line-aligned)


class Seq2SeqDataModule(TaskDataModule):
    """Source -> target pairs for an encoder-decoder: translation (Multi30k, two line-aligned files per split) and
    summarization (AESLC, JSON lines `email` -> `subject` with extra `annotations` references).

    Each split is read and checked in `setup`, before anything trains: a bad file stops the run with one line naming
    the file and line. The vocabulary is, in this order: a restored checkpoint's; `tokenizer` (a file or directory,
    e.g. a BERT's WordPiece for a warm start, which the task also asks for through `default_tokenizer`); or a joint
    subword vocabulary trained on the training split's sources and targets, cached under `cache_dir` by content and
    settings (a second run reads it back). Encoded splits are cached the same way (data/cache.py).

    Training pairs are length-filtered (`min_length`, `max_length`, `max_ratio`, in subwords before truncation; the
    log says how many each rule removed) and truncated to `max_source_length` / `max_target_length`; evaluation
    pairs are only truncated (every example is scored). Training batches hold `batch_size` pairs, or as many as fit
    `max_tokens` padded positions, grouped by length; evaluation batches `eval_batch_size` pairs; all sharded across
    processes by the base's sampler (every evaluation example on exactly one process).

    For evaluation and prediction a task reads `examples(split)` (sources, references, file lines); batches carry
    each example's `index` in it.
    """

    def __init__(self, train_file: Optional[SplitFiles] = None, val_file: Optional[SplitFiles] = None,
                 test_file: Optional[SplitFiles] = None, predict_file: Optional[str] = None,
                 source_column: str = "source", target_column: str = "target",
                 references_column: Optional[str] = None, tokenizer: Optional[str] = None, vocab_size: int = 8000,
                 tokenizer_model: str = "bpe", min_frequency: int = 2, lowercase: bool = False,
                 max_source_length: int = 256,
                 max_target_length: int = 256, min_length: int = 1, max_length: Optional[int] = None,
                 max_ratio: Optional[float] = None, max_tokens: Optional[int] = None, group_by_length: bool = True,
                 cache_dir: Optional[str] = ".cache/seq2seq", **kwargs):
        """
        Args:
            train_file, val_file, test_file: a .tsv/.csv/.jsonl file with `source_column` and `target_column`, or two
                line-aligned text files [source, target] (e.g. [train.en, train.de]).
            predict_file: sources to decode: a text file (one a line) or a .tsv/.csv/.jsonl file (`source_column`).
            source_column, target_column: the columns (JSON keys) of the source and the target.
            references_column: JSON lines only: a list of extra references per row (AESLC's `annotations`), scored
                beside the target.
            tokenizer: a tokenizer file or model directory (default: the checkpoint's, the pretrained model's, or a
                joint vocabulary trained on the training split).
            vocab_size, tokenizer_model, min_frequency, lowercase: the joint vocabulary: size, "bpe" or "unigram",
                the fewest occurrences of a merged pair (BPE), and whether it lowercases text (for a metric that
                ignores case, such as ROUGE; outputs are then lowercase).
            max_source_length, max_target_length: longest source / decoder input in tokens (special tokens
                included); longer ones are truncated and counted in the log. A checkpoint brings its own.
            min_length, max_length, max_ratio: training pairs are kept when both sides have min_length..max_length
                subwords and the longer side is at most max_ratio times the shorter (None: no limit).
            max_tokens: training batches by token budget: as many pairs as fit max_tokens padded positions
                (instead of batch_size pairs).
            group_by_length: build training batches from pairs of similar length.
            cache_dir: where the vocabulary and the encoded splits are cached (None: no cache).
        """
        super().__init__(**kwargs)
        checks = [("max_tokens", max_tokens, max_tokens is None or max_tokens > 0, "must be > 0"),
                  ("min_length", min_length, min_length >= 0, "must be >= 0"),
                  ("min_frequency", min_frequency, min_frequency >= 1, "must be >= 1")]
        for key, value, ok, rule in checks:
            if not ok:
                raise ConfigError(f"data.{key} {value}: {rule}")
        if tokenizer_model not in ("bpe", "unigram"):
            raise ConfigError(f"data.tokenizer_model {tokenizer_model!r}: expected 'bpe' or 'unigram'")
        filter_by_length([], [], min_length, max_length, max_ratio)          # checks these settings now
        self.save_hyperparameters()
        self.files = {"train": train_file, "val": val_file, "test": test_file, "predict": predict_file}
        self.max_source_length, self.max_target_length = max_source_length, max_target_length
        self.pairs: dict[str, Pairs] = {}
        self._encoded: dict[str, EncodedPairs] = {}

    # ---- reading and checking -----------------------------------------------------------------------------------
    def _read(self, split: str) -> Pairs:
        hp, spec = self.hparams, self.files[split]
        if spec is None:
            raise DataError(f"no {split} data: set data.{split}_file")
        if is_hub(spec):
            spec = self._hub_split(spec, split)
        if split == "predict":
            return self._read_sources(spec)
        if isinstance(spec, (list, tuple)):
            if len(spec) != 2:
                raise ConfigError(f"data.{split}_file: one table file or two line-aligned files [source, target], "
                                  f"not {len(spec)} files")
            if any(map(is_hub, spec)):
                raise ConfigError(f"data.{split}_file {list(spec)}: a hub split holds both sides: give it alone, with "
                                  f"data.source_column and data.target_column")
            return read_parallel(*spec)
        return read_pairs(spec, hp.source_column, hp.target_column, hp.references_column)

    def _hub_split(self, spec: str, split: str) -> Path:
        """The split's local copy, once its first row has every column the settings name: a hub dataset has its own
        column names, and the copy's line 1 would name the cache file, not the setting to change."""
        path = local_file(spec, "table")
        hp = self.hparams
        settings = {"source_column": hp.source_column}
        if split != "predict":
            settings["target_column"] = hp.target_column
        with open(path, encoding="utf-8") as f:          # the first row only: we wrote the copy, one object a line
            line = f.readline()
        row = json.loads(line) if line.strip() else {}    # an empty split: the reader names the problem
        for key, column in settings.items():
            if row and column not in row:
                raise ConfigError(f"data.{key} {column!r}: {spec} has no such column (columns: {', '.join(row)})")
        return path

    def _read_sources(self, path: str) -> Pairs:
        """Sources to decode, without targets (`targets` empty strings, no references)."""
        if Path(path).suffix.lower() in TABLE_SUFFIXES:
            table = read_table(path, [self.hparams.source_column])
            sources, lines = table[self.hparams.source_column], table["_line"]
        else:
            sources = read_lines(path)
            lines = list(range(1, len(sources) + 1))
        return Pairs(sources, [""] * len(sources), lines, [[] for _ in sources])

    def setup(self, stage: str) -> None:
        """Reads and checks the files this stage needs (the vocabulary and the encoding wait until they are needed)."""
        splits = {"fit": ["train", "val"], "validate": ["val"], "test": ["test"], "predict": ["predict"]}[stage]
        for split in splits:
            if split not in self.pairs and not (split == "val" and stage == "fit" and self.files["val"] is None):
                self.pairs[split] = self._read(split)
        if self.tokenizer is None and self.hparams.tokenizer:
            self.tokenizer = load_tokenizer(self.hparams.tokenizer)

    def adopt(self, blueprint) -> None:
        """A restored checkpoint's vocabulary and truncation lengths win: its model reads text as it was trained."""
        super().adopt(blueprint)
        self.max_source_length = blueprint.settings.get("max_source_length", self.max_source_length)
        self.max_target_length = blueprint.settings.get("max_target_length", self.max_target_length)
        self._encoded.clear()                     # encoded again with the checkpoint's vocabulary

    def examples(self, split: str) -> Pairs:
        """The pairs of a split as read (sources, references, file lines); predict: sources only."""
        if split not in self.pairs:
            self.pairs[split] = self._read(split)
        return self.pairs[split]

    # ---- the vocabulary ---------------------------------------------------------------------------------------
    def ensure_tokenizer(self) -> Tokenizer:
        """The vocabulary (see the class doc), training the joint one on the training split if none has come. Under
        DDP every process calls this when the model is built, and all take process 0's joint vocabulary (a unigram
        model's training is not deterministic)."""
        if self.tokenizer is None:
            if self.files["train"] is None:
                raise DataError("no vocabulary: set data.train_file (a joint vocabulary is trained on it), "
                                "data.tokenizer, or give a checkpoint")
            tokenizer = self._joint_vocabulary(self.examples("train"))
            if self.trainer is not None and self.trainer.world_size > 1:
                tokenizer = tokenizer_from_str(self.trainer.strategy.broadcast(tokenizer.to_str(), src=0))
            self.tokenizer = tokenizer
        return self.tokenizer

    def _joint_vocabulary(self, train: Pairs) -> Tokenizer:
        hp = self.hparams
        options = {"vocab_size": hp.vocab_size, "model": hp.tokenizer_model, "min_frequency": hp.min_frequency}
        if hp.lowercase:                          # only then, so that the cased vocabularies keep their cache keys
            options["lowercase"] = True
        settings = json.dumps(options)
        path = None
        if hp.cache_dir:
            key = content_key(settings, "\x00".join(train.sources), "\x00".join(train.targets))
            path = Path(hp.cache_dir) / f"vocabulary-{key}.json"

        def train_joint() -> str:
            tokenizer = train_tokenizer(train.sources + train.targets, hp.vocab_size, hp.tokenizer_model,
                                        hp.min_frequency, hp.lowercase)
            rank_zero_info(f"joint {hp.tokenizer_model} vocabulary of {tokenizer.get_vocab_size():,} subwords "
                           f"trained on the {len(train):,} training pairs")
            return tokenizer.to_str()

        return tokenizer_from_str(cached_text(path, train_joint, "joint vocabulary"))

    # ---- encoding (cached), length filtering, loaders ---------------------------------------------------------
    def encoded(self, split: str) -> EncodedPairs:
        """The split's token ids (training pairs length-filtered), with the checkpoint's or the joint vocabulary."""
        if split in self._encoded:
            return self._encoded[split]
        hp, tokenizer, pairs = self.hparams, self.ensure_tokenizer(), self.examples(split)
        specials = special_tokens(tokenizer)
        settings = json.dumps([self.max_source_length, self.max_target_length, split == "predict"])
        key = content_key(tokenizer.to_str(), settings, "\x00".join(pairs.sources), "\x00".join(pairs.targets))

        def encode() -> dict[str, list]:
            if split == "predict":
                ids, counts = encode_sources(tokenizer, pairs.sources, self.max_source_length, specials)
                return {"source_ids": ids, "target_ids": [[] for _ in ids], "source_tokens": counts,
                        "target_tokens": [0] * len(ids)}
            e = encode_pairs(tokenizer, pairs.sources, pairs.targets, self.max_source_length, self.max_target_length,
                             specials)
            return {"source_ids": e.source_ids, "target_ids": e.target_ids, "source_tokens": e.source_tokens,
                    "target_tokens": e.target_tokens}

        write = self.trainer is None or self.trainer.global_rank == 0        # DDP: rank 0 stores the cache
        encoded = EncodedPairs(**cached_columns(hp.cache_dir or None, key, encode, write), specials=specials)
        origin = " / ".join(self.files[split]) if isinstance(self.files[split], (list, tuple)) else self.files[split]
        sources_cut, targets_cut = encoded.num_truncated
        if sources_cut or (targets_cut and split != "predict"):
            rank_zero_info(f"{origin}: truncated {sources_cut} of {len(encoded)} sources to {self.max_source_length} "
                           f"tokens" + ("" if split == "predict" else
                                        f" and {targets_cut} targets to {self.max_target_length}"))
        if split == "train":
            report = filter_by_length(encoded.source_tokens, encoded.target_tokens, hp.min_length, hp.max_length,
                                      hp.max_ratio)
            rank_zero_info(f"{origin}: length filter (subwords {hp.min_length}..{hp.max_length}, ratio "
                           f"{hp.max_ratio}): {report.summary()}")
            if not report.kept:
                raise DataError(f"{origin}: the length filter removed every training pair ({report.summary()})")
            encoded = encoded.subset(report.kept)
        self._encoded[split] = encoded
        return encoded

    def split_loader(self, split: str, train: bool, keep_order: bool) -> DataLoader:
        encoded = self.encoded(split)
        pad = encoded.specials.pad
        if split == "predict":
            rows = [{"source_ids": ids, "index": i} for i, ids in enumerate(encoded.source_ids)]
            lengths = [len(ids) for ids in encoded.source_ids]
            collate = pad_collate({"source_ids": pad}, masks={"source_ids": "source_mask"})
        else:
            rows = [{"source_ids": s, "target_ids": t, "index": i}
                    for i, (s, t) in enumerate(zip(encoded.source_ids, encoded.target_ids))]
            lengths = encoded.lengths
            collate = pad_collate({"source_ids": pad, "target_ids": pad}, masks={"source_ids": "source_mask"})
        budget = self.hparams.max_tokens if train else None
        if budget is not None and max(lengths) > budget:
            raise ConfigError(f"data.max_tokens {budget}: smaller than the longest training pair ({max(lengths)} "
                              f"tokens); raise it, or lower data.max_source_length / data.max_target_length")
        return self.loader(rows, lengths, collate, train=train, max_tokens=budget, keep_order=keep_order,
                           group_by_length=self.hparams.group_by_length or not train)
