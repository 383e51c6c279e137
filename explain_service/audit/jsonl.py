"""The export format: JSON Lines, one record per line, then a trailer.

Every line is a UTF-8 JSON object with sorted keys and no whitespace, ending in ``\\n``. Record lines come
in ``seq`` order and carry every column, ``body`` as a JSON object::

    {"body": {...}, "caller": null, "created_at": "2025-01-31T12:00:00.123456+00:00",
     "hash": "<64 hex>", "id": "<id>", "model_name": "credit", "model_sha256": "<64 hex>",
     "model_version": "3", "prev_hash": "<64 hex>", "seq": 1}

The last line is the trailer; it names the chain's genesis and the head the exporter saw::

    {"trailer": {"count": 1, "format": "explain-service.audit/2",
                 "genesis": {"chain_id": "<32 hex>", "created_at": "...", "hash": "<64 hex>"},
                 "head_hash": "<64 hex>", "head_seq": 1}}

To check a file by hand: for each record, ``hash == sha256(prev_hash + canonical(envelope))`` where the
envelope is the record without ``hash`` and ``prev_hash``, and canonical means orjson's sorted-keys output
(see :mod:`.chain`); each ``prev_hash`` is the previous line's ``hash``, the genesis ``hash`` for ``seq`` 1;
the trailer's ``head_hash`` and ``count`` match the last record (the genesis hash when there is none).
Keep the trailer (or its ``head_hash`` and genesis ``chain_id``) apart from the database: the head shows,
later, that no newer record was deleted; the chain id, that the store did not start a new chain.

Exports from before genesis records (``explain-service.audit/1``, a trailer without ``genesis``) start at
``"0" * 64`` and still verify; so do exports of such a chain taken later, whose genesis hash is that value.

A body that is not valid JSON in the database (which only tampering produces) is exported as a string, so
the export stays a faithful copy and its check fails on that record.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import fields, replace
from typing import Any, BinaryIO

import orjson

from explain_service.audit.chain import (
    CHAIN_FORMAT,
    GENESIS_HASH,
    LEGACY_FORMAT,
    Genesis,
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


def write_export(rows: Iterable[RawRecord], out: BinaryIO, genesis: Genesis | None) -> str:
    """Write ``rows`` (in ``seq`` order) and the trailer to ``out``; return the head hash.

    ``genesis`` is None only for a chain from before genesis records, read without migrating it.
    """
    start = GENESIS_HASH if genesis is None else genesis.hash
    count, head_seq, head_hash = 0, 0, start
    for row in rows:
        out.write(record_line(row))
        count, head_seq, head_hash = count + 1, row.seq, row.hash
    trailer: dict[str, Any] = {"count": count, "head_seq": head_seq, "head_hash": head_hash}
    if genesis is None:
        trailer["format"] = LEGACY_FORMAT
    else:
        trailer.update(format=CHAIN_FORMAT, genesis=genesis.to_dict())
    out.write(canonical_json({"trailer": trailer}) + b"\n")
    return head_hash


def verify_export(
    inp: BinaryIO, *, expected_head: str | None = None, expected_genesis: str | None = None
) -> VerifyReport:
    """Check an export file on its own: every hash, the links, the genesis and the trailer.

    ``inp`` is read once; if it is seekable, a break is diagnosed by scanning it again for the record a
    hash points to. A missing trailer, or one naming another head, reports ``deleted``. A genesis other
    than the chain id ``expected_genesis`` (say, from an earlier export) reports ``restarted``.
    """
    start = inp.tell() if inp.seekable() else None
    reader = _Reader(inp)
    locate = None if start is None else lambda wanted: _scan_for(inp, start, wanted)
    report = walk_chain(reader.records(), locate=locate, expected_head=expected_head, start_hash=None)
    trailer = reader.trailer
    if not report.ok and not (report.reason == "head_not_found" and report.checked == 0):
        return report
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
    genesis = Genesis.from_dict(trailer.get("genesis"))
    if genesis is None and ("genesis" in trailer or trailer.get("format") != LEGACY_FORMAT):
        return _failed(report, 1, "edited", "the trailer's genesis is missing or malformed")
    chain_id = None if genesis is None else genesis.chain_id
    origin = GENESIS_HASH if genesis is None else genesis.hash
    if genesis is not None and not genesis.consistent():
        return _failed(report, 1, "edited", "the trailer's genesis was changed", chain_id)
    if expected_genesis is not None and chain_id != expected_genesis:
        detail = (
            f"the export is of chain {chain_id or '(from before genesis records)'}, not {expected_genesis}"
        )
        return _failed(report, 1, "restarted", detail, chain_id)
    if reader.first_prev_hash is not None and reader.first_prev_hash != origin:
        return _failed(report, 1, "edited", "record 1 does not follow the chain's genesis", chain_id)
    if report.checked == 0:
        if expected_head not in (None, origin):
            return replace(report, chain_id=chain_id, head_hash=origin)
        report = VerifyReport(True, 0, 0, origin)
    if trailer.get("head_hash") != report.head_hash or trailer.get("count") != report.checked:
        detail = f"the trailer names head {trailer.get('head_hash')} after {trailer.get('count')} records"
        return _failed(report, report.head_seq + 1, "deleted", detail, chain_id)
    return replace(report, chain_id=chain_id)


def _failed(
    report: VerifyReport, seq: int, reason: Reason, detail: str, chain_id: str | None = None
) -> VerifyReport:
    if seq == 1:  # nothing before the first record verifies
        return VerifyReport(False, 0, 0, report.head_hash, 1, None, reason, detail, chain_id)
    head_seq, head_hash = report.head_seq, report.head_hash
    return VerifyReport(False, report.checked, head_seq, head_hash, seq, None, reason, detail, chain_id)


class _Reader:
    """Turns export lines into records; remembers the trailer and the first line that is neither."""

    def __init__(self, inp: BinaryIO) -> None:
        self._inp = inp
        self.trailer: dict[str, Any] | None = None
        self.bad_line: int | None = None
        self.first_prev_hash: str | None = None

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
            if self.first_prev_hash is None and record.seq == 1:
                self.first_prev_hash = record.prev_hash
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
