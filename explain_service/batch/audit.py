"""Audit records of a batch job, stored by the driver exactly once per explained row.

Workers build each row's audit entry as the API would (see ``compute._audited_columns``),
with the id ``b<job>-<row>``: ``<job>`` hashes the job's identity, ``<row>`` is the 0-based
input row. The driver appends a chunk's entries in one transaction before it commits the
chunk, and skips chunks whose first entry is already stored, so a chunk computed again after
a crash, or a job run again, adds nothing.
"""

from __future__ import annotations

import dataclasses
from typing import Any

AUDIT_CALLER = "batch"


class AuditRefused(Exception):
    """The audit store cannot be used (the message says why)."""


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


def append_once(store: Any, entries: list[Any]) -> None:
    """Append one chunk's audit entries unless an earlier, interrupted run already did.

    A chunk's entries are appended in one transaction with ids fixed by the job and the
    input row, so finding the first one means the whole chunk is stored.
    """
    if entries and store.get(entries[0].id) is None:
        store.append(entries)


def audit_id(job: str, row: int) -> str:
    """The audit record id of input row ``row`` of a job: the same on every run of that job."""
    return f"b{job}-{row}"


class CapturingRecorder:
    """Builds the audit entries of one service call with fixed ids; the driver stores them."""

    def __init__(self, ids: list[str]) -> None:
        self.ids = ids
        self.entries: list[Any] = []

    def record(self, model: Any, entries: list[dict[str, Any]], caller: str | None) -> list[str]:
        from explain_service.audit.recorder import entry_for

        self.entries = [
            dataclasses.replace(entry_for(model, e["instance"], e["explanation"], e["request"], caller), id=i)
            for e, i in zip(entries, self.ids, strict=True)
        ]
        return list(self.ids)
