"""Data for BERT pre-training (Devlin et al. 2019): masked LM + next-sentence prediction.

Pipeline, each step a plain function the task's DataModule calls:

1. `read_corpus`: files -> documents, each a list of `Sentence`s that remember their file and line. Formats:
   "text" (blank lines separate documents), "wikitext" (a `= Title =` line starts a document; heading lines are
   dropped), "jsonl" (one document per row of a text column), "squad" (one document per paragraph of a SQuAD file, its
   `articles` only); "auto" picks by extension and content.
2. `split_sentences`: a small rule-based splitter (see its docstring); a line break is a boundary too.
3. `split_heldout`: a seeded, deterministic held-out set of WHOLE documents.
4. `train_wordpiece` (from scratch, on the training documents only) or the checkpoint's own vocabulary
   (`data.tokenization.load_wordpiece`); then `tokenize_documents`.
5. `create_examples`: BERT's create_pretraining_data, re-drawn every epoch (`epoch` changes packing and pairing;
   the examples are static within an epoch).
6. Masking with `mask_tokens` (`Masker`), dynamic as RoBERTa's, so every epoch sees new masks: per example from
   its own seed (`MaskedExamples`, what `PretrainDataModule` uses: exact across resumes, workers and processes), or
   per batch from a generator that moves on (`PretrainingCollator`).
7. `PretrainDataModule` ties these together for `run.py pretrain` (tasks/pretrain.py).

Rules for degenerate input (never a silent skew of the 50/50 split): every example's IsNext/NotNext label is a
fresh fair coin that does not decide whether the example exists, so IsNext is 50 % in expectation.
- no documents -> DataError; one document -> DataError (no NotNext partner); no document of two sentences ->
  DataError (no IsNext pair);
- a document of one sentence is never a segment A (it has no next sentence); it stays a NotNext partner and is
  counted in `ExampleStats.single_sentence`;
- see `_document_examples` for the chunking rules that keep every chunk splittable.
"""
from __future__ import annotations

import bisect
import dataclasses
import hashlib
import json
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, NamedTuple, Optional, Sequence, TypedDict, Union

import torch
from pytorch_lightning.utilities import rank_zero_info
from tokenizers import Tokenizer
from tokenizers.implementations import BertWordPieceTokenizer
from tokenizers.processors import BertProcessing
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from data.base import TaskDataModule
from data.batching import pad_collate
from data.errors import ConfigError, DataError, check_fields
from data.hub import local_file
from data.readers import read_table, read_text
from data.squad import read_contexts
from data.cache import cached_text, content_key, default_cache_dir
from data.text import read_documents
from data.tokenization import load_tokenizer

FORMATS = ("auto", "text", "wikitext", "jsonl", "squad")
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")   # ids 0..4 in a vocabulary trained here
IGNORE_INDEX = -100
IS_NEXT, NOT_NEXT = 0, 1                                            # as BertForPreTraining's next_sentence_label
WORDPIECE_CACHE_VERSION = "2"


# ---------------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------------
class Sentence(NamedTuple):
    text: str
    path: str
    line: int       # 1-based line of the file (of the JSON row for jsonl)

    def where(self) -> str:
        return f"{self.path}, line {self.line}"


Document = list[Sentence]


@dataclass
class CorpusFile:
    """One corpus file and how to read it; `text_key` is the JSON column of a jsonl file (AESLC: "email");
    `articles` the [first, end) article indices of a squad file (default: all)."""
    path: str
    format: str = "auto"
    text_key: str = "text"
    articles: Optional[tuple[int, int]] = None


def read_corpus(files: Sequence[CorpusFile | str | Path]) -> list[Document]:
    """All documents of all files, in file order (formats may be mixed)."""
    if not files:
        raise ConfigError("data.files: no corpus files given")
    documents: list[Document] = []
    for i, spec in enumerate(files):
        spec = spec if isinstance(spec, CorpusFile) else CorpusFile(str(spec))
        if spec.format not in FORMATS:
            raise ConfigError(f"data.files[{i}].format {spec.format!r} ({spec.path}): "
                              f"expected one of {', '.join(FORMATS)}")
        documents += _read_file(spec)
    return documents


def _read_file(spec: CorpusFile) -> list[Document]:
    path = Path(local_file(spec.path, {"squad": "squad", "jsonl": "table"}.get(spec.format, "text")))
    if spec.articles is not None and spec.format != "squad":
        raise ConfigError(f"data.files entry {path}: 'articles' is for format 'squad' only")
    if spec.format == "squad":
        articles = range(*spec.articles) if spec.articles is not None else None
        return [[Sentence(s, str(path), line) for s in split_sentences(context)]
                for context, _, line in read_contexts(path, articles)]
    if spec.format == "jsonl" or (spec.format == "auto" and path.suffix.lower() in (".jsonl", ".json")):
        return _read_jsonl(path, spec.text_key)
    text = read_documents([path])[0]
    lines = text.splitlines()
    if not any(line.strip() for line in lines):
        raise DataError(f"{path}: no text (the file is empty or blank)")
    first = next(line.strip() for line in lines if line.strip())
    if spec.format == "wikitext" or (spec.format == "auto" and _WIKI_TITLE.fullmatch(first)):
        return _read_wikitext(path, lines)
    return _read_text(path, lines)


def _read_text(path: Path, lines: list[str]) -> list[Document]:
    """Plain text: blank lines separate documents; every line is split into sentences."""
    documents, current = [], []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            if current:
                documents.append(current)
            current = []
            continue
        current += [Sentence(s, str(path), n) for s in split_sentences(line)]
    if current:
        documents.append(current)
    return documents


_WIKI_TITLE = re.compile(r"= (?!=)(.*\S) =")          # "= Homarus gammarus =" (after strip); not "= = Section = ="
_WIKI_HEADING = re.compile(r"(= )+[^=].*?( =)+")       # any heading level


def _read_wikitext(path: Path, lines: list[str]) -> list[Document]:
    """WikiText: a `= Title =` line (one `=` each side) starts a document; heading lines are not text."""
    documents, current = [], []
    for n, line in enumerate(lines, start=1):
        stripped = line.strip()
        if _WIKI_TITLE.fullmatch(stripped):
            if current:
                documents.append(current)
            current = []
        elif stripped and not _WIKI_HEADING.fullmatch(stripped):
            current += [Sentence(s, str(path), n) for s in split_sentences(stripped)]
    if current:
        documents.append(current)
    return documents


def _read_jsonl(path: Path, text_key: str) -> list[Document]:
    """JSON lines: one document per row of `text_key` (read and checked by `read_table`)."""
    if path.suffix.lower() not in (".jsonl", ".json"):
        raise ConfigError(f"data.files format 'jsonl' ({path}): the file must end in .jsonl or .json")
    table = read_table(path, [text_key])
    return [[Sentence(s, str(path), n) for paragraph in text.splitlines() for s in split_sentences(paragraph)]
            for text, n in zip(table[text_key], table["_line"])]


# ---------------------------------------------------------------------------------------------------------
# Sentence splitting
# ---------------------------------------------------------------------------------------------------------
ABBREVIATIONS = frozenset({
    "Mr", "Mrs", "Ms", "Dr", "Prof", "Sr", "Jr", "St", "Mt", "No", "Nos", "vs", "etc", "cf", "ca", "pp", "Fig",
    "Vol", "Inc", "Ltd", "Co", "Corp", "Gen", "Col", "Lt", "Sgt", "Capt", "Rev"})
OPENING_QUOTES = "\"'“‘("
_SENTENCE_END = re.compile(r"[.!?]+[\"'”’)\]]*\s+(?=\S)")     # end mark, closing quotes/brackets, whitespace


def split_sentences(line: str) -> list[str]:
    """Split one line of text into sentences.

    A boundary is a run of `.`, `!` or `?` (with any closing quotes or brackets) followed by whitespace and then
    a capital letter, a digit or an opening quote, unless the mark is a single `.` closing an abbreviation:
    a word of `ABBREVIATIONS` ("Dr."), a single letter (initials: "H. americanus", "J. R. Smith") or a word with
    a dot inside ("U.S.", "e.g."). Lines are never joined: the reader treats a line break as a boundary too
    (BERT's input format is one sentence per line). Works on WikiText's spaced tokens (" . It") and on raw text.
    """
    sentences, start = [], 0
    for end in _SENTENCE_END.finditer(line):
        following = line[end.end()]
        if not (following.isupper() or following.isdigit() or following in OPENING_QUOTES):
            continue
        mark = end.group().rstrip()
        if mark.startswith(".") and not mark.startswith("..") and _is_abbreviation(line, end.start()):
            continue
        sentences.append(line[start:end.end()].strip())
        start = end.end()
    sentences.append(line[start:].strip())
    return [s for s in sentences if s]


def _is_abbreviation(line: str, dot: int) -> bool:
    """Whether the word just before the `.` at `dot` is an abbreviation (see `split_sentences`)."""
    word = line[max(line.rfind(" ", 0, dot), line.rfind("\t", 0, dot)) + 1:dot]
    return word in ABBREVIATIONS or (len(word) == 1 and word.isalpha()) or "." in word


# ---------------------------------------------------------------------------------------------------------
# Held-out documents
# ---------------------------------------------------------------------------------------------------------
def split_heldout(documents: Sequence[Document], heldout: float | int, seed: int = 0
                  ) -> tuple[list[Document], list[Document]]:
    """(training, held-out) documents: `heldout` is a fraction in (0, 1) or a count >= 0 of WHOLE documents,
    drawn with `seed` (deterministic); both parts keep file order, and no document is in both."""
    n = len(documents)
    if isinstance(heldout, float) and 0.0 < heldout < 1.0:
        count = max(1, round(heldout * n))
    elif isinstance(heldout, int) and not isinstance(heldout, bool) and heldout >= 0:
        count = heldout
    else:
        raise ConfigError(f"data.heldout {heldout!r}: must be a fraction in (0, 1) or a whole number of documents")
    if count >= n:
        raise ConfigError(f"data.heldout {heldout!r}: {count} held-out documents leave none of the {n} to train on")
    chosen = set(random.Random(seed).sample(range(n), count))
    return ([d for i, d in enumerate(documents) if i not in chosen],
            [d for i, d in enumerate(documents) if i in chosen])


# ---------------------------------------------------------------------------------------------------------
# Vocabulary and tokens
# ---------------------------------------------------------------------------------------------------------
def train_wordpiece(documents: Sequence[Document], vocab_size: int, lowercase: bool = True,
                    min_frequency: int = 2) -> Tokenizer:
    """A BERT WordPiece vocabulary trained on `documents` (pass the training documents only):
    [PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4, "##" continuation pieces, BERT's normaliser and
    pre-tokeniser, and a [CLS] A [SEP] B [SEP] post-processor so classify/ner/qa can use it as it is.

    Not reproducible to the last piece: `tokenizers` breaks ties between equally frequent merges by hash-map order,
    so two runs on the same text may differ in a few pieces (huggingface/tokenizers#1794). The vocabulary travels
    in the checkpoint (`to_str()`), so a run always reads text as its model was trained."""
    if vocab_size <= len(SPECIAL_TOKENS):
        raise ConfigError(f"data.vocab_size {vocab_size}: must be > {len(SPECIAL_TOKENS)} (the special tokens)")
    wordpiece = BertWordPieceTokenizer(lowercase=lowercase)
    wordpiece.train_from_iterator((s.text for doc in documents for s in doc), vocab_size=vocab_size,
                                  min_frequency=min_frequency, special_tokens=list(SPECIAL_TOKENS),
                                  show_progress=False)
    tokenizer = wordpiece._tokenizer
    tokenizer.post_processor = BertProcessing(("[SEP]", tokenizer.token_to_id("[SEP]")),
                                              ("[CLS]", tokenizer.token_to_id("[CLS]")))
    return tokenizer


@dataclass(frozen=True)
class SpecialIds:
    pad: int
    unk: int
    cls: int
    sep: int
    mask: int

    def all(self) -> tuple[int, ...]:
        return (self.pad, self.unk, self.cls, self.sep, self.mask)


def special_ids(tokenizer: Tokenizer) -> SpecialIds:
    """The ids of BERT's five special tokens in `tokenizer` (a vocabulary without one is a setting error)."""
    ids = {token: tokenizer.token_to_id(token) for token in SPECIAL_TOKENS}
    missing = [token for token, i in ids.items() if i is None]
    if missing:
        raise ConfigError(f"model.tokenizer: the vocabulary has no {missing[0]} token; BERT pre-training needs "
                          f"{', '.join(SPECIAL_TOKENS)}")
    return SpecialIds(*ids.values())


class TokenizedDocument(NamedTuple):
    sentences: list[list[int]]      # token ids of each sentence, no special tokens
    source: str                     # "path, line N" of its first sentence, for messages


def tokenize_documents(documents: Sequence[Document], tokenizer: Tokenizer) -> list[TokenizedDocument]:
    """Token ids per sentence, documents in the same order (indices match). A sentence that tokenises to
    nothing (only control characters) is left out; a document left with no sentence has `sentences == []`."""
    texts = [s.text for doc in documents for s in doc]
    ids = iter(e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=False))
    tokenized = []
    for doc in documents:
        sentences = [sentence_ids for sentence_ids in (next(ids) for _ in doc) if sentence_ids]
        tokenized.append(TokenizedDocument(sentences, doc[0].where() if doc else "?"))
    return tokenized


# ---------------------------------------------------------------------------------------------------------
# Sentence-pair examples
# ---------------------------------------------------------------------------------------------------------
class Example(TypedDict):
    input_ids: list[int]            # [CLS] A [SEP] B [SEP]
    token_type_ids: list[int]       # 0 over [CLS] A [SEP], 1 over B [SEP]
    nsp_label: int                  # IS_NEXT (0) or NOT_NEXT (1)
    doc_a: int                      # document index of A and of B (for tests and inspection)
    doc_b: int
    sentences_a: tuple[int, int]    # [first, stop) sentence range of A in doc_a, of B in doc_b (before truncation)
    sentences_b: tuple[int, int]


@dataclass
class ExampleStats:
    documents: int          # documents with text: every one is a possible NotNext partner
    single_sentence: int    # of those, documents of one sentence: partners only, never a segment A
    examples: int
    is_next: int

    def __str__(self) -> str:
        return (f"{self.examples:,} sentence pairs ({self.is_next / max(self.examples, 1):.1%} IsNext) from "
                f"{self.documents:,} documents; {self.single_sentence:,} single-sentence documents serve only as "
                f"NotNext partners")


def create_examples(documents: Sequence[TokenizedDocument], special: SpecialIds, max_length: int = 128,
                    short_seq_prob: float = 0.1, seed: int = 0, epoch: int = 0) -> tuple[list[Example], ExampleStats]:
    """BERT's sentence pairs for one epoch: every document of two or more sentences is cut into chunks of about
    `max_length - 3` tokens (a random shorter target with probability `short_seq_prob`), each chunk split into
    A and B at a random sentence boundary; with probability 1/2 B is replaced by sentences of a different document
    (NotNext). Deterministic in (seed, epoch); another epoch gives another packing and pairing."""
    if max_length < 5:
        raise ConfigError(f"data.max_length {max_length}: must be >= 5 ([CLS] A [SEP] B [SEP])")
    if not 0.0 <= short_seq_prob <= 1.0:
        raise ConfigError(f"data.short_seq_prob {short_seq_prob}: must be in [0, 1]")
    partners = [i for i, doc in enumerate(documents) if doc.sentences]     # sorted: bisect finds A's place
    check_pairs_possible([len(doc.sentences) for doc in documents], [doc.source for doc in documents])
    rng = random.Random(seed * 1_000_003 + epoch)
    examples: list[Example] = []
    for a in partners:
        if len(documents[a].sentences) >= 2:
            examples += _document_examples(a, documents, partners, special, max_length - 3, short_seq_prob, rng)
    stats = ExampleStats(len(partners), sum(len(documents[i].sentences) == 1 for i in partners), len(examples),
                         sum(e["nsp_label"] == IS_NEXT for e in examples))
    return examples, stats


def check_pairs_possible(sentence_counts: Sequence[int], sources: Sequence[str], part: str = "corpus") -> None:
    """The rules of the module docstring for documents of `sentence_counts` sentences (first sentence at
    `sources`): a DataError unless two documents have text and one of them has two sentences. `part` names the
    documents in the message (the corpus, or its held-out set)."""
    partners = [i for i, n in enumerate(sentence_counts) if n]
    if not partners:
        raise DataError(f"pretraining {part}: no documents with text")
    if len(partners) == 1:
        raise DataError(f"{sources[partners[0]]}: the only document in the {part}; next-sentence "
                        f"prediction needs at least two (NotNext draws B from another document)")
    if all(sentence_counts[i] < 2 for i in partners):
        raise DataError(f"pretraining {part} ({sources[partners[0]]}, ...): no document has two "
                        f"sentences, so no IsNext pair exists")


def _document_examples(a_index: int, documents: Sequence[TokenizedDocument], partners: list[int],
                       special: SpecialIds, max_tokens: int, short_seq_prob: float, rng: random.Random
                       ) -> Iterator[Example]:
    """The examples of one document (BERT's create_instances_from_document), with three rules that keep every
    chunk splittable into A and B, so the IsNext coin is never overruled:

    - a chunk closes when it holds at least its target of tokens AND at least two sentences, or at the end;
    - a lone last sentence (a chunk of one at the document's end) is joined to the sentence before it;
    - NotNext puts the chunk's unused sentences back (as BERT), unless that would leave only the document's last
      sentence alone; then the document ends there.
    The target is drawn per chunk (BERT's code draws it once per document; the paper's "10 % of the time" is per
    sequence).
    """
    sentences = documents[a_index].sentences
    i = 0
    while i < len(sentences):
        target = rng.randint(2, max_tokens) if rng.random() < short_seq_prob else max_tokens
        start, length = i, 0
        while i < len(sentences) and (length < target or i - start < 2):
            length += len(sentences[i])
            i += 1
        start = min(start, i - 2)                                      # join a lone last sentence
        a_end = rng.randint(start + 1, i - 1)
        tokens_a = [t for s in sentences[start:a_end] for t in s]
        if rng.random() < 0.5:
            label, b_index, b_range = IS_NEXT, a_index, (a_end, i)
            tokens_b = [t for s in sentences[a_end:i] for t in s]
        else:
            label, b_index = NOT_NEXT, _other_document(a_index, partners, rng)
            b_range, tokens_b = _random_segment(documents[b_index].sentences, target - len(tokens_a), rng)
            if not (i - a_end == 1 and i == len(sentences)):
                i = a_end                                              # put the unused sentences back
        tokens_a, tokens_b = truncate_pair(tokens_a, tokens_b, max_tokens, rng)
        yield Example(input_ids=[special.cls, *tokens_a, special.sep, *tokens_b, special.sep],
                      token_type_ids=[0] * (len(tokens_a) + 2) + [1] * (len(tokens_b) + 1),
                      nsp_label=label, doc_a=a_index, doc_b=b_index, sentences_a=(start, a_end),
                      sentences_b=b_range)


def _other_document(a_index: int, partners: list[int], rng: random.Random) -> int:
    """A document drawn uniformly from the partners other than `a_index` (exactly, no retry loop)."""
    j = rng.randrange(len(partners) - 1)
    return partners[j + (j >= bisect.bisect_left(partners, a_index))]


def _random_segment(sentences: list[list[int]], target: int, rng: random.Random
                    ) -> tuple[tuple[int, int], list[int]]:
    """Sentences from a random start until `target` tokens (at least one sentence), as BERT's random next."""
    first = rng.randrange(len(sentences))
    tokens: list[int] = []
    stop = first
    while stop < len(sentences) and (stop == first or len(tokens) < target):
        tokens += sentences[stop]
        stop += 1
    return (first, stop), tokens


def truncate_pair(tokens_a: list[int], tokens_b: list[int], max_tokens: int, rng: random.Random
                  ) -> tuple[list[int], list[int]]:
    """BERT's truncate_seq_pair: while the pair is too long, drop one token from the longer segment, from its
    front or its back by a coin flip (so the model does not learn that one end is always cut)."""
    a0, a1, b0, b1 = 0, len(tokens_a), 0, len(tokens_b)
    while (a1 - a0) + (b1 - b0) > max_tokens:
        if a1 - a0 > b1 - b0:
            if rng.random() < 0.5:
                a0 += 1
            else:
                a1 -= 1
        elif rng.random() < 0.5:
            b0 += 1
        else:
            b1 -= 1
    return tokens_a[a0:a1], tokens_b[b0:b1]


# ---------------------------------------------------------------------------------------------------------
# Masking and batches
# ---------------------------------------------------------------------------------------------------------
def mask_tokens(input_ids: Tensor, special_mask: Tensor, vocab_size: int, mask_id: int, generator: torch.Generator,
                mlm_probability: float = 0.15, whole_word: bool = False, word_starts: Tensor | None = None, *,
                special_ids: Sequence[int]) -> tuple[Tensor, Tensor]:
    """BERT's masked-LM corruption of a batch: (masked_input_ids, mlm_labels), both (B, T).

    Every position that is not special (`special_mask`: [CLS], [SEP], [PAD], [UNK], [MASK] positions) is chosen
    independently with probability `mlm_probability` (Bernoulli, as Hugging Face's collator; BERT's script picks
    a fixed count per sequence instead: the rate is the same, the count per sequence varies here). With
    `whole_word`, whole words are chosen: a "##" piece (`word_starts` False) goes with the word it continues.
    Each chosen position becomes [MASK] with probability 0.8, a uniformly random non-special token
    (`special_ids` are never drawn) with 0.1, and stays unchanged with 0.1. `mlm_labels` holds the original id at
    chosen positions and -100 elsewhere.
    """
    eligible = ~special_mask                                                         # (B, T)
    draw = torch.rand(input_ids.shape, generator=generator)                          # (B, T)
    if whole_word:
        if word_starts is None:
            raise ValueError("whole-word masking needs word_starts")
        after_special = torch.nn.functional.pad(special_mask[:, :-1], (1, 0), value=True)
        starts = word_starts | special_mask | after_special                          # (B, T) first piece of a word
        word = starts.long().cumsum(1) - 1                                           # (B, T) word index per piece
        draw = draw.gather(1, word)                                                  # one draw per word
    chosen = eligible & (draw < mlm_probability)                                     # (B, T)
    action = torch.rand(input_ids.shape, generator=generator)                        # (B, T)
    to_mask = chosen & (action < 0.8)
    to_random = chosen & (action >= 0.8) & (action < 0.9)
    random_ids = _random_ids(input_ids.shape, vocab_size, special_ids, generator)   # (B, T)
    masked = torch.where(to_mask, mask_id, torch.where(to_random, random_ids, input_ids))
    labels = torch.where(chosen, input_ids, IGNORE_INDEX)
    return masked, labels


def _random_ids(shape: torch.Size, vocab_size: int, special_ids: Sequence[int], generator: torch.Generator) -> Tensor:
    """Ids uniform over the vocabulary without `special_ids`: draw from [0, V - k), then step over each special
    id in increasing order (an id at or above it moves up by one)."""
    specials = sorted(set(special_ids))
    ids = torch.randint(vocab_size - len(specials), shape, generator=generator)
    for special in specials:
        ids += ids >= special
    return ids


def continuation_pieces(tokenizer: Tokenizer) -> Tensor:
    """(V,) bool: True for WordPiece continuation pieces ("##ing"), which never start a word."""
    prefix = getattr(tokenizer.model, "continuing_subword_prefix", None)
    if prefix is None:
        raise ConfigError("data.whole_word_mask: needs a WordPiece tokenizer (pieces marked with a prefix like '##')")
    table = torch.zeros(tokenizer.get_vocab_size(), dtype=torch.bool)
    for token, i in tokenizer.get_vocab().items():
        table[i] = token.startswith(prefix)
    return table


class Masker:
    """`mask_tokens` with one tokenizer's special tokens and settings: (input_ids (B, T), generator) ->
    (masked_input_ids, mlm_labels). Padding is special, so a padded batch and its rows masked one by one choose
    from the same positions."""

    def __init__(self, tokenizer: Tokenizer, mlm_probability: float = 0.15, whole_word: bool = False):
        if not 0.0 < mlm_probability < 1.0:
            raise ConfigError(f"data.mlm_probability {mlm_probability}: must be in (0, 1)")
        self.special = special_ids(tokenizer)
        self.special_tensor = torch.tensor(self.special.all())
        self.vocab_size = tokenizer.get_vocab_size()
        self.mlm_probability = mlm_probability
        self.continuation = continuation_pieces(tokenizer) if whole_word else None

    def __call__(self, input_ids: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        word_starts = ~self.continuation[input_ids] if self.continuation is not None else None
        return mask_tokens(input_ids, torch.isin(input_ids, self.special_tensor), self.vocab_size,
                           self.special.mask, generator, self.mlm_probability,
                           whole_word=word_starts is not None, word_starts=word_starts,
                           special_ids=self.special.all())


class PretrainingCollator:
    """Examples -> a padded batch with a fresh mask: input_ids (masked), token_type_ids, attention_mask,
    mlm_labels (B, T) and nsp_labels (B,).

    The mask comes from this collator's own `torch.Generator`, which moves on with every call, so every batch of
    every epoch gets a new mask. In a DataLoader worker the generator is re-seeded from the worker's seed (which
    PyTorch draws anew per worker and per epoch), so workers never repeat each other's masks. (The task's data
    module masks each example from its own seed instead: `MaskedExamples`.)
    """

    def __init__(self, tokenizer: Tokenizer, mlm_probability: float = 0.15, whole_word: bool = False, seed: int = 0):
        self.masker = Masker(tokenizer, mlm_probability, whole_word)
        self.special, self.special_tensor = self.masker.special, self.masker.special_tensor
        self.pad = pad_collate({"input_ids": self.special.pad, "token_type_ids": 0})
        self.generator = torch.Generator().manual_seed(seed)
        self._worker_seed: int | None = None

    def __call__(self, examples: list[Example]) -> dict[str, Tensor]:
        worker = torch.utils.data.get_worker_info()
        if worker is not None and worker.seed != self._worker_seed:
            self._worker_seed = worker.seed
            self.generator.manual_seed(worker.seed)
        batch = self.pad(examples)
        masked, labels = self.masker(batch["input_ids"], self.generator)             # (B, T) each
        return {"input_ids": masked, "token_type_ids": batch["token_type_ids"],
                "attention_mask": batch["attention_mask"], "mlm_labels": labels,
                "nsp_labels": batch["nsp_label"]}


def example_seed(seed: int, split: str, epoch: int, index: int) -> int:
    """A 64-bit seed for the mask of example `index` of `split` in `epoch` (a hash, so nearby inputs do not give
    related streams)."""
    digest = hashlib.blake2b(f"{seed}/{split}/{epoch}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


class MaskedExamples(Dataset):
    """One epoch's examples of a split, each masked when it is fetched, with a generator seeded by
    `example_seed(seed, split, epoch, index)`: an example gets a new mask every epoch (dynamic masking), and the
    same mask whatever the batch it lands in, the process or worker that loads it, or a resumed run. So a run
    stopped mid-epoch resumes with exactly the masks it would have drawn, and DDP evaluation masks as one
    process does."""

    def __init__(self, examples: Sequence[Example], masker: Masker, seed: int, split: str, epoch: int = 0):
        self.examples, self.masker = examples, masker
        self.seed, self.split, self.epoch = seed, split, epoch

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict:
        example = self.examples[i]
        generator = torch.Generator().manual_seed(example_seed(self.seed, self.split, self.epoch, i))
        masked, labels = self.masker(torch.tensor([example["input_ids"]]), generator)     # (1, T) each
        return {"input_ids": masked[0], "token_type_ids": example["token_type_ids"], "mlm_labels": labels[0],
                "nsp_labels": example["nsp_label"], "index": i}

    @property
    def lengths(self) -> list[int]:
        return [len(e["input_ids"]) for e in self.examples]


# ---------------------------------------------------------------------------------------------------------
# The data module
# ---------------------------------------------------------------------------------------------------------
def corpus_files(files: Sequence[str | dict], key: str = "data.files") -> list[CorpusFile]:
    """`CorpusFile`s from config entries: a path, or {path, format, text_key, articles}."""
    known = {f.name for f in dataclasses.fields(CorpusFile)}
    out = []
    for i, entry in enumerate(files):
        if isinstance(entry, dict):
            check_fields(CorpusFile, entry, f"{key}[{i}]", "key")
            if "path" not in entry:
                raise ConfigError(f"{key}[{i}]: no 'path' (keys: {', '.join(sorted(known))})")
            articles = entry.get("articles")
            if articles is not None and not (isinstance(articles, (list, tuple)) and len(articles) == 2
                                             and all(isinstance(a, int) for a in articles)):
                raise ConfigError(f"{key}[{i}].articles {articles!r}: expected [first, end), e.g. [0, 38]")
            out.append(CorpusFile(**{k: v if k == "articles" else str(v) for k, v in entry.items()}))
        else:
            out.append(CorpusFile(str(entry)))
    return out


class PretrainDataModule(TaskDataModule):
    """BERT pre-training data: a corpus of documents -> held-out documents for validation -> WordPiece (trained
    here from scratch, or the checkpoint's) -> sentence pairs re-drawn every epoch -> examples masked per epoch.

    Examples of epoch e are `create_examples(..., seed, epoch=e)` and example i's mask is drawn from
    `example_seed(seed, "train", e, i)` (`MaskedExamples`): both depend on nothing but (seed, epoch), so the
    base's resumable sampler continues a stopped epoch exactly. Lightning builds the training loader once per
    epoch for that (`trainer.reload_dataloaders_every_n_epochs` is set to 1 when left at 0). Validation pairs
    and masks are fixed (epoch 0 of the held-out documents), so successive validations are comparable.

    The vocabulary trained from scratch is cached in `cache_dir`, keyed by the training sentences (as read) and the
    settings that shape it, so a second run reads it instead of training it again (`tokenizers` breaks ties
    between equally frequent merges by hash-map order, so retraining could differ in a few pieces).

    Predict: `predict_file` holds one text per line with `[MASK]` tokens to fill (an empty line gives an empty
    result); a tab splits a line into segments A and B, whose next-sentence probability is then predicted too.
    """

    def __init__(self, files: Optional[list[Union[str, dict]]] = None, heldout: Union[int, float] = 0.05,
                 test_files: Optional[list[Union[str, dict]]] = None, predict_file: Optional[str] = None,
                 tokenizer: Optional[str] = None, vocab_size: int = 8192, lowercase: bool = True,
                 max_length: int = 128, short_seq_prob: float = 0.1, mlm_probability: float = 0.15,
                 whole_word: bool = False, top_k: int = 5, cache_dir: Optional[str] = None, **kwargs):
        """
        Args:
            files: the corpus: paths, or {path, format (auto, text, wikitext, jsonl, squad), text_key (jsonl),
                articles (squad: [first, end) article indices)} entries.
            heldout: whole documents of the corpus kept out of training for validation: a fraction in (0, 1) or a
                count. They are drawn with a fixed seed, so the held-out set depends only on the corpus.
            test_files: corpus files scored by `pretrain test` (e.g. WikiText-2 test), in the same format as files.
            predict_file: text lines with [MASK] tokens for `pretrain predict` (see the class docstring).
            tokenizer: a WordPiece model directory, tokenizer.json or vocab.txt. Default: the vocabulary of
                model.pretrained (or of the checkpoint restored); from scratch, one of `vocab_size` pieces trained
                on the training documents.
            vocab_size, lowercase: the WordPiece vocabulary trained from scratch.
            max_length: tokens per example, [CLS] and two [SEP] included.
            short_seq_prob: probability of a shorter target length for an example (BERT's 0.1).
            mlm_probability: share of the tokens chosen for prediction (BERT's 0.15).
            whole_word: choose whole words: all pieces of a word or none.
            top_k: fillers per [MASK] that `pretrain predict` writes.
            cache_dir: where the trained vocabulary is cached (default: the token cache, $NLP_CACHE_DIR).
        """
        super().__init__(**kwargs)
        checks = [("max_length", max_length, max_length >= 5, "must be >= 5 ([CLS] A [SEP] B [SEP])"),
                  ("short_seq_prob", short_seq_prob, 0.0 <= short_seq_prob <= 1.0, "must be in [0, 1]"),
                  ("mlm_probability", mlm_probability, 0.0 < mlm_probability < 1.0, "must be in (0, 1)"),
                  ("vocab_size", vocab_size, vocab_size > len(SPECIAL_TOKENS),
                   f"must be > {len(SPECIAL_TOKENS)} (the special tokens)"),
                  ("top_k", top_k, top_k >= 1, "must be at least 1")]
        for key, value, ok, rule in checks:
            if not ok:
                raise ConfigError(f"data.{key} {value}: {rule}")
        self.save_hyperparameters()
        self.files = corpus_files(files or [])
        self.test_files = corpus_files(test_files or [], "data.test_files")
        self.max_length, self.top_k = max_length, top_k
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.documents: dict[str, list[Document]] = {}
        self._tokenized: dict[str, list[TokenizedDocument]] = {}
        self._masker: Optional[Masker] = None
        self._val: Optional[MaskedExamples] = None
        self._predict_lines: Optional[list[str]] = None

    # ---- documents ----------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Reads this stage's files; a corpus that cannot give sentence pairs stops here, before any training."""
        if self.tokenizer is None and self.hparams.tokenizer:
            self.tokenizer = load_tokenizer(self.hparams.tokenizer)
        if stage in ("fit", "validate"):
            self._split_corpus()
        if stage == "fit":
            self.reload_every_epoch("pretrain draws new sentence pairs every epoch")
        if stage == "test" and "test" not in self.documents:
            if not self.test_files:
                raise DataError("pretrain test: give data.test_files (corpus files to score)")
            self.documents["test"] = read_corpus(self.test_files)
        if stage == "predict" and self._predict_lines is None:
            if not self.hparams.predict_file:
                raise DataError("pretrain predict: give data.predict_file (text lines with [MASK] tokens)")
            path = local_file(self.hparams.predict_file, "text")
            self._predict_lines = read_text(path).splitlines()
            for n, line in enumerate(self._predict_lines, 1):
                if len(fields := line.split("\t")) > 2:
                    raise DataError(f"{path}, line {n}: {len(fields)} tab-separated fields; a "
                                    f"line is one text, or two (sentence A<TAB>sentence B)")

    def _split_corpus(self) -> None:
        if "train" in self.documents:
            return
        corpus = read_corpus(self.files)
        check_pairs_possible([len(doc) for doc in corpus], [doc[0].where() if doc else "?" for doc in corpus])
        self.documents["train"], self.documents["val"] = split_heldout(corpus, self.hparams.heldout, seed=0)

    # ---- the vocabulary -----------------------------------------------------------------------------------
    def default_tokenizer(self, stored: Optional[str], pretrained: Optional[str]) -> None:
        """The base's choice (configured, stored in our checkpoint, or model.pretrained's); from scratch, a
        WordPiece vocabulary trained on the training documents, cached. Under DDP process 0 trains (or reads)
        it and sends it to the others, so every process reads text the same way."""
        super().default_tokenizer(stored, pretrained)
        if self.tokenizer is not None:
            return
        text = self._cached_wordpiece() if self._is_global_zero() else None
        if self.trainer is not None and self.trainer.world_size > 1:
            text = self.trainer.strategy.broadcast(text, src=0)
        self.tokenizer = self.parse_tokenizer(text)

    def _is_global_zero(self) -> bool:
        return self.trainer is None or self.trainer.is_global_zero

    def _cached_wordpiece(self) -> str:
        hp = self.hparams
        self._split_corpus()
        # Keyed by the sentences the vocabulary learns from, not the files' bytes: training is not reproducible to
        # the last piece (see train_wordpiece), so the same text with a byte-order mark or CRLF line ends must find
        # the same vocabulary. One key per document, so the corpus is never joined into one more copy in memory.
        key = content_key(json.dumps([WORDPIECE_CACHE_VERSION, hp.vocab_size, hp.lowercase]),
                          *(content_key(*(s.text for s in document)) for document in self.documents["train"]))
        path = self.cache_dir / f"wordpiece-{key}.json"

        def train() -> str:
            start = time.perf_counter()
            text = train_wordpiece(self.documents["train"], hp.vocab_size, hp.lowercase).to_str()
            rank_zero_info(f"pretrain: WordPiece vocabulary of {hp.vocab_size} pieces trained in "
                           f"{time.perf_counter() - start:.1f} s")
            return text

        return cached_text(path, train, "pretrain: WordPiece vocabulary")

    def adopt(self, blueprint) -> None:
        super().adopt(blueprint)
        self._tokenized.clear()
        self._masker, self._val = None, None

    # ---- examples -----------------------------------------------------------------------------------------
    def _require_tokenizer(self) -> Tokenizer:
        if self.tokenizer is None:
            raise DataError("pretrain: no tokenizer: give data.tokenizer, model.pretrained, or a checkpoint "
                            "(--ckpt_path) that carries one")
        return self.tokenizer

    def masker(self) -> Masker:
        """The masking of this data's tokenizer and settings."""
        if self._masker is None:
            hp = self.hparams
            self._masker = Masker(self._require_tokenizer(), hp.mlm_probability, hp.whole_word)
        return self._masker

    def tokenized(self, split: str) -> list[TokenizedDocument]:
        """The documents of "train", "val" (held out) or "test" as token ids per sentence."""
        if split not in self._tokenized:
            if split in ("train", "val"):
                self._split_corpus()
            documents = tokenize_documents(self.documents[split], self._require_tokenizer())
            if split != "train":
                check_pairs_possible([len(d.sentences) for d in documents], [d.source for d in documents],
                                     "held-out set (data.heldout)" if split == "val" else "test set (data.test_files)")
            self._tokenized[split] = documents
        return self._tokenized[split]

    def examples(self, split: str, epoch: int = 0) -> MaskedExamples:
        """The masked sentence pairs of a split in an epoch (evaluation splits always use epoch 0)."""
        hp = self.hparams
        examples, stats = create_examples(self.tokenized(split), self.masker().special, hp.max_length,
                                          hp.short_seq_prob, seed=self.seed, epoch=epoch)
        rank_zero_info(f"pretrain {split}, epoch {epoch}: {stats}")
        return MaskedExamples(examples, self.masker(), self.seed, split, epoch)

    # ---- loaders ------------------------------------------------------------------------------------------
    def _collate(self):
        return pad_collate({"input_ids": self.masker().special.pad, "token_type_ids": 0, "mlm_labels": IGNORE_INDEX})

    def train_dataloader(self) -> DataLoader:
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        data = self.examples("train", epoch)
        return self.loader(data, data.lengths, self._collate(), train=True)

    def val_dataloader(self) -> DataLoader:
        if self._val is None:
            self._val = self.examples("val")
        return self.loader(self._val, self._val.lengths, self._collate(), train=False)

    def test_dataloader(self) -> DataLoader:
        data = self.examples("test")
        return self.loader(data, data.lengths, self._collate(), train=False)

    def predict_dataloader(self) -> DataLoader:
        rows = [{"index": i, **self._encode_line(line)} for i, line in enumerate(self._predict_lines)]
        return self.loader(rows, [len(r["input_ids"]) for r in rows],
                           pad_collate({"input_ids": self.masker().special.pad, "token_type_ids": 0}),
                           train=False, keep_order=True)

    def _encode_line(self, line: str) -> dict:
        """[CLS] A [SEP] (B [SEP]) of a predict line, A and B split at its first tab; cut to max_length by dropping
        the last tokens of the longer segment."""
        special = self.masker().special
        segments = [self.tokenizer.encode(part, add_special_tokens=False).ids for part in line.split("\t", 1)]
        budget = self.max_length - 1 - len(segments)
        truncated = sum(map(len, segments)) > budget
        while sum(map(len, segments)) > budget:
            longest = max(segments, key=len)
            longest.pop()
        ids = [special.cls] + [t for seg in segments for t in (*seg, special.sep)]
        types = [0] * (len(segments[0]) + 2) + [1] * (len(segments[1]) + 1 if len(segments) > 1 else 0)
        return {"input_ids": ids, "token_type_ids": types, "truncated": int(truncated)}

    def predict_text(self, index: int) -> str:
        """Line `index` of the predict file."""
        return self._predict_lines[index]
