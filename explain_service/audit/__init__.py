"""The tamper-evident audit trail: every explanation as a hash-chained, append-only record.

:mod:`.store` keeps records in SQLite or PostgreSQL, :mod:`.chain` defines the hashes and checks them,
:mod:`.jsonl` writes and checks exports. No Flask here; the web layers reach the store through the app.
"""

from __future__ import annotations

from explain_service.audit.chain import GENESIS_HASH, Genesis, VerifyReport, new_record_id
from explain_service.audit.jsonl import verify_export
from explain_service.audit.store import (
    AuditEntry,
    AuditError,
    AuditStore,
    AuditUnavailableError,
    AuditWriteError,
    RecordNotFound,
    RecordTooLarge,
    StoredRecord,
)

__all__ = [
    "GENESIS_HASH",
    "AuditEntry",
    "AuditError",
    "AuditStore",
    "AuditUnavailableError",
    "AuditWriteError",
    "Genesis",
    "RecordNotFound",
    "RecordTooLarge",
    "StoredRecord",
    "VerifyReport",
    "new_record_id",
    "verify_export",
]
