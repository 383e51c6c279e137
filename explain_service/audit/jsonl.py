"""The export format: JSON Lines, one record per line, then a trailer.

Every line is a UTF-8 JSON object with sorted keys and no whitespace, ending in ``\\n``. Record lines come
in ``seq`` order and carry every column, ``body`` as a JSON object::

    {"body": {...}, "caller": null, "created_at": "2025-01-31T12:00:00.123456+00:00",
     "hash": "<64 hex>", "id": "<id>", "model_name": "credit", "model_sha256": "<64 hex>",
     "model_version": "3", "prev_hash": "<64 hex>", "seq": 1}

The last line is the trailer; it names the head the exporter saw::

    {"trailer": {"count": 1, "format": "explain-service.audit/1", "head_hash": "<64 hex>", "head_seq": 1}}

To check a file by hand: for each record, ``hash == sha256(prev_hash + canonical(envelope))`` where the
envelope is the record without ``hash`` and ``prev_hash``, and canonical means orjson's sorted-keys output
(see :mod:`.chain`); each ``prev_hash`` is the previous line's ``hash`` (``"0" * 64`` for ``seq`` 1); the
trailer's ``head_hash`` and ``count`` match the last record. Keep the trailer (or just its ``head_hash``)
apart from the database: it is what shows, later, that no newer record was deleted.

A body that is not valid JSON in the database (which only tampering produces) is exported as a string, so
the export stays a faithful copy and its check fails on that record.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import fields
from typing import Any, BinaryIO

import orjson

from explain_service.audit.chain import (
    CHAIN_FORMAT,
    GENESIS_HASH,
    RawRecord,
    Reason,
    VerifyReport,
    canonical_json,
    walk_chain,
)

_FIELDS = tuple(field.name for field in fields(RawRecord))


def record_line(row: RawRecord) -> bytes:
    """One export line for ``row``."""
    try:
        body: Any = orjson.loads(row.body)
    except orjson.JSONDecodeError:
        body = row.body
    fields = {name: getattr(row, name) for name in _FIELDS}
    return canonical_json({**fields, "body": body}) + b"\n"


def write_export(rows: Iterable[RawRecord], out: BinaryIO) -> str:
    """Write ``rows`` (in ``seq`` order) and the trailer to ``out``; return the head hash."""
    count, head_seq, head_hash = 0, 0, GENESIS_HASH
    for row in rows:
        out.write(record_line(row))
        count, head_seq, head_hash = count + 1, row.seq, row.hash
    trailer = {"format": CHAIN_FORMAT, "count": count, "head_seq": head_seq, "head_hash": head_hash}
    out.write(canonical_json({"trailer": trailer}) + b"\n")
    return head_hash


def verify_export(inp: BinaryIO, *, expected_head: str | None = None) -> VerifyReport:
    """Check an export file on its own: every hash, the links, and the trailer.

    ``inp`` is read once; if it is seekable, a break is diagnosed by scanning it again for the record a
    hash points to. A missing trailer, or one naming another head, reports ``deleted``.
    """
    start = inp.tell() if inp.seekable() else None
    reader = _Reader(inp)
    locate = None if start is None else lambda wanted: _scan_for(inp, start, wanted)
    report = walk_chain(reader.records(), locate=locate, expected_head=expected_head)
    if not report.ok:
        return report
    trailer = reader.trailer
    if reader.bad_line is not None:
        if trailer is not None:
            detail = f"line {reader.bad_line} follows the trailer"
            return _failed(report, report.head_seq + 1, "inserted", detail)
        detail = f"line {reader.bad_line} is not an audit record"
        return _failed(report, report.head_seq + 1, "edited", detail)
    if trailer is None:
        return _failed(
            report, report.head_seq + 1, "deleted", "the trailer is missing: the file is cut short"
        )
    if trailer.get("head_hash") != report.head_hash or trailer.get("count") != report.checked:
        detail = f"the trailer names head {trailer.get('head_hash')} after {trailer.get('count')} records"
        return _failed(report, report.head_seq + 1, "deleted", detail)
    return report


def _failed(report: VerifyReport, seq: int, reason: Reason, detail: str) -> VerifyReport:
    return VerifyReport(False, report.checked, report.head_seq, report.head_hash, seq, None, reason, detail)


class _Reader:
    """Turns export lines into records; remembers the trailer and the first line that is neither."""

    def __init__(self, inp: BinaryIO) -> None:
        self._inp = inp
        self.trailer: dict[str, Any] | None = None
        self.bad_line: int | None = None

    def records(self) -> Iterator[RawRecord]:
        for number, line in enumerate(self._inp, start=1):
            if self.trailer is not None:
                self.bad_line = number  # anything after the trailer was added later
                return
            try:
                obj = orjson.loads(line)
                if isinstance(obj, dict) and isinstance(obj.get("trailer"), dict):
                    self.trailer = obj["trailer"]
                    continue
                record = _parse_record(obj)
            except (orjson.JSONDecodeError, TypeError, ValueError):
                self.bad_line = number
                return
            yield record


def _parse_record(obj: Any) -> RawRecord:
    if not isinstance(obj, dict) or set(obj) != set(_FIELDS):
        raise ValueError("not a record line")
    body = obj["body"]
    text = body if isinstance(body, str) else canonical_json(body).decode()
    return RawRecord(**{**obj, "body": text})


def _scan_for(inp: BinaryIO, start: int, wanted: str) -> tuple[int, str] | None:
    inp.seek(start)
    for line in inp:
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(obj, dict) and obj.get("hash") == wanted:
            return int(obj["seq"]), str(obj["id"])
    return None
