"""Tokenizers from checkpoint directories, built on the `tokenizers` library.

`load_wordpiece` reads a BERT checkpoint's `tokenizer.json` (preferred) or `vocab.txt`, and switches
off any padding or truncation saved in the file: batching code pads dynamically, and truncation is
explicit at the call site so nothing is cut silently.
"""
from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer
from tokenizers.implementations import BertWordPieceTokenizer


def load_wordpiece(path: str | Path, lowercase: bool = True) -> Tokenizer:
    """A WordPiece tokenizer from a directory holding `tokenizer.json` or `vocab.txt`, or from either file."""
    path = Path(path)
    if path.is_dir():
        if (path / "tokenizer.json").exists():
            path = path / "tokenizer.json"
        elif (path / "vocab.txt").exists():
            path = path / "vocab.txt"
        else:
            raise FileNotFoundError(f"{path}: no tokenizer.json or vocab.txt in this directory")
    if not path.exists():
        raise FileNotFoundError(f"{path}: tokenizer file not found")
    if path.suffix == ".json":
        tokenizer = Tokenizer.from_file(str(path))
    else:
        tokenizer = BertWordPieceTokenizer(str(path), lowercase=lowercase)._tokenizer
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def tokenizer_to_str(tokenizer: Tokenizer) -> str:
    """Serialise for storage inside a checkpoint (so `predict` needs nothing but the .ckpt)."""
    return tokenizer.to_str()


def tokenizer_from_str(text: str) -> Tokenizer:
    tokenizer = Tokenizer.from_str(text)
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer
