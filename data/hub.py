"""A split of a `datasets` dataset wherever a task takes a data file: `hub:NAME[:CONFIG]:SPLIT`.

    --data.train_file hub:glue:sst2:train            --data.train_file hub:eriktks/conll2003:train
    --data.val_file hub:rajpurkar/squad:validation   --data.train_file hub:bentrevett/multi30k:train
    --data.train_files '[hub:wikitext:wikitext-2-raw-v1:train]'

NAME is a hub name (online, or in the `datasets` cache) or a dataset directory here. The split is loaded with
`datasets.load_dataset` and written once, in the format the task's reader takes, to
`$NLP_HUB_CACHE/<name>/<config>/<split>-<fingerprint>.<ext>` (default `.cache/hub`): then it is read and checked like
any file, so a problem names that file and its line. The fingerprint changes with the data, so a file is never stale.

Formats (what each reader takes):
    table  JSON lines, one row each, every column (classify, translate, summarize)
    conll  `token tag` lines, a blank line after each sentence; tags from `ner_tags` (a ClassLabel's names) or `tags`;
           a row that is just `-DOCSTART-` starts a document (ner)
    squad  SQuAD JSON: rows (id, title, context, question, answers) grouped into articles and paragraphs (qa)
    text   the `text` column, one row per line (lm, pretrain), or a `tokens` column's words (ner predict)
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Iterable

from data.errors import DataError

PREFIX = "hub:"
EXTENSIONS = {"table": ".jsonl", "conll": ".conll", "squad": ".json", "text": ".txt"}


def is_hub(spec) -> bool:
    return isinstance(spec, str) and spec.startswith(PREFIX)


def parse(spec: str) -> tuple[str, str | None, str]:
    """(name, config, split) of `hub:NAME[:CONFIG]:SPLIT`."""
    parts = spec[len(PREFIX):].split(":")
    if len(parts) not in (2, 3) or not all(p.strip() for p in parts):
        raise DataError(f"{spec}: expected hub:NAME:SPLIT or hub:NAME:CONFIG:SPLIT (e.g. hub:glue:sst2:validation)")
    return parts[0], (parts[1] if len(parts) == 3 else None), parts[-1]


def local_file(spec: str | Path, fmt: str) -> str | Path:
    """`spec` itself when it is a path; for `hub:...`, the split written as a local `fmt` file (see above)."""
    if not is_hub(spec):
        return spec
    name, config, split = parse(spec)
    dataset = _load(name, config, split, spec)
    cache = Path(os.environ.get("NLP_HUB_CACHE", ".cache/hub"))
    where = cache / name.strip("/").replace("/", "__") / (config or "-")
    path = where / f"{split}-{dataset._fingerprint[:16]}{EXTENSIONS[fmt]}"
    if not path.is_file():
        text = "".join(WRITERS[fmt](dataset, spec))
        partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")      # several processes may write it at once
        try:
            where.mkdir(parents=True, exist_ok=True)
            partial.write_text(text, encoding="utf-8")
            os.replace(partial, path)
        except OSError as e:
            raise DataError(f"{spec}: cannot write its local copy under {cache} ({e.strerror or e}); set NLP_HUB_CACHE "
                            f"to a writable directory") from None
    return path


def _load(name: str, config: str | None, split: str, spec: str):
    """The split, via `datasets`; a dataset directory here loads without progress bars (nothing to download)."""
    import datasets
    quiet = Path(name).is_dir() and datasets.is_progress_bar_enabled()
    if quiet:
        datasets.disable_progress_bars()
    try:
        return datasets.load_dataset(name, config, split=split)
    except Exception as e:  # noqa: BLE001 - offline, unknown name, config or split: one line saying which
        reason = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise DataError(f"{spec}: cannot load this dataset split ({type(e).__name__}: {reason})") from None
    finally:
        if quiet:
            datasets.enable_progress_bars()


def _column(dataset, candidates: tuple[str, ...], spec: str, what: str) -> str:
    found = next((c for c in candidates if c in dataset.column_names), None)
    if found is None:
        raise DataError(f"{spec}: no {what} column ({' or '.join(candidates)}; columns: "
                        f"{', '.join(dataset.column_names)})")
    return found


def _table(dataset, spec: str) -> Iterable[str]:
    for row in dataset:
        yield json.dumps(row, ensure_ascii=False, default=str) + "\n"


def _conll(dataset, spec: str) -> Iterable[str]:
    words = _column(dataset, ("tokens", "words"), spec, "token")
    tags = _column(dataset, ("ner_tags", "tags"), spec, "tag")
    names = getattr(getattr(dataset.features[tags], "feature", None), "names", None)   # a ClassLabel: tags are numbers
    for i, row in enumerate(dataset):
        if row[words] is None or row[tags] is None or len(row[words]) != len(row[tags]):
            raise DataError(f"{spec}, row {i}: {words} and {tags} must be lists of the same length")
        if row[words] == ["-DOCSTART-"]:
            yield "-DOCSTART- O\n\n"
            continue
        for word, tag in zip(row[words], row[tags]):
            yield f"{word} {names[tag] if names is not None else tag}\n"
        yield "\n"


def _squad(dataset, spec: str) -> Iterable[str]:
    """Questions grouped by title into articles and by context into paragraphs, in order of first appearance (rows
    need not be sorted: train_articles / eval_articles count whole articles)."""
    for column in ("id", "title", "context", "question", "answers"):
        _column(dataset, (column,), spec, "SQuAD")
    articles: dict[str, dict[str, list]] = {}              # title -> context -> questions
    for row in dataset:
        answers = [{"text": t, "answer_start": s}
                   for t, s in zip(row["answers"]["text"], row["answers"]["answer_start"])]
        qa = {"id": row["id"], "question": row["question"], "answers": answers}
        if not answers:                               # SQuAD 2.0's unanswerable questions
            qa["is_impossible"] = True
        articles.setdefault(row["title"], {}).setdefault(row["context"], []).append(qa)
    data = [{"title": title, "paragraphs": [{"context": context, "qas": qas} for context, qas in paragraphs.items()]}
            for title, paragraphs in articles.items()]
    yield json.dumps({"version": spec, "data": data}, ensure_ascii=False)


def _text(dataset, spec: str) -> Iterable[str]:
    """The `text` column, or the words of a `tokens` column (a CoNLL split to tag: `-DOCSTART-` is a blank line)."""
    column = _column(dataset, ("text", "tokens"), spec, "text")
    for i, row in enumerate(dataset):
        line = row[column]
        if line is None:
            raise DataError(f"{spec}, row {i}: no {column} (null)")
        if not isinstance(line, str):
            line = "" if line == ["-DOCSTART-"] else " ".join(line)
        yield line if line.endswith("\n") else line + "\n"      # wikitext's rows keep their newline; others do not


WRITERS: dict[str, Callable[..., Iterable[str]]] = {"table": _table, "conll": _conll, "squad": _squad, "text": _text}
