"""The hash chain: canonical form, record hashes and the walk that checks them.

Nothing here touches a database; :mod:`.store` and :mod:`.jsonl` feed rows in.

Every record seals the one before it, back to the chain's genesis::

    genesis  {"chain_id": 32 random hex, "created_at": when the store was made}
        │    hash₀ = sha256(canonical_json({"chain_id", "created_at", "format": CHAIN_FORMAT}))
        ▼
    seq 1   hash₁ = sha256(hash₀ ‖ canonical_json(envelope₁))
        │
        ▼
    seq 2   hash₂ = sha256(hash₁ ‖ canonical_json(envelope₂))
        ⋮

A chain made before genesis records existed (``explain-service.audit/1``) starts at
:data:`GENESIS_HASH` (``"0" * 64``) instead; it is given a genesis whose ``hash`` is that value, so
every chain has an id. A store that silently starts afresh (its file deleted and made again) starts a
chain with another id: the id kept with an export, or passed as ``expected_genesis``, reveals it.

``‖`` is byte concatenation of the previous hash as 64 lowercase hex characters (ASCII) and the envelope.
The envelope is the record without its two hashes::

    {"body": {...}, "caller": str | null, "created_at": "2025-01-31T12:00:00.123456+00:00",
     "id": str, "model_name": str, "model_sha256": str, "model_version": str, "seq": int}

A writer that only learns ``seq``, ``created_at`` and the previous hash inside the database (PostgreSQL's
append function, see :mod:`.store`) concatenates the text of :meth:`RawRecord.envelope_parts` around them;
the walk below recomputes every hash from parsed content, so the two forms are checked against each other.

:func:`canonical_json` is orjson with sorted keys and no whitespace (UTF-8); the ``body`` column stores
exactly ``canonical_json(body)``, so a record's stored text is itself part of what is checked. It is the
same form as :func:`explain_service.explainers.base.canonical_json`, kept here on purpose: stored hashes
must not change when the explainers' helper does, and hashing must not import the explainers' libraries.

:func:`walk_chain` streams rows in ``seq`` order and stops at the first record that does not fit, naming
why: ``edited`` (its content or hashes changed), ``deleted`` (a record is missing), ``reordered`` (a
record sits at the wrong position) or ``inserted`` (a record does not belong to the chain). Deleting the
newest records leaves a shorter chain that is valid on its own; only a head hash kept elsewhere (an
export's trailer, a log line) reveals that, which is what ``expected_head`` is for: a head that is not
in the chain at all is ``head_not_found`` (records deleted, or a head mistyped or of another chain).
A chain whose genesis is not the one expected is ``restarted``.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

GENESIS_HASH = "0" * 64
"""Where a chain made before genesis records existed starts (format ``explain-service.audit/1``)."""
LEGACY_FORMAT = "explain-service.audit/1"
CHAIN_FORMAT = "explain-service.audit/2"
CHAIN_ID_PATTERN = re.compile(r"[0-9a-f]{32}")
HASH_PATTERN = re.compile(r"[0-9a-f]{64}")

Reason = Literal["edited", "deleted", "reordered", "inserted", "restarted", "head_not_found"]
Locator = Callable[[str], "tuple[int, str] | None"]
"""Find a record by its hash: ``(seq, id)`` or None."""

_RECENT = 1024  # records remembered behind the walk, to name an inserted record

_id_lock = threading.Lock()
_last_millis, _last_counter = 0, 0


def canonical_json(value: Any) -> bytes:
    """Stable JSON bytes: sorted keys, no whitespace, numpy values as plain numbers."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY)


def utc_text(moment: datetime) -> str:
    """UTC ISO-8601 with microseconds: the one text form of time in the store (it sorts as it reads)."""
    if moment.tzinfo is None:
        raise ValueError("audit times must be timezone-aware")
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def new_record_id() -> str:
    """A UUIDv7 as 32 hex characters, increasing within a process.

    48 bits of Unix milliseconds, then a 12-bit counter that starts at a random value below 2048 each
    millisecond and steps by one within it (RFC 9562, method 1), then 62 random bits.
    """
    global _last_millis, _last_counter
    with _id_lock:
        millis = time.time_ns() // 1_000_000
        if millis > _last_millis:
            counter = int.from_bytes(os.urandom(2), "big") & 0x7FF
        else:
            millis, counter = _last_millis, _last_counter + 1
            if counter > 0xFFF:
                millis, counter = millis + 1, 0
        _last_millis, _last_counter = millis, counter
    rand_b = int.from_bytes(os.urandom(8), "big") & (1 << 62) - 1
    return f"{(millis & (1 << 48) - 1) << 80 | 0x7 << 76 | counter << 64 | 0b10 << 62 | rand_b:032x}"


def genesis_hash(chain_id: str, created_at: str) -> str:
    """The hash the first record of the chain ``chain_id``, created at ``created_at``, follows."""
    genesis = {"chain_id": chain_id, "created_at": created_at, "format": CHAIN_FORMAT}
    return hashlib.sha256(canonical_json(genesis)).hexdigest()


@dataclass(frozen=True, slots=True)
class Genesis:
    """Where a chain starts: a random id, the time its store was made, the hash its first record follows."""

    chain_id: str
    created_at: str
    hash: str

    @classmethod
    def new(cls) -> Genesis:
        """A genesis for a new chain."""
        chain_id, created_at = os.urandom(16).hex(), utc_text(datetime.now(UTC))
        return cls(chain_id, created_at, genesis_hash(chain_id, created_at))

    @classmethod
    def from_dict(cls, value: Any) -> Genesis | None:
        """A genesis from its JSON form (an export trailer); None if ``value`` is not one."""
        if not isinstance(value, dict) or set(value) != {"chain_id", "created_at", "hash"}:
            return None
        if not all(isinstance(v, str) for v in value.values()):
            return None
        return cls(value["chain_id"], value["created_at"], value["hash"])

    @property
    def legacy(self) -> bool:
        """Whether the chain was made before genesis records existed, and so starts at GENESIS_HASH."""
        return self.hash == GENESIS_HASH

    def consistent(self) -> bool:
        """Whether ``hash`` is the one derived from the id and time (or the legacy start)."""
        return self.legacy or self.hash == genesis_hash(self.chain_id, self.created_at)

    def to_dict(self) -> dict[str, str]:
        """JSON-ready form, as in an export's trailer."""
        return {"chain_id": self.chain_id, "created_at": self.created_at, "hash": self.hash}


def chain_hash(prev_hash: str, envelope: dict[str, Any]) -> str:
    """The hash sealing ``envelope`` onto the record whose hash is ``prev_hash``."""
    return hashlib.sha256(prev_hash.encode() + canonical_json(envelope)).hexdigest()


@dataclass(frozen=True, slots=True)
class RawRecord:
    """A record exactly as stored: ``created_at`` and ``body`` as the text that was hashed."""

    seq: int
    id: str
    created_at: str
    model_name: str
    model_version: str
    model_sha256: str
    caller: str | None
    body: str
    prev_hash: str
    hash: str

    def content_hash(self, *, prev_hash: str | None = None) -> str | None:
        """Recompute this record's hash (on ``prev_hash`` if given); None if ``body`` is not canonical."""
        try:
            body = orjson.loads(self.body)
        except orjson.JSONDecodeError:
            return None
        if canonical_json(body).decode() != self.body:
            return None
        envelope = {
            "id": self.id,
            "seq": self.seq,
            "created_at": self.created_at,
            "model_name": self.model_name,
            "model_version": self.model_version,
            "model_sha256": self.model_sha256,
            "caller": self.caller,
            "body": body,
        }
        return chain_hash(self.prev_hash if prev_hash is None else prev_hash, envelope)

    def sealed(self) -> RawRecord:
        """This record with ``hash`` computed from its content and ``prev_hash``."""
        digest = self.content_hash()
        if digest is None:
            raise ValueError(f"the body of record {self.id} is not canonical JSON")
        return replace(self, hash=digest)

    def text_hash(self) -> str:
        """The hash of this record, from its text as it stands: ``body`` must be canonical JSON already.

        The same value as :meth:`content_hash` for such a body, without parsing it back (the writer's
        form, :meth:`envelope_parts`); the walk recomputes every hash from parsed content, so a body
        that is not canonical fails verification instead of passing unnoticed.
        """
        middle, tail = self.envelope_parts()
        envelope = f'{{"body":{self.body}{middle}{self.created_at}{tail}{self.seq}}}'
        return hashlib.sha256(self.prev_hash.encode() + envelope.encode()).hexdigest()

    def envelope_parts(self) -> tuple[str, str]:
        """The canonical envelope around ``created_at`` and ``seq``, for a writer that learns them later.

        Returns ``(middle, tail)`` such that, whatever ``created_at`` and ``seq`` the record gets,
        ``'{"body":' + body + middle + created_at + tail + str(seq) + "}"`` is ``canonical_json`` of its
        envelope (``body`` being canonical JSON already). Sorted, the keys run body, caller, created_at,
        id, model_name, model_sha256, model_version, seq; ``created_at`` never needs escaping.
        """
        caller = canonical_json(self.caller).decode()
        rest = {
            "id": self.id,
            "model_name": self.model_name,
            "model_sha256": self.model_sha256,
            "model_version": self.model_version,
        }
        return f',"caller":{caller},"created_at":"', f'",{canonical_json(rest).decode()[1:-1]},"seq":'


@dataclass(frozen=True)
class AuditEntry:
    """One record to append: the caller's JSON-ready body and the model it is about.

    ``id`` may be given (1-64 characters of ``A-Z a-z 0-9 . _ -``, starting with a letter or digit);
    otherwise the store picks a time-ordered one (:func:`new_record_id`).
    """

    body: Mapping[str, Any]
    model_name: str
    model_version: str
    model_sha256: str
    caller: str | None = None
    id: str | None = None


@dataclass(frozen=True)
class StoredRecord:
    """A record as stored, with ``body`` parsed back and ``created_at`` as an aware UTC datetime."""

    seq: int
    id: str
    created_at: datetime
    model_name: str
    model_version: str
    model_sha256: str
    caller: str | None
    body: dict[str, Any]
    prev_hash: str
    hash: str

    @classmethod
    def from_raw(cls, raw: RawRecord) -> StoredRecord:
        """Parse a stored row."""
        values = {field.name: getattr(raw, field.name) for field in fields(raw)}
        body = orjson.loads(raw.body)
        return cls(**{**values, "created_at": datetime.fromisoformat(raw.created_at), "body": body})

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; the same keys and values as an export line."""
        values = {field.name: getattr(self, field.name) for field in fields(self)}
        return {**values, "created_at": utc_text(self.created_at)}


@dataclass(frozen=True)
class VerifyReport:
    """Outcome of a chain walk.

    ``checked``, ``head_seq`` and ``head_hash`` describe the verified prefix: the whole chain when ``ok``,
    the records before the first bad one otherwise (``0`` and the genesis hash for none). When not
    ``ok``, ``first_bad_seq`` is the position where the chain breaks and ``first_bad_id`` the record found
    there (None when that record is gone). ``chain_id`` names the chain's genesis (None when unknown).
    """

    ok: bool
    checked: int
    head_seq: int
    head_hash: str
    first_bad_seq: int | None = None
    first_bad_id: str | None = None
    reason: Reason | None = None
    detail: str = ""
    chain_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


@dataclass(frozen=True)
class _Fault:
    seq: int
    id: str | None
    reason: Reason
    detail: str


def walk_chain(
    rows: Iterable[RawRecord],
    *,
    locate: Locator | None = None,
    expected_head: str | None = None,
    start_hash: str | None = GENESIS_HASH,
) -> VerifyReport:
    """Check ``rows`` (in ``seq`` order, streamed) and report the first record that breaks the chain.

    Parameters
    ----------
    rows
        Every stored record, ordered by ``seq``. Read once, one row ahead of the record being checked.
    locate
        Finds a record by hash anywhere in the chain; used only after a break, to tell a reordered or
        inserted record from a deleted one. Without it, those cases are reported as ``deleted``.
    expected_head
        A head hash recorded earlier (e.g. an export's trailer). The walk fails with ``head_not_found``
        unless a record with this hash (or the start itself) is part of the verified chain.
    start_hash
        The hash the first record must follow: its genesis hash. None takes the first record's
        ``prev_hash`` as given, for a caller that learns the genesis later (an export's trailer) and
        checks it then; the report's ``head_hash`` of an empty chain is then :data:`GENESIS_HASH`.
    """
    it = iter(rows)
    prev_hash, seq, checked = start_hash, 1, 0
    recent: deque[tuple[int, str]] = deque(maxlen=_RECENT)
    head_seen = expected_head is None or expected_head == start_hash
    for row in it:
        if prev_hash is None:
            prev_hash = row.prev_hash if row.seq == 1 else GENESIS_HASH
            head_seen = head_seen or expected_head == prev_hash
        if row.seq == seq and row.prev_hash == prev_hash and row.content_hash() == row.hash:
            head_seen = head_seen or row.hash == expected_head
            recent.append((row.seq, row.id))
            prev_hash, seq, checked = row.hash, seq + 1, checked + 1
            continue
        fault = _diagnose(row, next(it, None), seq, prev_hash, recent, locate)
        return VerifyReport(
            False, checked, seq - 1, prev_hash, fault.seq, fault.id, fault.reason, fault.detail
        )
    head = GENESIS_HASH if prev_hash is None else prev_hash
    if not head_seen:
        detail = (
            f"the expected head {expected_head} is not in the chain of {checked} records: records after "
            f"seq {seq - 1} were deleted, or the head was mistyped or belongs to another chain"
        )
        return VerifyReport(False, checked, seq - 1, head, seq, None, "head_not_found", detail)
    return VerifyReport(True, checked, seq - 1, head)


def _diagnose(
    row: RawRecord,
    nxt: RawRecord | None,
    seq: int,
    prev_hash: str,
    recent: deque[tuple[int, str]],
    locate: Locator | None,
) -> _Fault:
    """Why ``row`` does not continue a chain whose next record should be ``seq`` on ``prev_hash``."""
    if row.seq < seq:
        return _Fault(row.seq, row.id, "inserted", f"a second record claims seq {row.seq}")
    found = locate(row.prev_hash) if locate is not None and row.prev_hash != prev_hash else None
    if row.seq > seq:
        if row.prev_hash == prev_hash:
            return _Fault(seq, row.id, "edited", f"record {row.id} carries seq {row.seq}, expected {seq}")
        if found is not None and found[0] >= seq:
            detail = f"record {found[1]} (seq {found[0]}) is not where the chain expects it"
            return _Fault(seq, found[1], "reordered", detail)
        missing = f"record {seq} is" if row.seq == seq + 1 else f"records {seq}..{row.seq - 1} are"
        return _Fault(seq, None, "deleted", f"{missing} missing")
    if row.prev_hash == prev_hash:
        if nxt is not None and nxt.prev_hash == prev_hash:
            detail = f"record {row.id} and the record after it both claim to follow seq {seq - 1}"
            return _Fault(seq, row.id, "inserted", detail)
        if nxt is not None and nxt.prev_hash == row.hash:
            detail = f"the content of record {row.id} no longer matches its hash"
        elif nxt is not None:
            detail = f"the hash of record {row.id} was changed"
        else:
            detail = f"the content or hash of record {row.id} was changed"
        return _Fault(seq, row.id, "edited", detail)
    if row.content_hash(prev_hash=prev_hash) == row.hash:
        return _Fault(seq, row.id, "edited", f"the prev_hash of record {row.id} was changed")
    if found is not None and found[0] > seq:
        return _Fault(seq, row.id, "reordered", f"record {row.id} belongs after seq {found[0]}")
    if found is not None and found[0] < seq - 1:
        first = found[0] + 1
        first_id = next((rid for rseq, rid in recent if rseq == first), None)
        detail = f"records {first}..{seq - 1} do not belong: record {row.id} follows seq {found[0]}"
        return _Fault(first, first_id, "inserted", detail)
    if nxt is not None and nxt.prev_hash == prev_hash:
        detail = f"record {row.id} does not belong: the record after it follows seq {seq - 1}"
        return _Fault(seq, row.id, "inserted", detail)
    if seq == 1 and found is None:
        detail = f"record {row.id} does not follow the chain's genesis: the genesis or the record was changed"
        return _Fault(seq, row.id, "edited", detail)
    if found is None:
        detail = f"record {row.id} follows a record that is gone; the records after it were renumbered"
        return _Fault(seq, None, "deleted", detail)
    return _Fault(seq, row.id, "edited", f"record {row.id} does not fit after seq {seq - 1}")
