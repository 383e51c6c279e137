"""Audit records of a batch job, stored by the driver exactly once per explained row.

Workers build each row's audit entry as the API would (see ``compute._audited_columns``) and
the driver appends a chunk's entries in one transaction before it commits the chunk.

Record ids are unguessable and reproducible within a job::

    id(row) = "b" + hex(HMAC-SHA256(key, "row:<row>"))[:32]      (128 bits)

``<row>`` is the 0-based input row and ``key`` 32 random bytes drawn when the job starts and
kept only in its parts directory (``OUT.parquet.parts/audit.key``, mode 0600), which is removed
with the rest of the parts when the job finishes. Without the key one id says nothing about
any other, so holding one record's id does not lead to its neighbours; with it, a resumed job
gives every row the id it had before, and a chunk whose first entry is already stored (it was
appended just before a crash) is not appended again. The output's ``audit_id`` column is how a
user maps rows to records. Running a finished job again is a new job with a new key: its rows
get new records, and the trail shows both runs. The key travels in the chunk plan to wherever
chunks are computed (worker processes, Dask workers), which run the job's code and see its rows
anyway; it is never written anywhere else.

A job with ``--audit`` obeys the stop button (:mod:`explain_service.audit.suspensions`) of its store:
it does not start while its model or version is suspended, and a suspension made while it runs stops it
before the next chunk's records are stored (the chunks committed so far are kept for ``--resume``). With
``--route-reviews`` its records carry the model's review routing, as the API's do, so flagged rows join
the reviewers' queue; without it ``review`` is null (not evaluated), as a whole data set could flood it.

Each record's body carries ``"batch": {"job", "row", "ids"}``: the job's id (a hash of its
identity), the input row and the values of the ``--id-columns`` for that row, so a reviewer
reading a record finds the caller's own ids without the output file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import math
import secrets
from collections.abc import Sequence
from datetime import date, datetime, time
from typing import Any

# The records' caller: a batch job holds no API key, and this name is one no key can have (key names
# are letters, digits and ``._@-``), so no ``explain`` key ever owns, and can read, a job's records.
AUDIT_CALLER = "(batch)"
AUDIT_KEY_BYTES = 32
AUDIT_ID_HEX = 32


class AuditRefused(Exception):
    """The audit store cannot be used (the message says why)."""


class ModelStopped(Exception):
    """The job's model is suspended in its audit store (the message names who, when and why)."""


def audit_ref(url: str | None) -> str | None:
    """The audit database in the job identity, without its password."""
    if url is None:
        return None
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        raise AuditRefused("the audit database URL is not a database URL") from None


def open_audit_store(url: str) -> Any:
    """The audit store at ``url``; refuses the job when it cannot be reached."""
    from explain_service.audit import AuditError, AuditStore

    try:
        store = AuditStore(url)
        if store.ping():
            return store
    except (AuditError, ValueError) as exc:
        raise AuditRefused(f"audit store {audit_ref(url)} is not usable: {exc}") from None
    raise AuditRefused(f"audit store {audit_ref(url)} cannot be reached")


def refuse_if_suspended(suspensions: Any, name: str, version: str, when: str) -> None:
    """Raise :class:`ModelStopped` if ``name@version`` (or the whole model) is suspended; ``when`` says
    what is refused ("this job cannot start", say)."""
    found = suspensions.active(name, version)
    if found is not None:
        what = name if found.scope == "model" else f"{name}@{version}"
        by = f" by {found.by}" if found.by else ""
        raise ModelStopped(f"{what} is suspended{by} since {found.since} ({found.reason}): {when}")


def append_once(store: Any, entries: list[Any]) -> None:
    """Append one chunk's audit entries unless an earlier, interrupted run already did.

    A chunk's entries are appended in one transaction with ids fixed by the job's key and the
    input row, so finding the first one means the whole chunk is stored.
    """
    if entries and store.get(entries[0].id) is None:
        store.append(entries)


def new_audit_key() -> str:
    """A fresh job key (hex), drawn from the operating system's CSPRNG."""
    return secrets.token_hex(AUDIT_KEY_BYTES)


def audit_id(key: str, row: int) -> str:
    """The audit record id of input row ``row`` of the job whose key is ``key``."""
    mac = hmac.new(bytes.fromhex(key), f"row:{row}".encode(), hashlib.sha256)
    return "b" + mac.hexdigest()[:AUDIT_ID_HEX]


def id_value(value: Any) -> Any:
    """An id cell as JSON: text, integers and booleans as they are; NaN as null; dates as ISO text."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


@dataclasses.dataclass(frozen=True)
class RowRef:
    """Where a record's row came from: the job, the 0-based input row and the caller's ids."""

    job: str
    row: int
    ids: dict[str, Any]

    def body(self) -> dict[str, Any]:
        return {"job": self.job, "row": self.row, "ids": self.ids}


class CapturingRecorder:
    """Builds the audit entries of one service call with fixed ids; the driver stores them."""

    def __init__(self, ids: Sequence[str], rows: Sequence[RowRef], *, route: bool = False) -> None:
        self.ids = list(ids)
        self.rows = list(rows)
        self.route = route
        self.entries: list[Any] = []

    def record(self, model: Any, entries: list[dict[str, Any]], caller: str | None) -> list[str]:
        from explain_service.audit.recorder import entry_for

        out = []
        for e, i, ref in zip(entries, self.ids, self.rows, strict=True):
            review = e.get("review") if self.route else None
            entry = entry_for(model, e["instance"], e["explanation"], e["request"], caller, review=review)
            out.append(dataclasses.replace(entry, id=i, body={**entry.body, "batch": ref.body()}))
        self.entries = out
        return list(self.ids)
