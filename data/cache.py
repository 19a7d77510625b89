"""Tokenised splits cached on disk as `datasets` Arrow files, keyed by everything that produced them.

A data module computes `content_key(tokenizer JSON, settings, texts...)` and asks `cached_columns(cache_dir, key,
build)` for its columns (`{name: [one value per example]}`): a hit reads them back, a miss calls `build()` and
writes the result. Any change of text, tokenizer or settings changes the key, so a stale cache is never read.
A cache is written to a temporary directory and renamed into place, so an interrupted run never leaves a partial
one; under DDP only the process that `write`s (rank 0) stores it, the others tokenise for themselves.
The language-model corpus (data/text.py) keeps its token stream as memory-mapped arrays instead, keyed by the same
`content_key`, under `default_cache_dir()`, where the vocabularies trained from scratch (text.py's byte-level BPE,
pretrain.py's WordPiece) are cached too.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Callable, Optional

from pytorch_lightning.utilities import rank_zero_info


def content_key(*parts: str) -> str:
    """A short hash of the parts, in order (24 hex digits); a NUL ends each part, so ("ab", "c") != ("a", "bc")."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()[:24]


def default_cache_dir() -> Path:
    """Where token arrays are cached unless a data module is given `cache_dir`: $NLP_CACHE_DIR, else
    $XDG_CACHE_HOME/nlp-suite/tokens (~/.cache/nlp-suite/tokens)."""
    root = os.environ.get("NLP_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "nlp-suite")
    return Path(root) / "tokens"


def write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """`write(tmp)` to a temporary name beside `path`, then rename it to `path`: an interrupted run never leaves a
    partial file, and another process writing the same file at once writes the same bytes."""
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    write(tmp)
    os.replace(tmp, path)


def cached_text(path: Optional[Path], build: Callable[[], str], what: str) -> str:
    """The text stored at `path` (a trained vocabulary's JSON), or `build()`'s, stored there; `path` None: no cache.
    Says which, naming `what`."""
    if path is not None and path.exists():
        rank_zero_info(f"{what} read from the cache: {path}")
        return path.read_text(encoding="utf-8")
    text = build()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
        rank_zero_info(f"{what} cached in {path}")
    return text


def cached_columns(cache_dir: Optional[str | Path], key: str, build: Callable[[], dict[str, list]],
                   write: bool = True) -> dict[str, list]:
    """The columns cached under `key`, or `build()`'s, stored when `write` (see above); `cache_dir` None: no cache."""
    if cache_dir is None:
        return build()
    path = Path(cache_dir) / key
    if (path / "dataset_info.json").exists():
        import datasets
        table = datasets.load_from_disk(str(path)).data    # Arrow columns -> lists at once (`ds[name]`: row by row)
        return {name: table.column(name).to_pylist() for name in table.column_names}
    columns = build()
    if write:
        import datasets
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
        datasets.disable_progress_bars()
        datasets.Dataset.from_dict(columns).save_to_disk(str(tmp))
        if path.exists():                  # another run stored the same key meanwhile: its copy is identical
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.rename(path)
    return columns
