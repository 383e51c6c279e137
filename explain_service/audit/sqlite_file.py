"""Which file a SQLite connection writes, and whether it is still the file at the database's path.

A SQLite connection keeps its file open. Remove the database (or its whole directory) while the service
runs and every pooled connection goes on writing to the unlinked file: appends succeed, answers go out,
and the records vanish with the last close; the next start makes an empty file, a new chain at seq 1.

So each connection notes the identity ``(st_dev, st_ino)`` of the file at the path when it opens it,
and the store remembers the first identity it saw. Before an append (one ``stat``), the path must still
name that file; otherwise the store refuses to write until it is restarted. A file moved back into
place has its old identity and is accepted again; a copy restored from a backup is another file.
"""

from __future__ import annotations

import os
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.engine import URL

FileIdentity = tuple[int, int]
_INFO_KEY = "audit_file_identity"


def sqlite_path(url: URL) -> str | None:
    """The database file a SQLite URL names (``file:`` URIs included); None for none."""
    if not url.database:
        return None
    path = url.database.removeprefix("file:") if url.query.get("uri") else url.database
    return path.partition("?")[0]


def identity(path: str) -> FileIdentity | None:
    """``(st_dev, st_ino)`` of the file at ``path``; None when there is none."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def track_identity(engine: Engine, path: str) -> None:
    """Note, on every new connection of ``engine``, the identity of the file at ``path`` as it opens it."""

    @event.listens_for(engine, "connect")
    def _note(_dbapi_connection: Any, record: Any) -> None:
        record.info[_INFO_KEY] = identity(path)


def connection_identity(info: dict[Any, Any]) -> FileIdentity | None:
    """The identity a connection noted when it opened (from its ``info``)."""
    value = info.get(_INFO_KEY)
    return None if value is None else (int(value[0]), int(value[1]))
