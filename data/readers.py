"""Readers for local TSV / CSV / JSON-lines files that check every row.

Each reader returns `{column: [values...]}` for the requested columns, plus the file line number of every
row, so later checks (labels) can name the exact line. Every problem is a `DataError` naming the file
and the line: missing file, empty file, missing column, a row with the wrong number of fields, an empty
required value, a line that is not JSON.
"""
from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from typing import Iterator

from data.errors import DataError

csv.field_size_limit(sys.maxsize)


def require_file(path: str | Path) -> Path:
    """`path`, which must be a file: else a DataError saying it is missing or is not a file."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if not path.is_file():
        raise DataError(f"{path}: not a file (a directory?)")
    return path


def read_text(path: str | Path) -> str:
    """A text file's content. UTF-8, with a byte-order mark at the start dropped (Excel writes one) and any line
    ending (CRLF included); a byte that is not UTF-8 is a DataError naming its line."""
    path = require_file(path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path}, line {line}: not UTF-8 text (byte 0x{raw[e.start]:02x}); save the file as UTF-8") \
            from None
    return text.removeprefix("\ufeff")


def read_table(path: str | Path, columns: list[str]) -> dict[str, list]:
    """Read `columns` (all required, none empty) from a .tsv/.csv/.jsonl file.

    Returns a dict column -> list of strings, with the extra key "_line" (1-based file line of each row).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".json", ".tsv", ".csv", ".txt"):
        raise DataError(f"{path}: unknown file type {suffix!r}; expected .tsv, .csv or .jsonl")
    if suffix in (".jsonl", ".json"):
        table = _read_jsonl(path, columns)
    else:
        table = _read_delimited(path, read_text(path), columns, "," if suffix == ".csv" else "\t")
    if not table["_line"]:
        raise DataError(f"{path}: no data rows (the file is empty or holds only a header)")
    return table


def _read_delimited(path: Path, text: str, columns: list[str], delimiter: str) -> dict[str, list]:
    kind = "tab" if delimiter == "\t" else "comma"
    with io.StringIO(text, newline="") as f:
        # GLUE TSVs are not quoted (sentences contain bare quotes), so only CSV uses quoting; strict: a quote that is
        # never closed is an error, not a field that swallows the rest of the file
        reader = csv.reader(f, delimiter=delimiter, quoting=csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL,
                            strict=True)
        try:
            header = next(reader)
        except StopIteration:
            raise DataError(f"{path}: file is empty (expected a header line naming the columns)") from None
        except csv.Error as e:
            raise DataError(f"{path}, line 1: cannot parse header: {e}") from None
        header = [h.strip() for h in header]
        missing = [c for c in columns if c not in header]
        if missing:
            raise DataError(f"{path}: no column {missing[0]!r} in the header (columns: {', '.join(header)})")
        wanted = {c: header.index(c) for c in columns}
        table: dict[str, list] = {c: [] for c in [*wanted, "_line"]}
        line = 1                                    # the last line read (a quoted field may span lines)
        try:
            for row in reader:
                first, line = line + 1, reader.line_num   # the row's first line names it
                if not row or (len(row) == 1 and not row[0].strip()):
                    raise DataError(f"{path}, line {first}: empty line (every line after the header is one example)")
                if len(row) != len(header):
                    raise DataError(f"{path}, line {first}: expected {len(header)} {kind}-separated fields "
                                    f"({', '.join(header)}), found {len(row)}")
                for c, i in wanted.items():
                    value = row[i].strip()
                    if not value:
                        raise DataError(f"{path}, line {first}: empty value in column {c!r}")
                    table[c].append(value)
                table["_line"].append(first)
        except csv.Error as e:
            raise DataError(f"{path}, line {line + 1}: cannot parse: {e}") from None
    return table


def read_json_lines(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) of every line of a JSON-lines file; an empty line, a line that is not JSON or not a
    JSON object is a DataError naming the line."""
    for line, row_text in enumerate(read_text(path).splitlines(), start=1):
        if not row_text.strip():
            raise DataError(f"{path}, line {line}: empty line (every line is one JSON object)")
        try:
            row = json.loads(row_text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}, line {line}: not valid JSON ({e.msg}, column {e.colno})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}, line {line}: expected a JSON object, found {type(row).__name__}")
        yield line, row


def _read_jsonl(path: Path, columns: list[str]) -> dict[str, list]:
    table: dict[str, list] = {c: [] for c in [*columns, "_line"]}
    for line, row in read_json_lines(path):
        for c in columns:
            if c not in row or row[c] is None or str(row[c]).strip() == "":
                raise DataError(f"{path}, line {line}: missing or empty key {c!r} (keys: {', '.join(map(str, row))})")
            table[c].append(str(row[c]).strip())
        table["_line"].append(line)
    return table
