"""Sequence-to-sequence data: parallel text (translation) and document -> summary pairs (summarization).

Pipeline, each step a plain function the DataModule calls:

    read_parallel / read_pairs / read_aeslc  ->  Pairs (source, target, file line, references)
    train_tokenizer(training sources + targets)  ->  one joint subword `tokenizers.Tokenizer`
    encode_pairs(tokenizer, pairs)  ->  EncodedPairs (source ids + </s>; <s> + target ids + </s>)
    filter_by_length(...)  ->  LengthFilter (the kept indices and what was removed, by reason)

Nothing is dropped silently: an empty line or a misaligned file is a `DataError` naming the file and line, and
length filtering returns counts for the caller to log. Batching is data/batching.py's job: `EncodedPairs.lengths`
is what its sampler groups by.

The tokenizer is SentencePiece-style: spaces become "▁" (Metaspace) before a BPE or unigram model, and the Metaspace
decoder turns them back, with no normaliser, so `decode(encode(text)) == text` for text whose characters all
occur in the training data (tested on the Multi30k test set). That makes detokenised, cased BLEU possible.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from data.errors import ConfigError, DataError
from data.readers import read_table, read_text

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")
PAD_ID, BOS_ID, EOS_ID, UNK_ID = range(len(SPECIAL_TOKENS))


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
    text_lines = read_text(path).splitlines()                          # numbered as read_table numbers them
    lists = []
    for line in lines:
        value = json.loads(text_lines[line - 1]).get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
            raise DataError(f"{path}, line {line}: {key!r} must be a list of non-empty strings")
        lists.append([v.strip() for v in value])
    return lists


# ---------------------------------------------------------------------------------------------------------
# Joint subword vocabulary
# ---------------------------------------------------------------------------------------------------------
def train_tokenizer(texts: Iterable[str], vocab_size: int = 8000, model: str = "bpe",
                    min_frequency: int = 2) -> Tokenizer:
    """A joint subword vocabulary trained on `texts` (the training sources and targets together, never the
    evaluation data). Metaspace pre-tokenizer and decoder around a BPE or unigram model, as SentencePiece does;
    `<pad>`, `<s>`, `</s>`, `<unk>` get ids 0-3. Save it in a checkpoint with `tokenizer.to_str()`."""
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
    reads `target_ids[i][:-1]` and predicts `target_ids[i][1:]`. `source_tokens` / `target_tokens` count the
    subwords before truncation (no special tokens): what length filtering looks at."""
    source_ids: list[list[int]]
    target_ids: list[list[int]]
    source_tokens: list[int]
    target_tokens: list[int]

    def __len__(self) -> int:
        return len(self.source_ids)

    @property
    def lengths(self) -> list[int]:
        """Padded positions an example needs in a batch: max(source length, decoder length), for token budgets."""
        return [max(len(s), len(t) - 1) for s, t in zip(self.source_ids, self.target_ids)]

    @property
    def num_truncated(self) -> tuple[int, int]:
        """(sources, targets) cut by `max_source_length` / `max_target_length`, for the log."""
        return (sum(len(ids) - 1 < n for ids, n in zip(self.source_ids, self.source_tokens)),
                sum(len(ids) - 2 < n for ids, n in zip(self.target_ids, self.target_tokens)))

    def subset(self, indices: Sequence[int]) -> "EncodedPairs":
        return EncodedPairs([self.source_ids[i] for i in indices], [self.target_ids[i] for i in indices],
                            [self.source_tokens[i] for i in indices], [self.target_tokens[i] for i in indices])


def encode_pairs(tokenizer: Tokenizer, sources: Sequence[str], targets: Sequence[str],
                 max_source_length: int | None = None, max_target_length: int | None = None) -> EncodedPairs:
    """Source: subwords cut to `max_source_length - 1`, then </s>. Target: <s>, subwords cut to
    `max_target_length - 1`, </s> (the decoder input and output are then at most `max_target_length` long)."""
    for key, value in (("max_source_length", max_source_length), ("max_target_length", max_target_length)):
        if value is not None and value < 2:
            raise ConfigError(f"data.{key} {value}: must be >= 2 (one subword and </s>)")
    source_pieces = [e.ids for e in tokenizer.encode_batch(list(sources), add_special_tokens=False)]
    target_pieces = [e.ids for e in tokenizer.encode_batch(list(targets), add_special_tokens=False)]
    source_keep = None if max_source_length is None else max_source_length - 1
    target_keep = None if max_target_length is None else max_target_length - 1
    return EncodedPairs(
        source_ids=[ids[:source_keep] + [EOS_ID] for ids in source_pieces],
        target_ids=[[BOS_ID] + ids[:target_keep] + [EOS_ID] for ids in target_pieces],
        source_tokens=[len(ids) for ids in source_pieces],
        target_tokens=[len(ids) for ids in target_pieces],
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
        raise ConfigError(f"data.max_tokens {max_tokens}: must be >= data.min_tokens {min_tokens}")
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
