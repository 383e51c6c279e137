"""Chunked input readers, the input fingerprint and durable file writes.

Inputs are never read whole: CSV row by row (:mod:`~explain_service.batch.csv_input`,
malformed rows become rejected rows), Parquet through ``ParquetFile.iter_batches``,
re-cut so that chunk ``k`` always holds input rows ``k*N .. k*N+N-1`` whatever
the file's row groups are.

CSV columns are read as follows: categorical features and every column that
is not a feature as text, exactly as written (``keep_default_na=False``: an
empty cell or ``NA`` is text, not a missing value, except that an empty cell of
a categorical feature that takes missing values is missing); numeric, integer and
boolean features with pandas' number and ``True``/``False`` parsing, where an
empty cell or one of pandas' usual missing markers (``NA``, ``NaN``, ``null``
...) is a missing value. Cells that do not parse stay text and are judged by
the validator, so one bad cell rejects one row, not the chunk. Parquet columns
keep their Arrow types, and feature values are judged by type as the API judges
JSON (the text ``"67"`` is not a number there). Duplicate column names are refused.

The fingerprint that a resumed job must match is the sha256 of the whole file
(streamed; about 1/50 of a second per 100,000 CSV rows, next to minutes of SHAP).

Writes that must survive a crash (parts, the job manifest, the final file) go
to a temporary name in the same directory, are fsynced, renamed into place,
and the directory is fsynced: a reader sees the old file or the new one,
never half of one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from explain_service.batch.compute import RawChunk
from explain_service.batch.csv_input import InputError, csv_chunks, parse_rows, read_header
from explain_service.registry.schema import FeatureSchema

FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
MISSING_TEXT = [
    "",
    "#N/A",
    "#N/A N/A",
    "#NA",
    "-1.#IND",
    "-1.#QNAN",
    "-NaN",
    "-nan",
    "1.#IND",
    "1.#QNAN",
    "<NA>",
    "N/A",
    "NA",
    "NULL",
    "NaN",
    "None",
    "n/a",
    "nan",
    "null",
]
_SCAN_BLOCK = 4 << 20

__all__ = ["FORMATS", "InputError", "InputInfo", "fingerprint", "inspect_input", "read_chunks"]


@dataclass(frozen=True)
class InputInfo:
    """What is known about an input before its rows are read."""

    path: Path
    format: str
    columns: tuple[str, ...]
    passthrough: tuple[pa.Field, ...]
    total_rows: int | None
    exact_total: bool


def input_format(path: Path) -> str:
    """``csv`` or ``parquet`` from the file name."""
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise InputError(f"unsupported input extension {path.suffix!r}: use .csv or .parquet")
    return fmt


def inspect_input(path: Path, schema: FeatureSchema) -> InputInfo:
    """Columns, pass-through fields and row count (estimated for CSV) of ``path``."""
    fmt = input_format(path)
    names = set(schema.names)
    if fmt == "csv":
        columns = read_header(path)
        passthrough = tuple(pa.field(c, pa.string()) for c in columns if c not in names)
        total, exact = _count_csv_rows(path), False
    else:
        try:
            pf = pq.ParquetFile(path)
        except PermissionError as exc:
            raise InputError(f"cannot read the input {path}: {exc.strerror}") from None
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputError(f"cannot read {path} as Parquet: {exc}") from None
        arrow = pf.schema_arrow
        columns = tuple(arrow.names)
        duplicated = sorted({c for c in columns if columns.count(c) > 1})
        if duplicated:
            raise InputError(f"{path} has duplicate column(s) {', '.join(duplicated)}: rename them")
        passthrough = tuple(arrow.field(c) for c in columns if c not in names)
        total, exact = pf.metadata.num_rows, True
    return InputInfo(path, fmt, columns, passthrough, total, exact)


def _count_csv_rows(path: Path) -> int:
    """Line count minus the header: the row count unless quoted fields hold newlines."""
    lines, last = 0, b"\n"
    with open(path, "rb") as f:
        while block := f.read(_SCAN_BLOCK):
            lines += block.count(b"\n")
            last = block[-1:]
    if last != b"\n":
        lines += 1
    return max(lines - 1, 0)


def read_chunks(info: InputInfo, schema: FeatureSchema, chunk_size: int) -> Iterator[RawChunk]:
    """Chunks of ``chunk_size`` rows (the last may be shorter), in input order."""
    if info.format == "csv":
        yield from _csv_raw_chunks(info, schema, chunk_size)
        return
    features = schema.names
    extras = [f.name for f in info.passthrough]
    for index, table in enumerate(_parquet_tables(info.path, chunk_size)):
        frame = _features_frame(table.select(features))
        yield RawChunk(index, index * chunk_size, frame, table.select(extras), typed=True)


def _csv_raw_chunks(info: InputInfo, schema: FeatureSchema, chunk_size: int) -> Iterator[RawChunk]:
    """CSV chunks: well-formed rows parsed by pandas, malformed ones carried as rejects."""
    features = schema.names
    extras = [f.name for f in info.passthrough]
    text_columns = [f.name for f in schema.features if f.kind == "categorical"] + extras
    parsed = {f.name: MISSING_TEXT for f in schema.features if f.kind != "categorical"}
    # A categorical feature that takes missing values reads an empty cell as missing ("NA" stays text).
    parsed.update({f.name: [""] for f in schema.features if f.kind == "categorical" and f.missing})
    for index, chunk in enumerate(csv_chunks(info.path, info.columns, chunk_size)):
        frame = parse_rows(chunk.good, info.columns, text_columns, parsed)
        passthrough = pa.Table.from_pandas(
            frame[extras], preserve_index=False, schema=pa.schema(info.passthrough)
        )
        yield RawChunk(
            index,
            index * chunk_size,
            frame[features],
            passthrough,
            positions=np.asarray(chunk.positions, dtype=np.int64),
            malformed=chunk.malformed,
        )


def _parquet_tables(path: Path, chunk_size: int) -> Iterator[pa.Table]:
    """Re-cut Parquet record batches into tables of exactly ``chunk_size`` rows."""
    pf = pq.ParquetFile(path)
    pending: list[pa.RecordBatch] = []
    held = 0
    for batch in pf.iter_batches(batch_size=min(chunk_size, 65_536)):
        pending.append(batch)
        held += batch.num_rows
        while held >= chunk_size:
            table = pa.Table.from_batches(pending, schema=pf.schema_arrow)
            yield table.slice(0, chunk_size)
            rest = table.slice(chunk_size)
            pending = rest.to_batches()
            held = rest.num_rows
    if held:
        yield pa.Table.from_batches(pending, schema=pf.schema_arrow)


def _features_frame(table: pa.Table) -> pd.DataFrame:
    columns: dict[str, Any] = {}
    for name, column in zip(table.column_names, table.columns, strict=True):
        if pa.types.is_dictionary(column.type):
            column = column.cast(column.type.value_type)
        columns[name] = column.to_pandas()
    return pd.DataFrame(columns)


def fingerprint(path: Path) -> dict[str, Any]:
    """Size and sha256 of the whole of ``path``, streamed (what a resumed job must find again)."""
    digest = hashlib.sha256()
    size = 0
    try:
        with open(path, "rb") as f:
            while block := f.read(_SCAN_BLOCK):
                digest.update(block)
                size += len(block)
    except OSError as exc:
        raise InputError(f"cannot read the input {path}: {exc.strerror}") from None
    return {"size": size, "sha256": digest.hexdigest()}


def fsync_dir(directory: Path) -> None:
    """Make a rename or unlink inside ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durable(path: Path, data: bytes, *, mode: int = 0o666) -> None:
    """Write ``data`` to ``path`` atomically and durably (temp name, fsync, rename, fsync dir).

    ``mode`` is the new file's permission bits before the umask (0o600 for secrets).
    """
    tmp = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()  # a leftover of a crash would keep its own permission bits
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
