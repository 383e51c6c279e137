"""The audit store's tables, the triggers that keep them append-only, and PostgreSQL's append function.

One table holds the records; nothing ever updates or deletes a row::

    audit_records                                     audit_schema_version
    seq │ id │ created_at │ model_name │ model_version   version │ chain_format │ created_at
        │ model_sha256 │ caller │ body │ prev_hash │ hash
                                                      audit_genesis (one row, written with the schema)
                                                      chain_id │ created_at │ hash

    api_keys (beside the chain, not part of it: :mod:`explain_service.access.keys`)
    id │ name (unique) │ role │ key_sha256 (unique) │ created_at │ last_used_at │ revoked_at

``body`` is the caller's JSON-ready dict as canonical JSON text, ``created_at`` UTC ISO-8601 text with
microseconds (so it sorts and hashes as written), and each ``hash`` seals the record onto the one before
it: ``sha256(prev_hash + canonical_json(envelope))`` (see :mod:`.chain`).

``audit_genesis`` names the chain (:class:`.chain.Genesis`): the first record follows its ``hash``.
Schema version 1 had no genesis; :func:`migrate_schema` gives such a chain one whose ``hash`` is the
old start, ``"0" * 64``, and replaces audit_append() by the version that starts at the genesis.

Unique constraints on ``seq``, ``prev_hash`` (no two records may follow the same one, so the chain cannot
fork), ``hash`` and ``id`` make a writer that skipped the chain lock fail instead of forking the chain.
Triggers reject UPDATE and DELETE (and TRUNCATE on PostgreSQL); they stop mistakes, not the database's
owner, which is what the chain is for.

On PostgreSQL an append is one call of the function ``audit_append()``: it waits for the advisory lock
``CHAIN_LOCK_KEY``, reads the head with a snapshot taken after it, stamps ``created_at`` from the
database's clock (one clock for every host), and seals each record as the text the store sends from
:meth:`.chain.RawRecord.envelope_parts` with the head's seq and hash spliced in. The function needs
PostgreSQL 11 or newer (``sha256``) and no privilege beyond INSERT and SELECT on the table, so the
service's role can be denied UPDATE and DELETE. It is created with the schema, and added at the first
append to a database created before it existed (reading never needs it).

``api_keys`` is the one table here that changes in place (a key is revoked, its last use noted); what
happens to a key is also an ``"access"`` record in the chain. It came after schema version 2 without a
new version, as :data:`ADDED_TABLES`: older code ignores it, so a store creates it when it is missing
(:func:`create_schema`, under the chain lock) rather than migrating.

Review events (:mod:`.reviews`) and suspensions are records in this same chain (``kind`` in the body), so
``audit verify`` covers them; the reviewers' searchable index is derived from the chain into tables of its
own (:mod:`.index_tables`, :mod:`.projections`). This table never changes for them.
"""

from __future__ import annotations

from dataclasses import fields
from datetime import UTC, datetime
from operator import attrgetter
from typing import Any

from sqlalchemy import (
    DDL,
    BigInteger,
    CheckConstraint,
    Column,
    ColumnElement,
    Connection,
    Index,
    Integer,
    MetaData,
    Row,
    String,
    Table,
    Text,
    event,
    func,
    insert,
    inspect,
    select,
)

from explain_service.audit.chain import CHAIN_FORMAT, GENESIS_HASH, Genesis, RawRecord, utc_text

SCHEMA_VERSION = 2
CHAIN_LOCK_KEY = 0x6175646974636861  # b"auditcha": one fixed advisory-lock key shared by every writer

metadata = MetaData(
    naming_convention={
        "pk": "pk_%(table_name)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
    }
)

records = Table(
    "audit_records",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("id", String(64), nullable=False, unique=True),
    Column("created_at", String(32), nullable=False),
    Column("model_name", String, nullable=False),
    Column("model_version", String, nullable=False),
    Column("model_sha256", String, nullable=False),
    Column("caller", String, nullable=True),
    Column("body", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False, unique=True),
    Column("hash", String(64), nullable=False, unique=True),
    CheckConstraint("seq >= 1", name="seq_positive"),
    Index("ix_audit_records_model_name_seq", "model_name", "seq"),
    Index("ix_audit_records_created_at", "created_at"),
)

schema_version = Table(
    "audit_schema_version",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("chain_format", String, nullable=False),
    Column("created_at", String(32), nullable=False),
)

genesis = Table(
    "audit_genesis",
    metadata,
    Column("chain_id", String(32), primary_key=True),
    Column("created_at", String(32), nullable=False),
    Column("hash", String(64), nullable=False),
)

# One batch, one statement. ``entries`` has a row per record, in order: id, model_name, model_version,
# model_sha256, caller, body, then the middle and tail of RawRecord.envelope_parts(). In READ COMMITTED each
# statement in the function sees what was committed before it began, so the head is read under the lock.
PG_APPEND_FUNCTION = f"""
CREATE OR REPLACE FUNCTION audit_append(entries text[][])
RETURNS TABLE (sealed_seq bigint, sealed_created_at text, sealed_prev_hash text, sealed_hash text)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock({CHAIN_LOCK_KEY});
    SELECT r.seq, r.hash INTO sealed_seq, sealed_hash FROM audit_records r ORDER BY r.seq DESC LIMIT 1;
    IF NOT FOUND THEN
        sealed_seq := 0;
        SELECT g.hash INTO STRICT sealed_hash FROM audit_genesis g;
    END IF;
    sealed_created_at := to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"');
    FOR i IN 1 .. array_length(entries, 1) LOOP
        sealed_seq := sealed_seq + 1;
        sealed_prev_hash := sealed_hash;
        sealed_hash := encode(sha256(convert_to(
            sealed_prev_hash || '{{"body":' || entries[i][6] || entries[i][7] || sealed_created_at
                || entries[i][8] || sealed_seq || '}}',
            'UTF8')), 'hex');
        INSERT INTO audit_records (seq, id, created_at, model_name, model_version, model_sha256, caller, body,
                                   prev_hash, hash)
        VALUES (sealed_seq, entries[i][1], sealed_created_at, entries[i][2], entries[i][3], entries[i][4],
                entries[i][5], entries[i][6], sealed_prev_hash, sealed_hash);
        RETURN NEXT;
    END LOOP;
END
$$"""

_REJECT = "the audit tables are append-only"
for _dialect, _statement in [
    ("sqlite", f"CREATE TRIGGER audit_records_no_update BEFORE UPDATE ON audit_records "
               f"BEGIN SELECT RAISE(ABORT, '{_REJECT}'); END"),
    ("sqlite", f"CREATE TRIGGER audit_records_no_delete BEFORE DELETE ON audit_records "
               f"BEGIN SELECT RAISE(ABORT, '{_REJECT}'); END"),
    ("postgresql", f"CREATE OR REPLACE FUNCTION audit_records_reject() RETURNS trigger LANGUAGE plpgsql "
                   f"AS $$ BEGIN RAISE EXCEPTION '{_REJECT}'; END $$"),
    ("postgresql", "CREATE TRIGGER audit_records_no_change BEFORE UPDATE OR DELETE ON audit_records "
                   "FOR EACH ROW EXECUTE FUNCTION audit_records_reject()"),
    ("postgresql", "CREATE TRIGGER audit_records_no_truncate BEFORE TRUNCATE ON audit_records "
                   "FOR EACH STATEMENT EXECUTE FUNCTION audit_records_reject()"),
    ("postgresql", PG_APPEND_FUNCTION),
]:  # fmt: skip
    event.listen(records, "after_create", DDL(_statement).execute_if(dialect=_dialect))
for _dialect, _statement in [
    ("sqlite", f"CREATE TRIGGER audit_genesis_no_update BEFORE UPDATE ON audit_genesis "
               f"BEGIN SELECT RAISE(ABORT, '{_REJECT}'); END"),
    ("sqlite", f"CREATE TRIGGER audit_genesis_no_delete BEFORE DELETE ON audit_genesis "
               f"BEGIN SELECT RAISE(ABORT, '{_REJECT}'); END"),
    ("postgresql", f"CREATE OR REPLACE FUNCTION audit_records_reject() RETURNS trigger LANGUAGE plpgsql "
                   f"AS $$ BEGIN RAISE EXCEPTION '{_REJECT}'; END $$"),
    ("postgresql", "CREATE TRIGGER audit_genesis_no_change BEFORE UPDATE OR DELETE ON audit_genesis "
                   "FOR EACH ROW EXECUTE FUNCTION audit_records_reject()"),
    ("postgresql", "CREATE TRIGGER audit_genesis_no_truncate BEFORE TRUNCATE ON audit_genesis "
                   "FOR EACH STATEMENT EXECUTE FUNCTION audit_records_reject()"),
]:  # fmt: skip
    event.listen(genesis, "after_create", DDL(_statement).execute_if(dialect=_dialect))

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("role", String(16), nullable=False),
    Column("key_sha256", String(64), nullable=False, unique=True),
    Column("created_at", String(32), nullable=False),
    Column("last_used_at", String(32), nullable=True),
    Column("revoked_at", String(32), nullable=True),
)

ADDED_TABLES = (api_keys,)
"""Tables added to the current schema version without a new version; created wherever one is missing."""

COLUMNS = [records.c[field.name] for field in fields(RawRecord)]
NAMES = tuple(field.name for field in fields(RawRecord))
row_values = attrgetter(*NAMES)  # a RawRecord as the tuple of its column values, in table order

HEAD = "SELECT seq, hash FROM audit_records ORDER BY seq DESC LIMIT 1"
GENESIS_START = "SELECT hash FROM audit_genesis"
_PG_APPEND_SIGNATURE = "audit_append(text[])"


def raw_record(row: Row[Any]) -> RawRecord:
    """A row selected as :data:`COLUMNS`, as a record."""
    return RawRecord(**row._mapping)


def record_filters(
    model_name: str | None, since: datetime | None, until: datetime | None
) -> list[ColumnElement[bool]]:
    """WHERE clauses for records of ``model_name`` created in ``[since, until)``; None leaves one out."""
    clauses: list[ColumnElement[bool]] = []
    if model_name is not None:
        clauses.append(records.c.model_name == model_name)
    if since is not None:
        clauses.append(records.c.created_at >= utc_text(since))
    if until is not None:
        clauses.append(records.c.created_at < utc_text(until))
    return clauses


def create_schema(conn: Connection) -> int:
    """Create the schema of a new database with its genesis, recording its version; return the version.

    Run it under the chain lock, so that two processes starting on a new database create it once. A
    database that holds an older schema is migrated instead.
    """
    version = read_schema_version(conn)
    if version is not None:
        if version < SCHEMA_VERSION:
            version = migrate_schema(conn, version)
        missing = missing_tables(conn)
        if missing and version == SCHEMA_VERSION:
            metadata.create_all(conn, tables=missing)
        return version
    metadata.create_all(conn)
    _record_version(conn, SCHEMA_VERSION)
    conn.execute(insert(genesis).values(**Genesis.new().to_dict()))
    return SCHEMA_VERSION


def missing_tables(conn: Connection) -> list[Table]:
    """The :data:`ADDED_TABLES` the database lacks."""
    present = inspect(conn)
    return [table for table in ADDED_TABLES if not present.has_table(table.name)]


def migrate_schema(conn: Connection, version: int) -> int:
    """Bring a schema of ``version`` up to :data:`SCHEMA_VERSION` (under the chain lock); return it.

    1 -> 2: the chain gains a genesis whose hash is where it already starts (``"0" * 64``), and
    PostgreSQL's audit_append() starts an empty chain at the genesis.
    """
    if version < 2:
        metadata.create_all(conn, tables=[genesis])
        first = conn.execute(select(records.c.prev_hash).where(records.c.seq == 1)).scalar()
        start = Genesis.new()
        if first is not None:
            start = Genesis(start.chain_id, start.created_at, GENESIS_HASH)
        conn.execute(insert(genesis).values(**start.to_dict()))
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql(PG_APPEND_FUNCTION)
        _record_version(conn, 2)
    return SCHEMA_VERSION


def _record_version(conn: Connection, version: int) -> None:
    row = {"version": version, "chain_format": CHAIN_FORMAT, "created_at": utc_text(datetime.now(UTC))}
    conn.execute(insert(schema_version).values(**row))


def read_genesis(conn: Connection) -> Genesis | None:
    """The chain's genesis; None for a schema from before genesis records (version 1).

    Raises ValueError if the table holds other than one row.
    """
    if not inspect(conn).has_table(genesis.name):
        return None
    rows = conn.execute(select(genesis.c.chain_id, genesis.c.created_at, genesis.c.hash)).all()
    if len(rows) != 1:
        raise ValueError(f"the audit_genesis table holds {len(rows)} rows instead of one")
    chain_id, created_at, start = rows[0]
    return Genesis(str(chain_id), str(created_at), str(start))


def read_schema_version(conn: Connection) -> int | None:
    """The newest schema version recorded, or None when there is no schema yet."""
    if not inspect(conn).has_table(schema_version.name):
        return None
    version = conn.execute(select(func.max(schema_version.c.version))).scalar()
    return None if version is None else int(version)


def has_append_function(conn: Connection) -> bool:
    """Whether the PostgreSQL database has ``audit_append()``."""
    return conn.exec_driver_sql(f"SELECT to_regprocedure('{_PG_APPEND_SIGNATURE}')").scalar() is not None


def read_head(conn: Connection) -> tuple[int, str]:
    """``(seq, hash)`` of the newest record; ``(0, genesis hash)`` when there is none."""
    row = conn.exec_driver_sql(HEAD).first()
    if row is not None:
        return int(row[0]), str(row[1])
    start = read_genesis(conn)
    return 0, GENESIS_HASH if start is None else start.hash
