"""CSV input row by row: every row is accounted for, a malformed one included.

The file is tokenised by the standard ``csv`` module (the quoting rules of
pandas' own parser: ``"`` quotes a field, ``""`` inside it is a quote, quoted
fields may hold commas and line breaks; an empty line is no row). Bytes that are
not UTF-8 are carried as lone surrogates (``surrogateescape``), so a bad byte
spoils its own row and no other. Each row is then either

* *well formed*: as many fields as the header, all valid UTF-8 text; these rows
  are handed to ``pandas.read_csv`` as a clean CSV, so numbers are parsed exactly
  as pandas parses them; or
* *malformed*: too many or too few fields, invalid UTF-8, or a tokeniser error;
  it becomes a rejected row (:class:`~explain_service.batch.compute.Malformed`)
  with its 0-based row number, and the job goes on.

Row numbers count rows, not lines: a quoted field that spans lines is one row.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, TextIO

import pandas as pd

from explain_service.batch.compute import Malformed

NOT_UTF8 = "Not valid UTF-8 text."


class InputError(ValueError):
    """The input file cannot be used as given (the message says why)."""


@dataclass
class CsvChunk:
    """Up to ``chunk_size`` consecutive rows: the well-formed ones as fields, the rest as rejects."""

    rows: int
    good: list[list[str]] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    malformed: dict[int, Malformed] = field(default_factory=dict)


def open_text(path: Path) -> TextIO:
    """``path`` as text for the ``csv`` module: UTF-8 (a leading BOM dropped), bad bytes kept aside."""
    return open(path, encoding="utf-8-sig", errors="surrogateescape", newline="")


def _rows(reader: Any) -> Iterator[list[str] | str]:
    """Each non-empty row's fields, or the tokeniser's complaint about it."""
    while True:
        try:
            for row in reader:
                if row:
                    yield row
            return
        except csv.Error as exc:
            yield f"Not a readable CSV row: {exc}."


def _is_utf8(value: str) -> bool:
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def shown(value: str) -> str:
    """A field as it can be reported: invalid bytes written as ``\\xNN``."""
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def read_header(path: Path) -> tuple[str, ...]:
    """The column names of a CSV file; refuses an empty file, bad text or duplicate names."""
    try:
        with open_text(path) as f:
            first = next(_rows(csv.reader(f)), None)
    except OSError as exc:
        raise InputError(f"cannot read the input {path}: {exc.strerror}") from None
    if first is None:
        raise InputError(f"{path} is empty: a CSV input needs a header row")
    if isinstance(first, str):
        raise InputError(f"cannot read the CSV header of {path}: {first}")
    if not all(_is_utf8(name) for name in first):
        raise InputError(f"the CSV header of {path} is not valid UTF-8 text")
    duplicated = [name for name, n in Counter(first).items() if n > 1]
    if duplicated:
        raise InputError(f"{path} has duplicate column(s) {', '.join(duplicated)}: rename them")
    return tuple(first)


def csv_chunks(path: Path, columns: tuple[str, ...], chunk_size: int) -> Iterator[CsvChunk]:
    """The rows after the header, ``chunk_size`` at a time, sorted into well formed and malformed."""
    with open_text(path) as f:
        rows = _rows(csv.reader(f))
        next(rows, None)
        while batch := list(islice(rows, chunk_size)):
            yield _sort(batch, columns)


def _sort(batch: list[list[str] | str], columns: tuple[str, ...]) -> CsvChunk:
    chunk = CsvChunk(rows=len(batch))
    width = len(columns)
    for pos, row in enumerate(batch):
        if len(row) == width and not isinstance(row, str) and _is_utf8("".join(row)):
            chunk.good.append(row)
            chunk.positions.append(pos)
        elif isinstance(row, str):
            chunk.malformed[pos] = Malformed({"_row": [row]}, {})
        elif len(row) != width:
            message = f"Expected {width} fields, found {len(row)}."
            chunk.malformed[pos] = Malformed({"_row": [message]}, {"_fields": [shown(v) for v in row]})
        else:
            bad = sorted(name for name, v in zip(columns, row, strict=True) if not _is_utf8(v))
            shown_row = {name: shown(v) for name, v in zip(columns, row, strict=True)}
            chunk.malformed[pos] = Malformed({name: [NOT_UTF8] for name in bad}, shown_row)
    return chunk


def parse_rows(
    rows: list[list[str]],
    columns: tuple[str, ...],
    text_columns: list[str],
    na_values: dict[str, list[str]],
) -> pd.DataFrame:
    """Well-formed rows parsed by pandas (text columns kept as written, the others parsed)."""
    if not rows:
        return pd.DataFrame({name: pd.Series([], dtype=object) for name in columns})
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    buf.seek(0)
    frame = pd.read_csv(
        buf,
        header=None,
        names=list(columns),
        index_col=False,
        dtype=dict.fromkeys(text_columns, str),
        keep_default_na=False,
        na_values=na_values,
        skip_blank_lines=False,
    )
    if len(frame) != len(rows):
        raise RuntimeError(f"pandas read {len(frame)} rows from {len(rows)} well-formed CSV rows")
    return frame
