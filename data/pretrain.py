"""Data for BERT pre-training (Devlin et al. 2019): masked LM + next-sentence prediction.

Pipeline, each step a plain function the task's DataModule calls:

1. `read_corpus`: files -> documents, each a list of `Sentence`s that remember their file and line. Formats:
   "text" (blank lines separate documents), "wikitext" (a `= Title =` line starts a document; heading lines are
   dropped), "jsonl" (one document per row of a text column); "auto" picks by extension and content.
2. `split_sentences`: a small rule-based splitter (see its docstring); a line break is a boundary too.
3. `split_heldout`: a seeded, deterministic held-out set of WHOLE documents.
4. `train_wordpiece` (from scratch, on the training documents only) or the checkpoint's own vocabulary
   (`data.tokenization.load_wordpiece`); then `tokenize_documents`.
5. `create_examples`: BERT's create_pretraining_data, re-drawn every epoch (`epoch` changes packing and pairing;
   the examples are static within an epoch).
6. `PretrainingCollator`: pads a batch and masks it with `mask_tokens`, afresh every time it is called (dynamic
   masking, as RoBERTa), so every epoch sees new masks.

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
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence, TypedDict

import torch
from tokenizers import Tokenizer
from tokenizers.implementations import BertWordPieceTokenizer
from tokenizers.processors import BertProcessing
from torch import Tensor

from data.batching import pad_collate
from data.errors import ConfigError, DataError
from data.readers import read_table
from data.text import read_documents

FORMATS = ("auto", "text", "wikitext", "jsonl")
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")   # ids 0..4 in a vocabulary trained here
IGNORE_INDEX = -100
IS_NEXT, NOT_NEXT = 0, 1                                            # as BertForPreTraining's next_sentence_label


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
    """One corpus file and how to read it; `text_key` is the JSON column of a jsonl file (AESLC: "email")."""
    path: str
    format: str = "auto"
    text_key: str = "text"


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
    path = Path(spec.path)
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
    _check_pairs_possible(documents, partners)
    rng = random.Random(seed * 1_000_003 + epoch)
    examples: list[Example] = []
    for a in partners:
        if len(documents[a].sentences) >= 2:
            examples += _document_examples(a, documents, partners, special, max_length - 3, short_seq_prob, rng)
    stats = ExampleStats(len(partners), sum(len(documents[i].sentences) == 1 for i in partners), len(examples),
                         sum(e["nsp_label"] == IS_NEXT for e in examples))
    return examples, stats


def _check_pairs_possible(documents: Sequence[TokenizedDocument], partners: list[int]) -> None:
    if not partners:
        raise DataError("pretraining corpus: no documents with text")
    if len(partners) == 1:
        raise DataError(f"{documents[partners[0]].source}: the only document in the corpus; next-sentence "
                        f"prediction needs at least two (NotNext draws B from another document)")
    if all(len(documents[i].sentences) < 2 for i in partners):
        raise DataError(f"pretraining corpus ({documents[partners[0]].source}, ...): no document has two "
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


class PretrainingCollator:
    """Examples -> a padded batch with a fresh mask: input_ids (masked), token_type_ids, attention_mask,
    mlm_labels (B, T) and nsp_labels (B,).

    The mask comes from this collator's own `torch.Generator`, which moves on with every call, so every batch of
    every epoch gets a new mask. In a DataLoader worker the generator is re-seeded from the worker's seed (which
    PyTorch draws anew per worker and per epoch), so workers never repeat each other's masks.
    """

    def __init__(self, tokenizer: Tokenizer, mlm_probability: float = 0.15, whole_word: bool = False, seed: int = 0):
        if not 0.0 < mlm_probability < 1.0:
            raise ConfigError(f"data.mlm_probability {mlm_probability}: must be in (0, 1)")
        self.special = special_ids(tokenizer)
        self.special_tensor = torch.tensor(self.special.all())
        self.vocab_size = tokenizer.get_vocab_size()
        self.mlm_probability = mlm_probability
        self.continuation = continuation_pieces(tokenizer) if whole_word else None
        self.pad = pad_collate({"input_ids": self.special.pad, "token_type_ids": 0})
        self.generator = torch.Generator().manual_seed(seed)
        self._worker_seed: int | None = None

    def __call__(self, examples: list[Example]) -> dict[str, Tensor]:
        worker = torch.utils.data.get_worker_info()
        if worker is not None and worker.seed != self._worker_seed:
            self._worker_seed = worker.seed
            self.generator.manual_seed(worker.seed)
        batch = self.pad(examples)
        input_ids = batch["input_ids"]                                               # (B, T)
        word_starts = ~self.continuation[input_ids] if self.continuation is not None else None
        masked, labels = mask_tokens(input_ids, torch.isin(input_ids, self.special_tensor), self.vocab_size,
                                     self.special.mask, self.generator, self.mlm_probability,
                                     whole_word=word_starts is not None, word_starts=word_starts,
                                     special_ids=self.special.all())
        return {"input_ids": masked, "token_type_ids": batch["token_type_ids"],
                "attention_mask": batch["attention_mask"], "mlm_labels": labels,
                "nsp_labels": batch["nsp_label"]}
