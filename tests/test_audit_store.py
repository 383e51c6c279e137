"""The audit store keeps one hash chain, under concurrent writers, and names the first tampered record.

Every store test runs on SQLite (a file under ``tmp_path``) and on PostgreSQL (a fresh schema per test in
the database named by ``EXPLAIN_TEST_DATABASE_URL``; skipped when it is not set).
"""

from __future__ import annotations

import hashlib
import io
import itertools
import multiprocessing
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.exc import DBAPIError

from explain_service.audit import (
    GENESIS_HASH,
    AuditEntry,
    AuditStore,
    AuditWriteError,
    RecordNotFound,
    StoredRecord,
    new_record_id,
    verify_export,
)
from explain_service.audit.chain import RawRecord, canonical_json

PG_ENV = "EXPLAIN_TEST_DATABASE_URL"
MODEL_SHA = "ab" * 32
WORKERS = 4
APPENDS_PER_WORKER = 25  # every fifth append is a batch of three
TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=10)  # JSON strings: no lone surrogates
COLUMN_TEXT = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=12)
JSON_VALUE = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=12,
)


def entry(i: int, **fields: Any) -> AuditEntry:
    """A small explanation-like body for record ``i``."""
    body = {"i": i, "prediction": {"label": "good"}, "shap": {"values": {"age": 0.25 * i, "debt": -1.5}}}
    defaults: dict[str, Any] = {"model_name": "credit", "model_version": "1", "model_sha256": MODEL_SHA}
    return AuditEntry(body=body, **{**defaults, **fields})


def fill(store: AuditStore, n: int = 5) -> list[StoredRecord]:
    return store.append([entry(i) for i in range(n)])


def write_setting(store: AuditStore) -> str:
    """How the connections that append commit: SQLite's synchronous level, PostgreSQL's synchronous_commit."""
    conn = store._writer.raw_connection()  # the pool append() draws from
    try:
        cursor = conn.cursor()
        cursor.execute("PRAGMA synchronous" if store.backend == "sqlite" else "SHOW synchronous_commit")
        return str(cursor.fetchone()[0])
    finally:
        conn.close()


def with_server_option(postgresql_url: str, option: str) -> str:
    """The URL with one more ``-c`` option for every session it opens."""
    url = make_url(postgresql_url)
    return url.update_query_dict({"options": f"{url.query['options']} -c{option}"}).render_as_string(
        hide_password=False
    )


def tamper(url: str, sql: str, **params: Any) -> None:
    """Change the table behind the store's back, as someone with direct database access could."""
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            if engine.dialect.name == "sqlite":
                conn.exec_driver_sql("DROP TRIGGER IF EXISTS audit_records_no_update")
                conn.exec_driver_sql("DROP TRIGGER IF EXISTS audit_records_no_delete")
            else:
                conn.exec_driver_sql("ALTER TABLE audit_records DISABLE TRIGGER USER")
            conn.execute(text(sql), params)
    finally:
        engine.dispose()


def renumber(url: str, from_seq: int, by: int) -> None:
    """Move records from ``from_seq`` on by ``by`` positions (in two steps, so seq stays unique)."""
    tamper(url, "UPDATE audit_records SET seq = seq + 1000 WHERE seq >= :s", s=from_seq)
    tamper(url, "UPDATE audit_records SET seq = seq - 1000 + :by WHERE seq >= 1000", by=by)


@pytest.fixture
def store(url: str) -> Iterator[AuditStore]:
    with AuditStore(url) as audit_store:
        yield audit_store


# -- records ------------------------------------------------------------------------------------------


def test_append_then_get_round_trips(store: AuditStore) -> None:
    first, second = store.append([entry(0, caller="loan-origination"), entry(1)])

    assert store.get(first.id) == first
    assert store.get(second.id) == second
    assert (first.seq, second.seq) == (1, 2)
    genesis = store.genesis()
    assert genesis is not None and first.prev_hash == genesis.hash != GENESIS_HASH
    assert second.prev_hash == first.hash
    assert first.body == entry(0).body and first.caller == "loan-origination" and second.caller is None
    assert first.created_at.tzinfo is not None and first.created_at.utcoffset() == timedelta(0)
    assert first.to_dict()["created_at"].endswith("+00:00") and len(first.to_dict()["created_at"]) == 32


def test_unknown_id_is_none_or_not_found(store: AuditStore) -> None:
    fill(store, 1)

    assert store.get("no-such-record") is None
    with pytest.raises(RecordNotFound, match="no-such-record") as raised:
        store.require("no-such-record")
    assert raised.value.status == 404


def test_ids_are_unique_and_follow_seq_order(store: AuditStore) -> None:
    stored = [record for _ in range(10) for record in store.append([entry(i) for i in range(10)])]
    ids = [record.id for record in stored]

    assert len(set(ids)) == 100
    assert ids == sorted(ids)


def test_new_record_id_is_a_uuid7_that_increases() -> None:
    before = time.time_ns() // 1_000_000
    ids = [new_record_id() for _ in range(5000)]
    parsed = uuid.UUID(hex=ids[0])

    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(len(record_id) == 32 for record_id in ids)
    assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
    assert abs((parsed.int >> 80) - before) < 1000


def test_caller_chosen_id_is_kept(store: AuditStore) -> None:
    (record,) = store.append([entry(0, id="req-2024.06_a")])

    assert record.id == "req-2024.06_a"
    assert store.require("req-2024.06_a") == record


@pytest.mark.parametrize(
    ("bad", "error", "message"),
    [
        pytest.param(
            AuditEntry([1, 2], "m", "1", MODEL_SHA),  # type: ignore[arg-type]
            TypeError,
            "must be a dict",
            id="body-not-dict",
        ),
        pytest.param(
            AuditEntry({"x": object()}, "m", "1", MODEL_SHA),
            TypeError,
            "not JSON serializable",
            id="body-not-json",
        ),
        pytest.param(entry(0, model_name=""), ValueError, "model_name", id="empty-model-name"),
        pytest.param(entry(0, caller=7), TypeError, "caller must be a string", id="caller-not-str"),
        pytest.param(entry(0, id="../etc"), ValueError, "invalid record id", id="bad-id"),
        pytest.param(entry(0, id="x" * 65), ValueError, "invalid record id", id="long-id"),
    ],
)
def test_malformed_entries_are_refused_before_writing(
    store: AuditStore, bad: AuditEntry, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        store.append([entry(1), bad])

    assert store.count() == 0


def test_ids_repeated_within_a_batch_are_refused(store: AuditStore) -> None:
    with pytest.raises(ValueError, match="repeat"):
        store.append([entry(0, id="same"), entry(1, id="same")])


def test_a_failing_batch_stores_nothing(store: AuditStore) -> None:
    store.append([entry(0, id="taken")])

    with pytest.raises(AuditWriteError) as raised:
        store.append([entry(1), entry(2), entry(3, id="taken")])

    assert raised.value.status == 503
    assert store.count() == 1
    assert store.verify().ok


def test_a_failed_append_leaves_the_store_writable(store: AuditStore) -> None:
    store.append([entry(0, id="taken")])
    for _ in range(3):  # more failures in a row than connections in use
        with pytest.raises(AuditWriteError, match=r"(?i)unique"):
            store.append([entry(1), entry(2, id="taken")])

    (record,) = store.append([entry(3)])

    assert record.seq == 2 and store.count() == 2
    assert store.verify().ok


def test_numpy_float32_values_are_stored_as_they_parse_back(store: AuditStore) -> None:
    values = np.array([-4.0512905e-06, -2.3281753e13, 0.1], dtype=np.float32)
    body = {"values": values, "first": values[0]}
    assert canonical_json(body) != canonical_json(orjson.loads(canonical_json(body)))  # the case at hand

    (record,) = store.append([AuditEntry(body, "m", "1", MODEL_SHA)])

    assert record.body == orjson.loads(canonical_json(body))
    assert store.require(record.id) == record
    assert store.verify().ok


def test_list_records_pages_newest_first(store: AuditStore) -> None:
    batches = []
    for i in range(6):
        batches.append(store.append([entry(i, model_name="credit" if i % 2 else "triage")]))
        time.sleep(0.002)  # distinct created_at per batch
    stored = [batch[0] for batch in batches]

    assert [r.seq for r in store.list_records()] == [6, 5, 4, 3, 2, 1]
    assert [r.seq for r in store.list_records(limit=2, offset=1)] == [5, 4]
    assert [r.seq for r in store.list_records(limit=2, before_seq=4)] == [3, 2]
    assert [r.seq for r in store.list_records(model_name="credit")] == [6, 4, 2]
    since, until = stored[1].created_at, stored[4].created_at
    assert [r.seq for r in store.list_records(since=since, until=until)] == [4, 3, 2]
    assert store.count(since=since, until=until) == 3
    assert store.count(model_name="triage") == 3 and store.count() == 6
    with pytest.raises(ValueError, match="timezone-aware"):
        store.list_records(since=datetime(2024, 1, 1))
    with pytest.raises(ValueError, match="limit"):
        store.list_records(limit=0)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=st.dictionaries(TEXT, JSON_VALUE, max_size=5))
def test_any_json_body_round_trips_and_keeps_the_chain(sqlite_url: str, body: dict[str, Any]) -> None:
    with AuditStore(sqlite_url) as audit_store:
        (record,) = audit_store.append([AuditEntry(body, "m", "1", MODEL_SHA)])

        assert audit_store.require(record.id).body == body
        assert audit_store.verify().ok


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    batch=st.lists(
        st.tuples(
            st.dictionaries(TEXT, JSON_VALUE, max_size=4),
            COLUMN_TEXT.filter(bool),
            COLUMN_TEXT.filter(bool),
            st.none() | COLUMN_TEXT,
        ),
        min_size=1,
        max_size=3,
    )
)
def test_every_backend_seals_records_as_the_chain_defines(
    store: AuditStore, batch: list[tuple[dict[str, Any], str, str, str | None]]
) -> None:
    """PostgreSQL seals inside the database; whatever the text, chain.py must get the same hashes."""
    entries = [AuditEntry(body, name, version, MODEL_SHA, caller) for body, name, version, caller in batch]

    stored = store.append(entries)

    assert [(r.body, r.model_name, r.model_version, r.caller) for r in stored] == [
        (body, name, version, caller) for body, name, version, caller in batch
    ]
    assert all(store.require(record.id) == record for record in stored)
    assert store.verify(expected_head=stored[-1].hash).ok


# -- the chain format ---------------------------------------------------------------------------------


def test_hash_format_is_pinned() -> None:
    record = RawRecord(
        seq=1,
        id="01890a5dac96774bbcceb302099a8057",
        created_at="2024-06-01T12:00:00.000000+00:00",
        model_name="credit",
        model_version="1",
        model_sha256=MODEL_SHA,
        caller=None,
        body='{"a":null,"b":[1,2.5,"é"]}',
        prev_hash=GENESIS_HASH,
        hash="",
    )
    envelope = (
        '{"body":{"a":null,"b":[1,2.5,"é"]},"caller":null,"created_at":"2024-06-01T12:00:00.000000+00:00",'
        f'"id":"01890a5dac96774bbcceb302099a8057","model_name":"credit","model_sha256":"{MODEL_SHA}",'
        '"model_version":"1","seq":1}'
    )
    expected = hashlib.sha256((GENESIS_HASH + envelope).encode()).hexdigest()

    assert record.sealed().hash == expected
    assert replace(record, hash="").text_hash() == expected
    assert expected == "09ca5f931d4884bda2448fb0f941d44d79c44cec4a3bbc3bf120c2d631ab9370"


@given(
    record_id=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", fullmatch=True),
    name=COLUMN_TEXT,
    version=COLUMN_TEXT,
    caller=st.none() | COLUMN_TEXT,
    body=st.dictionaries(TEXT, JSON_VALUE, max_size=3),
    seq=st.integers(1, 2**63 - 1),
)
def test_envelope_parts_splice_into_the_canonical_envelope(
    record_id: str, name: str, version: str, caller: str | None, body: dict[str, Any], seq: int
) -> None:
    record = RawRecord(
        seq=seq,
        id=record_id,
        created_at="2024-06-01T12:00:00.000000+00:00",
        model_name=name,
        model_version=version,
        model_sha256=MODEL_SHA,
        caller=caller,
        body=canonical_json(body).decode(),
        prev_hash="a" * 64,
        hash="",
    )
    middle, tail = record.envelope_parts()

    spliced = '{"body":' + record.body + middle + record.created_at + tail + str(seq) + "}"

    assert hashlib.sha256((record.prev_hash + spliced).encode()).hexdigest() == record.content_hash()
    assert record.text_hash() == record.content_hash()


def test_canonical_json_agrees_with_the_explainers() -> None:
    from explain_service.explainers.base import canonical_json as explainers_canonical_json

    value = {"z": [1, 0.1, -0.0, 1e16, "ü\n"], "a": {"y": True, "b": None}, "m": 2**63 - 1}

    assert canonical_json(value) == explainers_canonical_json(value)


# -- verification -------------------------------------------------------------------------------------


def test_verify_accepts_a_clean_chain(store: AuditStore) -> None:
    genesis = store.genesis()
    assert genesis is not None
    assert store.verify().to_dict() == {
        "ok": True,
        "checked": 0,
        "head_seq": 0,
        "head_hash": genesis.hash,
        "first_bad_seq": None,
        "first_bad_id": None,
        "reason": None,
        "detail": "",
        "chain_id": genesis.chain_id,
    }
    stored = fill(store, 7)

    report = store.verify()

    assert report.ok and report.checked == 7
    assert report.head_hash == stored[-1].hash and store.head() == (7, stored[-1].hash)


def test_records_cannot_be_updated_or_deleted_through_the_database(url: str, store: AuditStore) -> None:
    fill(store, 2)
    engine = create_engine(url)
    try:
        for sql in ("UPDATE audit_records SET caller = 'x'", "DELETE FROM audit_records"):
            with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
                conn.execute(text(sql))
    finally:
        engine.dispose()

    assert store.count() == 2 and store.verify().ok


@pytest.mark.parametrize(
    ("sql", "params", "detail"),
    [
        pytest.param(
            "UPDATE audit_records SET body = :v WHERE seq = 3", {"v": '{"i":999}'}, "content", id="body"
        ),
        pytest.param(
            "UPDATE audit_records SET body = REPLACE(body, ':', ': ') WHERE seq = 3",
            {},
            "content",
            id="body-spacing",
        ),
        pytest.param(
            "UPDATE audit_records SET created_at = :v WHERE seq = 3",
            {"v": "2020-01-01T00:00:00.000000+00:00"},
            "content",
            id="created-at",
        ),
        pytest.param(
            "UPDATE audit_records SET caller = :v WHERE seq = 3", {"v": "someone"}, "content", id="caller"
        ),
        pytest.param("UPDATE audit_records SET hash = :v WHERE seq = 3", {"v": "f" * 64}, "hash", id="hash"),
        pytest.param(
            "UPDATE audit_records SET prev_hash = :v WHERE seq = 3", {"v": "e" * 64}, "prev_hash", id="prev"
        ),
    ],
)
def test_verify_names_an_edited_record(
    url: str, store: AuditStore, sql: str, params: dict[str, Any], detail: str
) -> None:
    stored = fill(store)
    tamper(url, sql, **params)

    report = store.verify()

    assert (report.ok, report.reason, report.first_bad_seq, report.first_bad_id) == (
        False,
        "edited",
        3,
        stored[2].id,
    )
    assert detail in report.detail
    assert report.checked == 2 and report.head_hash == stored[1].hash


@pytest.mark.parametrize("seq", [pytest.param(1, id="first"), pytest.param(3, id="middle")])
def test_verify_names_a_deleted_record(url: str, store: AuditStore, seq: int) -> None:
    fill(store)
    tamper(url, "DELETE FROM audit_records WHERE seq = :s", s=seq)

    report = store.verify()

    assert (report.ok, report.reason, report.first_bad_seq, report.first_bad_id) == (
        False,
        "deleted",
        seq,
        None,
    )
    assert report.checked == seq - 1


def test_deleting_the_newest_record_shows_only_against_a_kept_head(url: str, store: AuditStore) -> None:
    fill(store)
    _, kept_head = store.head()
    tamper(url, "DELETE FROM audit_records WHERE seq = 5")

    assert store.verify().ok  # a shorter chain is valid on its own
    report = store.verify(expected_head=kept_head)

    assert (report.ok, report.reason, report.first_bad_seq) == (False, "head_not_found", 5)
    assert report.checked == 4


def test_a_kept_head_still_verifies_after_later_appends(store: AuditStore) -> None:
    fill(store, 3)
    _, kept_head = store.head()
    fill(store, 3)

    assert store.verify(expected_head=kept_head).ok
    assert not store.verify(expected_head="c" * 64).ok


def test_verify_names_a_deletion_hidden_by_renumbering(url: str, store: AuditStore) -> None:
    fill(store)
    tamper(url, "DELETE FROM audit_records WHERE seq = 3")
    renumber(url, 4, -1)

    report = store.verify()

    assert (report.ok, report.reason, report.first_bad_seq, report.first_bad_id) == (
        False,
        "deleted",
        3,
        None,
    )


def test_verify_names_a_record_moved_to_a_new_seq(url: str, store: AuditStore) -> None:
    stored = fill(store)
    tamper(url, "UPDATE audit_records SET seq = 9 WHERE seq = 5")

    report = store.verify()

    assert (report.ok, report.reason, report.first_bad_seq, report.first_bad_id) == (
        False,
        "edited",
        5,
        stored[4].id,
    )
    assert "carries seq 9" in report.detail


def test_verify_names_reordered_records(url: str, store: AuditStore) -> None:
    stored = fill(store)
    tamper(url, "UPDATE audit_records SET seq = 1000 WHERE seq = 4")
    tamper(url, "UPDATE audit_records SET seq = 4 WHERE seq = 3")
    tamper(url, "UPDATE audit_records SET seq = 3 WHERE seq = 1000")

    report = store.verify()

    assert (report.ok, report.reason, report.first_bad_seq, report.first_bad_id) == (
        False,
        "reordered",
        3,
        stored[3].id,
    )


def test_verify_names_an_inserted_record(url: str, store: AuditStore) -> None:
    stored = fill(store)
    renumber(url, 3, +1)
    forged = {
        "seq": 3,
        "id": "forged",
        "created_at": stored[2].to_dict()["created_at"],
        "model_name": "credit",
        "model_version": "1",
        "model_sha256": MODEL_SHA,
        "body": '{"i":42}',
        "prev_hash": "d" * 64,
        "hash": "e" * 64,
    }
    columns = ", ".join(forged)
    tamper(
        url, f"INSERT INTO audit_records ({columns}) VALUES ({', '.join(':' + c for c in forged)})", **forged
    )

    report = store.verify()

    assert (report.ok, report.reason, report.first_bad_seq, report.first_bad_id) == (
        False,
        "inserted",
        3,
        "forged",
    )


# -- export -------------------------------------------------------------------------------------------


def test_export_round_trips(store: AuditStore) -> None:
    stored = fill(store, 6)
    out = io.BytesIO()

    head = store.export(out)

    lines = out.getvalue().splitlines()
    assert len(lines) == 7
    assert [orjson.loads(line) for line in lines[:-1]] == [record.to_dict() for record in stored]
    genesis = store.genesis()
    assert genesis is not None
    assert orjson.loads(lines[-1]) == {
        "trailer": {
            "format": "explain-service.audit/2",
            "count": 6,
            "genesis": genesis.to_dict(),
            "head_seq": 6,
            "head_hash": head,
        }
    }
    assert head == store.verify().head_hash == stored[-1].hash
    out.seek(0)
    assert verify_export(out, expected_head=head) == store.verify()


def test_export_of_an_empty_store_has_only_the_trailer(store: AuditStore) -> None:
    out = io.BytesIO()

    genesis = store.genesis()
    assert genesis is not None and store.export(out) == genesis.hash
    assert out.getvalue().count(b"\n") == 1
    out.seek(0)
    assert verify_export(out) == store.verify()
    out.seek(0)
    assert verify_export(out, expected_head=genesis.hash, expected_genesis=genesis.chain_id).ok


def _edit_body(lines: list[bytes]) -> list[bytes]:
    record = orjson.loads(lines[2])
    record["body"]["i"] = 999
    return [*lines[:2], canonical_json(record), *lines[3:]]


@pytest.mark.parametrize(
    ("change", "reason", "seq"),
    [
        pytest.param(_edit_body, "edited", 3, id="edited-body"),
        pytest.param(lambda lines: lines[:1] + lines[2:], "deleted", 2, id="line-dropped"),
        pytest.param(lambda lines: lines[:4] + lines[5:], "deleted", 5, id="last-record-dropped"),
        pytest.param(lambda lines: lines[:-1], "deleted", 6, id="trailer-dropped"),
        pytest.param(
            lambda lines: [*lines[:2], lines[3], lines[2], *lines[4:]], "reordered", 3, id="swapped"
        ),
        pytest.param(lambda lines: [*lines, lines[0]], "inserted", 6, id="line-after-trailer"),
    ],
)
def test_verify_export_names_the_change(store: AuditStore, change: Any, reason: str, seq: int) -> None:
    fill(store)
    out = io.BytesIO()
    store.export(out)
    lines = out.getvalue().splitlines()

    report = verify_export(io.BytesIO(b"".join(line + b"\n" for line in change(lines))))

    assert (report.ok, report.reason, report.first_bad_seq) == (False, reason, seq)


# -- failures -----------------------------------------------------------------------------------------


def test_read_only_sqlite_refuses_appends_but_still_reads(sqlite_url: str) -> None:
    with AuditStore(sqlite_url) as writable:
        (record,) = fill(writable, 1)
    path = make_url(sqlite_url).database

    with AuditStore(f"sqlite:///file:{path}?mode=ro&uri=true") as read_only:
        with pytest.raises(AuditWriteError, match="readonly"):
            read_only.append([entry(1)])
        assert read_only.get(record.id) == record
    with AuditStore(sqlite_url) as writable:
        assert writable.count() == 1 and writable.verify().ok


def test_sqlite_in_an_uncreatable_directory_refuses_appends(tmp_path: Path) -> None:
    (tmp_path / "not-a-dir").write_text("")
    store = AuditStore(f"sqlite:///{tmp_path / 'not-a-dir' / 'audit.sqlite3'}")

    assert store.ping() is False
    with pytest.raises(AuditWriteError, match="cannot create the directory"):
        store.append([entry(0)])


def test_unreachable_postgresql_refuses_appends_quickly() -> None:
    store = AuditStore("postgresql+psycopg://postgres@127.0.0.1:1/test?connect_timeout=2")
    started = time.monotonic()

    assert store.ping() is False
    with pytest.raises(AuditWriteError, match="could not be written"):
        store.append([entry(0)])
    assert time.monotonic() - started < 10


def test_ping_answers_on_a_reachable_store(store: AuditStore) -> None:
    assert store.ping() is True


def test_other_databases_are_refused() -> None:
    with pytest.raises(ValueError, match="sqlite and postgresql"):
        AuditStore("mysql://user@localhost/db")
    with pytest.raises(ValueError, match="in-memory"):
        AuditStore("sqlite://")
    with pytest.raises(ValueError, match="psycopg 3"):
        AuditStore("postgresql+psycopg2://user@localhost/db")


def test_postgresql_append_survives_a_connection_the_server_dropped(postgresql_url: str) -> None:
    with AuditStore(postgresql_url) as audit_store:
        fill(audit_store, 2)
        conn = audit_store._writer.raw_connection()
        backend_pid = conn.driver_connection.info.backend_pid
        conn.close()  # back to the pool, where the next append finds it
        engine = create_engine(postgresql_url)
        try:
            with engine.connect() as admin:
                admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": backend_pid})
        finally:
            engine.dispose()

        (record,) = audit_store.append([entry(2)])

        assert record.seq == 3 and audit_store.count() == 3
        assert audit_store.verify().ok


def test_a_postgresql_store_made_before_audit_append_gains_it_at_the_first_append(
    postgresql_url: str,
) -> None:
    with AuditStore(postgresql_url) as audit_store:
        fill(audit_store, 2)
    engine = create_engine(postgresql_url)

    def has_function() -> bool:
        with engine.connect() as conn:
            return conn.execute(text("SELECT to_regprocedure('audit_append(text[])')")).scalar() is not None

    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP FUNCTION audit_append(text[])")
        with AuditStore(postgresql_url) as audit_store:
            assert audit_store.count() == 2 and audit_store.verify().ok
            assert not has_function()  # reading needs no DDL

            (record,) = audit_store.append([entry(2)])

            assert record.seq == 3 and audit_store.verify().ok
        assert has_function()
    finally:
        engine.dispose()


# -- durability ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("durability", "sqlite_level", "postgresql_level"),
    [pytest.param("full", "2", "on", id="full"), pytest.param("os", "1", "off", id="os")],
)
def test_durability_sets_how_each_commit_reaches_the_disk(
    url: str, durability: Any, sqlite_level: str, postgresql_level: str
) -> None:
    with AuditStore(url, durability=durability) as audit_store:
        fill(audit_store, 3)

        assert audit_store.durability == durability
        assert write_setting(audit_store) == (
            sqlite_level if audit_store.backend == "sqlite" else postgresql_level
        )
        assert audit_store.count() == 3 and audit_store.verify().ok


@pytest.mark.parametrize(
    ("server", "expected"),
    [
        pytest.param("off", "on", id="off-is-raised"),
        pytest.param("local", "local", id="local-is-kept"),
        pytest.param("remote_apply", "remote_apply", id="remote-apply-is-kept"),
    ],
)
def test_full_durability_never_commits_asynchronously(
    postgresql_url: str, server: str, expected: str
) -> None:
    with AuditStore(with_server_option(postgresql_url, f"synchronous_commit={server}")) as audit_store:
        fill(audit_store, 1)

        assert write_setting(audit_store) == expected


def test_unknown_durability_is_refused(sqlite_url: str) -> None:
    with pytest.raises(ValueError, match="durability must be 'full' or 'os'"):
        AuditStore(sqlite_url, durability="none")  # type: ignore[arg-type]


# -- concurrency --------------------------------------------------------------------------------------


def test_wal_mode_waits_for_a_process_creating_the_file(tmp_path: Path) -> None:
    # The race of several workers opening a fresh database: one holds the write lock on a file that is
    # not in WAL mode yet, and SQLite fails the others' journal-mode change at once instead of waiting.
    path = tmp_path / "audit.sqlite3"
    creator = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    creator.execute("BEGIN IMMEDIATE")
    creator.execute("CREATE TABLE other (a)")
    released = threading.Timer(0.3, creator.execute, args=("COMMIT",))
    released.start()
    try:
        with AuditStore(f"sqlite:///{path}", timeout=10) as audit_store:
            stored = audit_store.append([entry(0)])
            with audit_store._engine.connect() as conn:
                mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
    finally:
        released.join()
        creator.close()
    assert [record.seq for record in stored] == [1]
    assert mode == "wal"


def test_wal_mode_gives_up_after_the_timeout(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite3"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("CREATE TABLE other (a)")
    try:
        started = time.monotonic()
        with AuditStore(f"sqlite:///{path}", timeout=0.3) as audit_store, pytest.raises(AuditWriteError):
            audit_store.append([entry(0)])
        assert 0.25 <= time.monotonic() - started < 5
    finally:
        holder.rollback()
        holder.close()


def _append_from_worker(url: str, worker: int, barrier: Any, results: Any) -> None:
    """Run in a spawned process: append single records and batches as fast as the lock allows."""
    try:
        with AuditStore(url, timeout=30) as audit_store:
            barrier.wait(timeout=60)
            batches = []
            for k in range(APPENDS_PER_WORKER):
                size = 3 if k % 5 == 0 else 1
                stored = audit_store.append([entry(k, caller=f"worker-{worker}") for _ in range(size)])
                batches.append([record.seq for record in stored])
        results.put((worker, batches))
    except BaseException as exc:
        results.put((worker, repr(exc)))
        raise


@pytest.mark.slow
def test_concurrent_processes_keep_one_unbroken_chain(url: str) -> None:
    spawn = multiprocessing.get_context("spawn")
    barrier, results = spawn.Barrier(WORKERS), spawn.Queue()
    processes = [
        spawn.Process(target=_append_from_worker, args=(url, worker, barrier, results))
        for worker in range(WORKERS)
    ]
    for process in processes:
        process.start()
    outcomes = dict(results.get(timeout=120) for _ in processes)
    for process in processes:
        process.join(timeout=60)

    failures = {worker: outcome for worker, outcome in outcomes.items() if isinstance(outcome, str)}
    assert not failures
    expected = WORKERS * sum(3 if k % 5 == 0 else 1 for k in range(APPENDS_PER_WORKER))
    batches = [batch for outcome in outcomes.values() for batch in outcome]
    assert all(batch == list(range(batch[0], batch[0] + len(batch))) for batch in batches)
    assert sorted(seq for batch in batches for seq in batch) == list(range(1, expected + 1))
    assert all(a[-1] < b[0] for outcome in outcomes.values() for a, b in itertools.pairwise(outcome))
    with AuditStore(url) as audit_store:
        report = audit_store.verify()
        assert audit_store.count() == expected
        times = [record.created_at for record in reversed(audit_store.list_records(limit=expected))]
    assert report.ok and report.checked == expected
    assert times == sorted(times)  # stamped under the lock


def test_tables_created_while_another_process_commits_wait_instead_of_failing(tmp_path: Path) -> None:
    """Workers create their side tables on first use while others append: that must wait, not 503.

    In a deferred transaction the existence check reads a snapshot; when another connection commits
    before the CREATE, SQLite refuses the upgrade at once ("database is locked") without waiting.
    """
    from sqlalchemy import Column, Integer, MetaData, Table

    from explain_service.audit.backends import create_tables, sqlite_engine

    path = tmp_path / "a.sqlite3"
    engine = sqlite_engine(make_url(f"sqlite:///{path}"), 5.0, "full")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE busy (n INTEGER)")
    other = sqlite3.connect(path, isolation_level=None, timeout=5, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO busy VALUES (1)")
    side = Table("side_table", MetaData(), Column("n", Integer))

    def commit_soon() -> None:
        time.sleep(0.3)
        other.execute("COMMIT")

    releaser = threading.Thread(target=commit_soon)
    releaser.start()
    try:
        create_tables(engine, side.metadata)  # must wait for the writer, then create
    finally:
        releaser.join()
        other.close()
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM side_table").scalar() == 0
    engine.dispose()
