"""Tokenizers from checkpoint directories, built on the `tokenizers` library.

`load_wordpiece` reads a BERT checkpoint's `tokenizer.json` (preferred) or `vocab.txt`, and switches
off any padding or truncation saved in the file: batching code pads dynamically, and truncation is
explicit at the call site so nothing is cut silently. A tokenizer travels inside a checkpoint as its JSON
(`Tokenizer.to_str()`), read back by `tokenizer_from_str`.
"""
from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer
from tokenizers.implementations import BertWordPieceTokenizer


def _unpadded(tokenizer: Tokenizer) -> Tokenizer:
    """`tokenizer` with any padding or truncation saved in it switched off."""
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def load_wordpiece(path: str | Path, lowercase: bool = True) -> Tokenizer:
    """A WordPiece tokenizer from a directory holding `tokenizer.json` or `vocab.txt`, or from either file."""
    path = Path(path)
    if path.is_dir():
        found = [path / name for name in ("tokenizer.json", "vocab.txt") if (path / name).exists()]
        if not found:
            raise FileNotFoundError(f"{path}: no tokenizer.json or vocab.txt in this directory")
        path = found[0]                                 # tokenizer.json first
    if not path.exists():
        raise FileNotFoundError(f"{path}: tokenizer file not found")
    if path.suffix == ".json":
        return _unpadded(Tokenizer.from_file(str(path)))
    return _unpadded(BertWordPieceTokenizer(str(path), lowercase=lowercase)._tokenizer)


def load_tokenizer(spec: str) -> Tokenizer:
    """A WordPiece tokenizer from a model directory, tokenizer.json or vocab.txt, or a hub model name (online)."""
    path = Path(spec).expanduser()
    if path.exists():
        return load_wordpiece(path)
    if path.suffix in (".json", ".txt", ".ckpt") or len(path.parts) > 2:
        raise FileNotFoundError(f"{spec}: tokenizer file or directory not found")
    try:
        tokenizer = Tokenizer.from_pretrained(spec)
    except Exception as e:  # noqa: BLE001 - offline or unknown name
        raise FileNotFoundError(f"{spec}: not a tokenizer file or directory here, and not loadable from the hub "
                                f"({type(e).__name__})") from None
    return _unpadded(tokenizer)


def tokenizer_from_str(text: str) -> Tokenizer:
    return _unpadded(Tokenizer.from_str(text))
