"""Tokenizers for language modelling: characters, the GPT-2 byte-level BPE, or a byte-level BPE trained here.

All three share one small interface (`encode`, `decode`, `vocab_size`, `eot_id`, `to_str`/`from_str`), so a
checkpoint can carry its tokenizer as one string and `generate`/`test` need nothing but the checkpoint.
Every vocabulary has an end-of-text token (`<|endoftext|>`) that separates documents.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from tokenizers import Tokenizer
from tokenizers.implementations import ByteLevelBPETokenizer

from data.errors import DataError

EOT = "<|endoftext|>"

# A pre-tokenisation boundary of the GPT-2 byte-level regex that no look-ahead sees across: between a non-space
# character and a newline. Cutting a long text there and encoding the pieces gives exactly the ids of encoding it
# whole (tested), in parallel.
_LINE_END = re.compile(r"(?<=\S)(?=\n)")


class TextTokenizer:
    """`kind` is "char" (one id per character, eot last) or "bpe" (a byte-level `tokenizers.Tokenizer`)."""

    def __init__(self, kind: str, *, chars: str | None = None, tokenizer: Tokenizer | None = None):
        self.kind = kind
        if kind == "char":
            if chars is None or len(set(chars)) != len(chars):
                raise ValueError("a char tokenizer needs a string of distinct characters")
            self.chars = chars
            self._stoi = {c: i for i, c in enumerate(chars)}
            self.eot_id = len(chars)
            self.vocab_size = len(chars) + 1
        elif kind == "bpe":
            if tokenizer is None:
                raise ValueError("a bpe tokenizer needs a tokenizers.Tokenizer")
            tokenizer.no_padding()
            tokenizer.no_truncation()
            self.tokenizer = tokenizer
            self.eot_id = tokenizer.token_to_id(EOT)
            if self.eot_id is None:
                raise ValueError(f"byte-level BPE vocabulary has no {EOT} token")
            self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        else:
            raise ValueError(f"unknown tokenizer kind {kind!r}: expected 'char' or 'bpe'")

    # construction ------------------------------------------------------------------------------------------
    @classmethod
    def char_from_text(cls, texts: Iterable[str]) -> "TextTokenizer":
        """Sorted set of the characters in `texts`, as nanoGPT's shakespeare_char/prepare.py builds it."""
        return cls("char", chars="".join(sorted(set().union(*texts))))

    @classmethod
    def gpt2(cls, path: str | Path) -> "TextTokenizer":
        """The GPT-2 BPE from a directory holding encoder.json + vocab.bpe (or vocab.json + merges.txt)."""
        path = Path(path)
        for vocab, merges in (("encoder.json", "vocab.bpe"), ("vocab.json", "merges.txt")):
            if (path / vocab).exists() and (path / merges).exists():
                bpe = ByteLevelBPETokenizer(str(path / vocab), str(path / merges))
                bpe.add_special_tokens([EOT])  # already id 50256 in GPT-2's vocabulary; this makes it atomic in text
                return cls("bpe", tokenizer=bpe._tokenizer)
        if (path / "tokenizer.json").exists():
            return cls("bpe", tokenizer=Tokenizer.from_file(str(path / "tokenizer.json")))
        raise FileNotFoundError(f"{path}: expected encoder.json + vocab.bpe, vocab.json + merges.txt or tokenizer.json")

    @classmethod
    def train_bpe(cls, texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> "TextTokenizer":
        """A byte-level BPE (GPT-2's pre-tokenisation and byte alphabet) trained on `texts`."""
        bpe = ByteLevelBPETokenizer()
        bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=min_frequency,
                                special_tokens=[EOT], show_progress=False)
        return cls("bpe", tokenizer=bpe._tokenizer)

    # serialisation -----------------------------------------------------------------------------------------
    def to_str(self) -> str:
        if self.kind == "char":
            return json.dumps({"kind": "char", "chars": self.chars})
        return json.dumps({"kind": "bpe", "tokenizer": self.tokenizer.to_str()})

    @classmethod
    def from_str(cls, text: str) -> "TextTokenizer":
        d = json.loads(text)
        if d["kind"] == "char":
            return cls("char", chars=d["chars"])
        return cls("bpe", tokenizer=Tokenizer.from_str(d["tokenizer"]))

    # use ---------------------------------------------------------------------------------------------------
    @property
    def dtype(self):
        """Smallest unsigned integer type that holds every id (for the token cache)."""
        return np.uint16 if self.vocab_size <= 2 ** 16 else np.uint32

    def encode(self, text: str, where: str = "text", first_line: int = 1) -> list[int]:
        """Ids of `text`; `where` (and `first_line`, the line `text` starts at) name the source in the error for a
        character outside a char vocabulary."""
        if self.kind == "char":
            try:
                return [self._stoi[c] for c in text]
            except KeyError:
                pos = next(i for i, c in enumerate(text) if c not in self._stoi)
                line = text.count("\n", 0, pos) + first_line
                raise DataError(f"{where}, line {line}: character {text[pos]!r} is not in the character "
                                 f"vocabulary ({len(self.chars)} characters)") from None
        pieces = _LINE_END.split(text)
        if len(pieces) == 1:
            return self.tokenizer.encode(text, add_special_tokens=False).ids
        return [i for enc in self.tokenizer.encode_batch(pieces, add_special_tokens=False) for i in enc.ids]

    def encode_documents(self, docs: Sequence[str], names: Sequence[str] | None = None) -> np.ndarray:
        """Documents concatenated, with the end-of-text id between consecutive ones."""
        parts = []
        for i, doc in enumerate(docs):
            if i:
                parts.append(np.array([self.eot_id], dtype=self.dtype))
            parts.append(np.asarray(self.encode(doc, names[i] if names else f"document {i}"), dtype=self.dtype))
        return np.concatenate(parts) if parts else np.zeros(0, dtype=self.dtype)

    def decode(self, ids: Iterable[int]) -> str:
        ids = [int(i) for i in ids]
        if self.kind == "char":
            return "".join(self.chars[i] if i < len(self.chars) else EOT for i in ids)
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def __repr__(self) -> str:
        return f"TextTokenizer(kind={self.kind!r}, vocab_size={self.vocab_size})"
