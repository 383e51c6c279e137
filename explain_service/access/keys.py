"""API keys, stored next to the audit trail so every worker and host sees one set.

::

    api_keys
    id │ name (unique) │ role │ key_sha256 (unique) │ created_at │ last_used_at │ revoked_at

A key is ``xsk_`` followed by 43 URL-safe characters from :func:`secrets.token_urlsafe` (256 random
bits). Only its SHA-256 is stored: a stolen table grants nothing, and a plain hash is enough because
the key is a random token, not a password (no dictionary to try). A presented key is found by its hash
through the unique index and then compared with :func:`hmac.compare_digest`.

The table is defined with the audit schema (:data:`.audit.schema.api_keys`) and reached through the
audit store's engine. Each worker caches a lookup (found or not) for at most :data:`CACHE_SECONDS`, so
a revoked key is refused everywhere within that time plus one database round trip. ``last_used_at`` is
written at most once a minute per key and worker: a cheap hint for ``keys list``, not an access log
(the audit records name their key in ``caller``).

Creating and revoking a key are audit-chain records (``{"kind": "access", "event": "key.created" |
"key.revoked", "name", "role", "by"}``), so who was granted access is as tamper-evident as what was
explained. A key whose creation cannot be recorded is deleted before anyone has seen it; a revocation
stands even when its record cannot be written (the command then fails, saying so).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from explain_service.audit.chain import utc_text
from explain_service.audit.errors import AuditError
from explain_service.audit.schema import api_keys
from explain_service.audit.store import AuditEntry, AuditStore, AuditWriteError

ROLES = ("explain", "review", "admin")
KEY_PREFIX = "xsk_"
CACHE_SECONDS = 1.0
TOUCH_SECONDS = 60.0
_CACHE_SIZE = 4096
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
# Callers that are not keys: batch jobs recorded as "batch" before they became "(batch)". A key with such
# a name would own, and could read, every record they wrote.
RESERVED_NAMES = frozenset({"batch"})


class KeyAdminError(Exception):
    """A key cannot be created or revoked as asked (the message says why)."""


@dataclass(frozen=True)
class ApiKey:
    """A stored key, without its secret."""

    name: str
    role: str
    created_at: str
    last_used_at: str | None = None
    revoked_at: str | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def key_hash(key: str) -> str:
    """The stored form of a key."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def new_key() -> str:
    """A fresh random key."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def _now() -> str:
    return utc_text(datetime.now(UTC))


class KeyStore:
    """API keys in the audit database (SQLite or PostgreSQL), with a short per-process lookup cache.

    The keys live on the audit store's own engine (:meth:`.AuditStore.connection`): one engine per
    process, the same fork handling, schema creation and SQLite file-identity check as the chain. A
    URL opens a store of its own (the command line); the service passes its store. Nothing touches the
    database until the first call, so an unusable store surfaces there, as an :class:`.AuditError`.
    """

    def __init__(self, audit: AuditStore | str) -> None:
        self.audit = audit if isinstance(audit, AuditStore) else AuditStore(audit)
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, ApiKey | None]] = {}
        self._touched: dict[str, float] = {}

    def close(self) -> None:
        self.audit.close()

    # -- administration ---------------------------------------------------------------------------
    def create(self, name: str, role: str, *, by: str = "cli") -> str:
        """Store a new key named ``name`` with ``role``; return the key (shown once, never stored)."""
        if role not in ROLES:
            raise KeyAdminError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise KeyAdminError(
                "a key name is 1-64 letters, digits and . _ @ -, starting with a letter or digit"
            )
        if name.lower() in RESERVED_NAMES:
            raise KeyAdminError(f"the key name {name!r} is reserved (batch jobs' records name it as caller)")
        key = new_key()
        row = {"name": name, "role": role, "key_sha256": key_hash(key), "created_at": _now()}
        try:
            with self.audit.connection(write=True) as conn:
                conn.execute(insert(api_keys).values(**row))
        except IntegrityError:
            raise KeyAdminError(f"a key named {name!r} exists already (names are never reused)") from None
        try:
            self._record("key.created", name, role, by)
        except KeyAdminError:
            # Nobody has seen the key yet: without its audit record it must not exist.
            with self.audit.connection(write=True) as conn:
                conn.execute(delete(api_keys).where(api_keys.c.name == name))
            raise
        return key

    def revoke(self, name: str, *, by: str = "cli") -> ApiKey:
        """Revoke the key ``name``; refused by every worker within :data:`CACHE_SECONDS` plus a lookup."""
        with self.audit.connection(write=True) as conn:
            row = conn.execute(select(api_keys).where(api_keys.c.name == name)).first()
            if row is None:
                raise KeyAdminError(f"no key named {name!r}")
            if row.revoked_at is not None:
                raise KeyAdminError(f"key {name!r} was revoked at {row.revoked_at}")
            conn.execute(update(api_keys).where(api_keys.c.id == row.id).values(revoked_at=_now()))
        self._cache.clear()
        # The revocation stands even if its record cannot be written: refusing access is the safe side.
        self._record("key.revoked", name, row.role, by)
        revoked = self.get(name)
        assert revoked is not None
        return revoked

    def list(self) -> list[ApiKey]:
        """Every key, oldest first."""
        with self.audit.connection() as conn:
            rows = conn.execute(select(api_keys).order_by(api_keys.c.id)).all()
        return [_key(row) for row in rows]

    def get(self, name: str) -> ApiKey | None:
        """The key named ``name`` (revoked or not), or None."""
        with self.audit.connection() as conn:
            row = conn.execute(select(api_keys).where(api_keys.c.name == name)).first()
        return None if row is None else _key(row)

    # -- the request path -------------------------------------------------------------------------
    def authenticate(self, presented: str) -> ApiKey | None:
        """The active key ``presented`` is, or None; cached per process for at most a second.

        Raises :class:`.AuditError` or :class:`~sqlalchemy.exc.SQLAlchemyError` when the database
        cannot say (the caller answers 503, never lets the key in).
        """
        if not presented.startswith(KEY_PREFIX) or len(presented) > 128:
            return None
        digest = key_hash(presented)
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and now - cached[0] < CACHE_SECONDS:
            return cached[1]
        found = self._lookup(digest)
        with self._lock:
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.clear()
            self._cache[digest] = (now, found)
        if found is not None:
            self._touch(found.name, now)
        return found

    def _lookup(self, digest: str) -> ApiKey | None:
        with self.audit.connection() as conn:
            row = conn.execute(select(api_keys).where(api_keys.c.key_sha256 == digest)).first()
        if row is None or not hmac.compare_digest(row.key_sha256, digest) or row.revoked_at is not None:
            return None
        return _key(row)

    def _touch(self, name: str, now: float) -> None:
        if now - self._touched.get(name, -TOUCH_SECONDS) < TOUCH_SECONDS:
            return
        self._touched[name] = now
        moment = datetime.now(UTC)
        stale = utc_text(moment - timedelta(seconds=TOUCH_SECONDS))
        try:
            with self.audit.connection(write=True) as conn:
                conn.execute(
                    update(api_keys)
                    .where(api_keys.c.name == name)
                    .where((api_keys.c.last_used_at.is_(None)) | (api_keys.c.last_used_at < stale))
                    .values(last_used_at=utc_text(moment))
                )
        except (SQLAlchemyError, AuditError):
            pass  # a hint for ``keys list``; never a reason to refuse a request

    # -- internals --------------------------------------------------------------------------------
    def _record(self, event: str, name: str, role: str, by: str) -> None:
        body: dict[str, Any] = {"kind": "access", "event": event, "name": name, "role": role, "by": by}
        entry = AuditEntry(body=body, model_name="-", model_version="-", model_sha256="-", caller=by)
        try:
            self.audit.append([entry])
        except AuditWriteError as exc:
            raise KeyAdminError(f"the audit record of {event} could not be written: {exc.reason}") from None


def _key(row: Any) -> ApiKey:
    return ApiKey(
        name=row.name,
        role=row.role,
        created_at=row.created_at,
        last_used_at=row.last_used_at,
        revoked_at=row.revoked_at,
    )
