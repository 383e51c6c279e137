"""Chunked input readers, the input fingerprint and durable file writes.

Inputs are never read whole: CSV through ``pandas.read_csv(chunksize=)``,
Parquet through ``ParquetFile.iter_batches``, re-cut so that chunk ``k`` always
holds input rows ``k*N .. k*N+N-1`` whatever the file's row groups are.

CSV columns are read as follows: categorical features and every column that
is not a feature as text, exactly as written (``keep_default_na=False``: an
empty cell or ``NA`` is text, not a missing value); numeric, integer and
boolean features with pandas' number and ``True``/``False`` parsing, where an
empty cell or one of pandas' usual missing markers (``NA``, ``NaN``, ``null``
...) is a missing value. Cells that do not parse stay text and are judged by
the validator, so one bad cell rejects one row, not the chunk. Parquet columns
keep their Arrow types.

Writes that must survive a crash (parts, the job manifest, the final file) go
to a temporary name in the same directory, are fsynced, renamed into place,
and the directory is fsynced: a reader sees the old file or the new one,
never half of one.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from explain_service.batch.compute import RawChunk
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
FINGERPRINT_BYTES = 1 << 20
_SCAN_BLOCK = 4 << 20


class InputError(ValueError):
    """The input file cannot be used as given (the message says why)."""


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
        try:
            header = pd.read_csv(path, nrows=0)
        except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
            raise InputError(f"cannot read the CSV header of {path}: {exc}") from None
        columns = tuple(str(c) for c in header.columns)
        passthrough = tuple(pa.field(c, pa.string()) for c in columns if c not in names)
        total, exact = _count_csv_rows(path), False
    else:
        try:
            pf = pq.ParquetFile(path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputError(f"cannot read {path} as Parquet: {exc}") from None
        arrow = pf.schema_arrow
        columns = tuple(arrow.names)
        passthrough = tuple(arrow.field(c) for c in columns if c not in names)
        total, exact = pf.metadata.num_rows, True
    if len(set(columns)) != len(columns):
        raise InputError(f"{path} has duplicate column names")
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
    features = schema.names
    extras = [f.name for f in info.passthrough]
    if info.format == "csv":
        frames = _csv_frames(info.path, schema, extras, chunk_size)
        for index, frame in enumerate(frames):
            passthrough = pa.Table.from_pandas(
                frame[extras], preserve_index=False, schema=pa.schema(info.passthrough)
            )
            yield RawChunk(index, index * chunk_size, frame[features].reset_index(drop=True), passthrough)
        return
    for index, table in enumerate(_parquet_tables(info.path, chunk_size)):
        frame = _features_frame(table.select(features))
        yield RawChunk(index, index * chunk_size, frame, table.select(extras))


def _csv_frames(
    path: Path, schema: FeatureSchema, extras: list[str], chunk_size: int
) -> Iterator[pd.DataFrame]:
    text_columns = [f.name for f in schema.features if f.kind == "categorical"] + extras
    parsed = {f.name: MISSING_TEXT for f in schema.features if f.kind != "categorical"}
    reader = pd.read_csv(
        path,
        chunksize=chunk_size,
        dtype=dict.fromkeys(text_columns, str),
        keep_default_na=False,
        na_values=parsed,
    )
    with reader:
        yield from reader


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
    """Size, modification time and sha256 of the first and last MiB of ``path``."""
    stat = path.stat()
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        digest.update(f.read(FINGERPRINT_BYTES))
        if stat.st_size > FINGERPRINT_BYTES:
            f.seek(max(stat.st_size - FINGERPRINT_BYTES, FINGERPRINT_BYTES))
            digest.update(f.read(FINGERPRINT_BYTES))
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256_head_tail": digest.hexdigest()}


def fsync_dir(directory: Path) -> None:
    """Make a rename or unlink inside ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durable(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically and durably (temp name, fsync, rename, fsync dir)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
