"""The key that signs the reviewers' session cookies, the same in every worker and on every host.

``EXPLAIN_SECRET_KEY`` wins when set (at least 32 characters). Otherwise the key is generated once and
kept in the audit database, in a one-row-per-name table next to the API keys::

    service_secrets
    name (primary key) │ value │ created_at

Every worker inserts a fresh random value only if no row exists yet (``INSERT ... ON CONFLICT DO
NOTHING``) and then reads the row back, so workers that start together agree on the first one written.
Anyone who can read the database can forge a session; set ``EXPLAIN_SECRET_KEY`` from a secret store
where the database is shared more widely than the service.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Column, Engine, MetaData, String, Table, create_engine, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url

from explain_service.audit.backends import create_tables
from explain_service.audit.chain import utc_text

MIN_LENGTH = 32
SESSION_SECRET = "review_session"

metadata = MetaData()
service_secrets = Table(
    "service_secrets",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", String(128), nullable=False),
    Column("created_at", String(32), nullable=False),
)


class SecretKeyError(ValueError):
    """``EXPLAIN_SECRET_KEY`` is set but too short to sign anything safely."""


def check_configured(configured: str) -> None:
    """Refuse a configured secret too short to sign with (at app start, not on the first request)."""
    if configured and len(configured) < MIN_LENGTH:
        raise SecretKeyError(f"EXPLAIN_SECRET_KEY must be at least {MIN_LENGTH} characters")


def session_secret(configured: str, database_url: str) -> str:
    """The configured secret, or the one kept in the database (created on first use)."""
    if configured:
        check_configured(configured)
        return configured
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite" and url.database and not url.query.get("uri"):
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 30} if url.get_backend_name() == "sqlite" else {})
    try:
        return stored_secret(engine, SESSION_SECRET)
    finally:
        engine.dispose()


def stored_secret(engine: Engine, name: str) -> str:
    """The secret ``name`` from ``engine``'s database, written first by whichever process came first."""
    create_tables(engine, metadata)
    dialect = engine.dialect.name
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    row = {"name": name, "value": secrets.token_urlsafe(48), "created_at": utc_text(datetime.now(UTC))}
    with engine.begin() as conn:
        conn.execute(insert(service_secrets).values(**row).on_conflict_do_nothing(index_elements=["name"]))
        value = conn.execute(
            select(service_secrets.c.value).where(service_secrets.c.name == name)
        ).scalar_one()
    return str(value)
