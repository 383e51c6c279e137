"""The audit trail under faults: a database removed or restarted, a store that cannot write, records too
large, read commands on a store that is not there, plots that cannot be cached, and error bodies that
must not name the database.

Store tests run on SQLite and on PostgreSQL (when ``EXPLAIN_TEST_DATABASE_URL`` is set).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, insert, make_url

from explain_service.app import create_app
from explain_service.audit import (
    GENESIS_HASH,
    AuditStore,
    AuditUnavailableError,
    AuditWriteError,
    Genesis,
    RecordTooLarge,
    verify_export,
)
from explain_service.audit.chain import CHAIN_FORMAT, RawRecord, canonical_json, genesis_hash
from explain_service.audit.jsonl import record_line
from explain_service.audit.schema import metadata, records, schema_version
from explain_service.cli import main
from tests.conftest import GERMAN_ROW, OPEN_ACCESS
from tests.test_audit_store import entry, fill, with_server_option


@pytest.fixture
def store(url: str) -> Iterator[AuditStore]:
    with AuditStore(url) as audit_store:
        yield audit_store


def sqlite_file(url: str) -> Path:
    return Path(str(make_url(url).database))


def wipe(url: str) -> None:
    """Remove the whole store, as ``rm -rf`` of its directory (or dropping its tables) would."""
    if url.startswith("sqlite"):
        shutil.rmtree(sqlite_file(url).parent)
        return
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE audit_records, audit_genesis, audit_schema_version CASCADE")
            conn.exec_driver_sql("DROP FUNCTION audit_append(text[])")
    finally:
        engine.dispose()


def exported(store: AuditStore) -> io.BytesIO:
    out = io.BytesIO()
    store.export(out)
    out.seek(0)
    return out


def audited_app(url: str, models_dir: Path, plots: Path) -> Any:
    return create_app(
        {
            "models_dir": str(models_dir),
            "database_url": url,
            "plots_dir": str(plots),
            "eager_load": False,
            **OPEN_ACCESS,
        }
    )


def explain(client: Any, body: dict[str, Any]) -> Any:
    return client.post(
        "/v1/models/german-credit:explain", data=orjson.dumps(body), content_type="application/json"
    )


# -- the database removed while serving ---------------------------------------------------------------


def test_removing_the_sqlite_directory_while_serving_refuses_answers(
    demo_models_dir: Path, tmp_path: Path, sqlite_url: str
) -> None:
    app = audited_app(sqlite_url, demo_models_dir, tmp_path / "plots")
    client = app.test_client()
    assert explain(client, {"instances": [GERMAN_ROW]}).status_code == 200
    shutil.rmtree(sqlite_file(sqlite_url).parent)

    answer = explain(client, {"instances": [GERMAN_ROW]})

    assert answer.status_code == 503, answer.get_json()
    assert "audit record could not be written" in answer.get_json()["message"]
    assert str(tmp_path) not in answer.get_data(as_text=True)
    with pytest.raises(AuditUnavailableError, match="removed or replaced"):
        app.extensions["explain"].audit.check_writable()


def test_a_database_file_replaced_under_the_store_is_refused(sqlite_url: str) -> None:
    with AuditStore(sqlite_url) as running:
        fill(running, 2)
        path = sqlite_file(sqlite_url)
        path.unlink()
        with AuditStore(sqlite_url) as other:
            fill(other, 1)  # a new file at the same path, with a chain of its own

        with pytest.raises(AuditWriteError, match="removed or replaced"):
            running.append([entry(9)])
        with AuditStore(sqlite_url) as reopened:
            assert reopened.count() == 1  # nothing went into the unlinked file


def test_a_store_never_makes_a_new_file_where_one_was_when_it_was_made(sqlite_url: str) -> None:
    """A gunicorn worker makes its store at boot and may first use it after the file is gone."""
    with AuditStore(sqlite_url) as first:
        fill(first, 1)
    late = AuditStore(sqlite_url)
    shutil.rmtree(sqlite_file(sqlite_url).parent)

    with pytest.raises(AuditWriteError, match="removed or replaced"):
        late.append([entry(1)])
    assert late.ping() is False and not sqlite_file(sqlite_url).parent.exists()


def test_a_database_moved_away_and_back_is_written_again(sqlite_url: str) -> None:
    with AuditStore(sqlite_url) as running:
        fill(running, 2)
        directory = sqlite_file(sqlite_url).parent
        directory.rename(directory.with_name("moved"))
        with pytest.raises(AuditWriteError):
            running.append([entry(2)])
        directory.with_name("moved").rename(directory)

        (record,) = running.append([entry(3)])

        assert record.seq == 3 and running.verify().ok


def test_a_chain_that_started_afresh_fails_against_its_genesis(url: str) -> None:
    with AuditStore(url) as first:
        fill(first, 3)
        earlier = exported(first)
        genesis = first.genesis()
    assert genesis is not None
    wipe(url)
    with AuditStore(url) as restarted:
        fill(restarted, 2)
        assert restarted.verify().ok  # valid on its own: only a kept genesis or head shows the restart

        report = restarted.verify(expected_genesis=genesis.chain_id)
        by_head = restarted.verify(expected_head=verify_export(earlier).head_hash)
        fresh_export = verify_export(exported(restarted), expected_genesis=genesis.chain_id)

    assert (report.ok, report.reason, report.first_bad_seq) == (False, "restarted", 1)
    assert genesis.chain_id in report.detail and report.chain_id != genesis.chain_id
    assert (by_head.ok, by_head.reason) == (False, "head_not_found")
    assert (fresh_export.ok, fresh_export.reason) == (False, "restarted")


def test_the_first_record_must_follow_the_genesis(url: str, store: AuditStore) -> None:
    fill(store, 3)
    other = Genesis.new()  # a consistent genesis of another chain, put in place of this one's
    tamper_genesis(
        url,
        f"UPDATE audit_genesis SET chain_id = '{other.chain_id}', created_at = '{other.created_at}', "
        f"hash = '{other.hash}'",
    )

    report = store.verify(expected_genesis=other.chain_id)

    assert (report.ok, report.reason, report.first_bad_seq, report.checked) == (False, "edited", 1, 0)


def test_a_genesis_whose_hash_does_not_derive_from_it_is_named(url: str, store: AuditStore) -> None:
    fill(store, 2)
    tamper_genesis(url, "UPDATE audit_genesis SET created_at = '2000-01-01T00:00:00.000000+00:00'")

    report = store.verify()

    assert (report.ok, report.reason, report.first_bad_seq) == (False, "edited", 1)
    assert "genesis" in report.detail


def tamper_genesis(url: str, sql: str) -> None:
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            if engine.dialect.name == "sqlite":
                conn.exec_driver_sql("DROP TRIGGER IF EXISTS audit_genesis_no_update")
            else:
                conn.exec_driver_sql("ALTER TABLE audit_genesis DISABLE TRIGGER USER")
            conn.exec_driver_sql(sql)
    finally:
        engine.dispose()


def test_the_genesis_cannot_be_changed_through_the_database(url: str, store: AuditStore) -> None:
    fill(store, 1)
    engine = create_engine(url)
    try:
        for sql in ("UPDATE audit_genesis SET chain_id = 'x'", "DELETE FROM audit_genesis"):
            with pytest.raises(Exception, match="append-only"), engine.begin() as conn:
                conn.exec_driver_sql(sql)
    finally:
        engine.dispose()


def test_genesis_hash_format_is_pinned() -> None:
    chain_id, created_at = "0123456789abcdef0123456789abcdef", "2024-06-01T12:00:00.000000+00:00"
    text = (
        '{"chain_id":"0123456789abcdef0123456789abcdef","created_at":"2024-06-01T12:00:00.000000+00:00",'
        f'"format":"{CHAIN_FORMAT}"}}'
    )

    assert genesis_hash(chain_id, created_at) == hashlib.sha256(text.encode()).hexdigest()
    assert genesis_hash(chain_id, created_at) == (
        "c098f9c80352161a14e271ba5df8ced992b4062b795393038beb48af9127bfd8"
    )


def test_an_export_whose_trailer_names_another_genesis_fails(store: AuditStore) -> None:
    fill(store, 3)
    lines = exported(store).getvalue().splitlines()
    trailer = orjson.loads(lines[-1])
    trailer["trailer"]["genesis"] = Genesis.new().to_dict()
    forged = b"".join(line + b"\n" for line in [*lines[:-1], canonical_json(trailer)])

    report = verify_export(io.BytesIO(forged))

    assert (report.ok, report.reason, report.first_bad_seq) == (False, "edited", 1)


# -- chains from before genesis records ---------------------------------------------------------------


def legacy_store(url: str, n: int) -> list[RawRecord]:
    """A database as schema version 1 left it: no genesis table, the chain starting at "0" * 64."""
    engine = create_engine(url)
    sealed: list[RawRecord] = []
    prev = GENESIS_HASH
    for i in range(n):
        raw = RawRecord(
            seq=i + 1,
            id=f"legacy-{i}",
            created_at=f"2024-06-01T12:00:0{i}.000000+00:00",
            model_name="credit",
            model_version="1",
            model_sha256="ab" * 32,
            caller=None,
            body=canonical_json({"i": i}).decode(),
            prev_hash=prev,
            hash="",
        ).sealed()
        sealed.append(raw)
        prev = raw.hash
    try:
        with engine.begin() as conn:
            metadata.create_all(conn, tables=[records, schema_version])
            conn.execute(
                insert(schema_version).values(
                    version=1, chain_format="explain-service.audit/1", created_at=sealed[0].created_at
                )
            )
            conn.execute(insert(records), [asdict(r) for r in sealed])
    finally:
        engine.dispose()
    return sealed


def legacy_export(rows: list[RawRecord]) -> io.BytesIO:
    """An export as schema version 1 wrote it: a trailer without a genesis."""
    trailer = {
        "format": "explain-service.audit/1",
        "count": len(rows),
        "head_seq": rows[-1].seq,
        "head_hash": rows[-1].hash,
    }
    return io.BytesIO(b"".join(record_line(r) for r in rows) + canonical_json({"trailer": trailer}) + b"\n")


def test_a_schema_1_store_reads_as_is_then_migrates_and_goes_on(url: str) -> None:
    if url.startswith("sqlite"):
        sqlite_file(url).parent.mkdir(parents=True)
    rows = legacy_store(url, 3)
    old_export = legacy_export(rows)
    assert verify_export(old_export, expected_head=rows[-1].hash).ok
    with AuditStore(url, create=False) as reader:
        assert reader.genesis() is None and reader.verify(expected_head=rows[-1].hash).ok

    with AuditStore(url) as migrated:
        genesis = migrated.genesis()
        assert genesis is not None and genesis.legacy and genesis.hash == GENESIS_HASH
        (record,) = migrated.append([entry(3)])
        report = migrated.verify(expected_head=rows[-1].hash, expected_genesis=genesis.chain_id)
        new_export = verify_export(exported(migrated), expected_genesis=genesis.chain_id)

    assert record.seq == 4 and record.prev_hash == rows[-1].hash
    assert report.ok and report.checked == 4 and report.chain_id == genesis.chain_id
    assert new_export.ok and new_export.head_hash == record.hash


# -- proof that a write would be accepted -------------------------------------------------------------


def test_check_writable_passes_on_a_working_store_and_writes_nothing(store: AuditStore) -> None:
    fill(store, 2)

    assert store.check_writable() is None
    assert store.count() == 2 and store.verify().ok


def test_check_writable_fails_on_a_read_only_sqlite_database(sqlite_url: str) -> None:
    with AuditStore(sqlite_url) as writable:
        fill(writable, 1)
    path = sqlite_file(sqlite_url)

    with (
        AuditStore(f"sqlite:///file:{path}?mode=ro&uri=true") as read_only,
        pytest.raises(AuditUnavailableError, match="readonly"),
    ):
        read_only.check_writable()


def test_check_writable_fails_on_a_full_disk(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with AuditStore(sqlite_url) as audit_store:
        fill(audit_store, 1)
        full = os.statvfs_result((4096, 4096, 1000, 0, 0, 1000, 0, 0, 0, 255))
        monkeypatch.setattr(os, "statvfs", lambda _path: full)

        with pytest.raises(AuditUnavailableError, match="disk holding the database is full"):
            audit_store.check_writable()


def test_check_writable_fails_on_a_read_only_postgresql_session(postgresql_url: str) -> None:
    with AuditStore(postgresql_url) as audit_store:
        fill(audit_store, 1)
    read_only_url = with_server_option(postgresql_url, "default_transaction_read_only=on")

    with AuditStore(read_only_url) as audit_store:
        with pytest.raises(AuditUnavailableError, match="read-only"):
            audit_store.check_writable()
        with pytest.raises(AuditWriteError, match="read-only"):
            audit_store.append([entry(1)])


def test_check_writable_fails_on_an_unreachable_postgresql_without_naming_it() -> None:
    store = AuditStore("postgresql+psycopg://postgres@127.0.0.1:1/secretdb?connect_timeout=2")

    with pytest.raises(AuditUnavailableError) as caught:
        store.check_writable()

    assert "cannot be reached" in str(caught.value)
    assert not {"127.0.0.1", "secretdb", "port"} & set(str(caught.value).replace('"', " ").split())
    assert "127.0.0.1" in caught.value.detail  # kept for the log and the command line


# -- what a record may hold ---------------------------------------------------------------------------


def test_a_record_over_the_cap_refuses_the_whole_batch(url: str) -> None:
    with AuditStore(url, max_record_bytes=4096) as audit_store:
        fill(audit_store, 1)
        big = entry(1)
        big = type(big)(**{**big.__dict__, "body": {"pad": "x" * 5000}})

        with pytest.raises(RecordTooLarge) as caught:
            audit_store.append([entry(2), big, entry(3)])

        assert (caught.value.index, caught.value.status) == (1, 413)
        assert caught.value.size > 5000 and caught.value.limit == 4096
        assert audit_store.count() == 1 and audit_store.verify().ok


def test_the_default_cap_is_256_kib(store: AuditStore) -> None:
    assert store.max_record_bytes == 256 * 1024
    near = {"pad": "x" * (256 * 1024 - 20)}
    store.append([type(entry(0))(**{**entry(0).__dict__, "body": near})])
    with pytest.raises(RecordTooLarge):
        store.append([type(entry(0))(**{**entry(0).__dict__, "body": {"pad": "x" * 256 * 1024}})])
    assert store.count() == 1


def test_an_explanation_whose_record_is_over_the_cap_is_refused_with_413(
    demo_models_dir: Path, tmp_path: Path, sqlite_url: str
) -> None:
    app = audited_app(sqlite_url, demo_models_dir, tmp_path / "plots")
    client = app.test_client()
    store = app.extensions["explain"].audit
    assert explain(client, {"instances": [GERMAN_ROW]}).status_code == 200
    store.max_record_bytes = len(canonical_json(store.list_records(limit=1)[0].body)) + 200
    rows = [GERMAN_ROW, GERMAN_ROW]

    fits = explain(client, {"instances": rows})  # records as large as the first
    larger = explain(client, {"instances": rows, "methods": ["shap", "lime"]})

    assert fits.status_code == 200
    assert larger.status_code == 413, larger.get_json()
    body = larger.get_json()
    assert body["code"] == 413 and list(body["errors"]) == ["instances.0"]
    assert store.count() == 3  # 1 + 2: nothing of the refused call


# -- read commands never create a store ---------------------------------------------------------------


def test_audit_read_commands_on_a_missing_database_exit_2_and_create_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'var' / 'audit.sqlite3'}"
    runner = CliRunner()

    verified = runner.invoke(main, ["audit", "verify", "--database-url", url])
    exported_ = runner.invoke(main, ["audit", "export", "--database-url", url, "-o", str(tmp_path / "x")])

    assert verified.exit_code == 2 and "no audit database" in verified.output
    assert exported_.exit_code == 2 and "no audit database" in exported_.output
    assert list(tmp_path.iterdir()) == []


def test_audit_verify_from_another_directory_does_not_create_var(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EXPLAIN_DATABASE_URL", raising=False)

    result = CliRunner().invoke(main, ["audit", "export"])

    assert result.exit_code == 2 and not (tmp_path / "var").exists()


def test_audit_read_commands_on_a_database_without_the_schema_exit_2(url: str) -> None:
    if url.startswith("sqlite"):
        sqlite_file(url).parent.mkdir(parents=True)
        sqlite_file(url).write_bytes(b"")
    result = CliRunner().invoke(main, ["audit", "verify", "--database-url", url])

    assert result.exit_code == 2 and "holds no audit trail" in result.output
    with AuditStore(url, create=False) as reader, pytest.raises(AuditUnavailableError):
        reader.count()


def test_cli_names_a_malformed_or_unknown_expected_head(store: AuditStore, url: str) -> None:
    fill(store, 3)
    _, head = store.head()
    runner = CliRunner()

    typo = runner.invoke(main, ["audit", "verify", "--database-url", url, "--expected-head", head[:-1]])
    unknown = runner.invoke(main, ["audit", "verify", "--database-url", url, "--expected-head", "c" * 64])
    good = runner.invoke(main, ["audit", "verify", "--database-url", url, "--expected-head", head])

    assert typo.exit_code == 2 and "64 lowercase hex characters" in typo.output
    assert unknown.exit_code == 1 and "deleted" not in unknown.output.split("\n")[0]
    assert f"the expected head {'c' * 64} is not in chain" in unknown.output
    assert good.exit_code == 0 and f"ok: 3 records, head {head}" in good.output


def test_cli_verify_against_an_earlier_export_catches_a_restart(url: str, tmp_path: Path) -> None:
    runner = CliRunner()
    with AuditStore(url) as first:
        fill(first, 2)
    earlier = tmp_path / "earlier.jsonl"
    assert runner.invoke(main, ["audit", "export", "--database-url", url, "-o", str(earlier)]).exit_code == 0
    same = runner.invoke(main, ["audit", "verify", "--database-url", url, "--previous-export", str(earlier)])
    wipe(url)
    with AuditStore(url) as restarted:
        fill(restarted, 2)

    after = runner.invoke(main, ["audit", "verify", "--database-url", url, "--previous-export", str(earlier)])

    assert same.exit_code == 0, same.output
    assert after.exit_code == 1 and "RESTARTED" in after.output


# -- plots without a writable cache -------------------------------------------------------------------


def test_plots_are_served_uncached_when_the_plots_directory_is_not_writable(
    demo_models_dir: Path, tmp_path: Path, sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "not-a-dir").write_text("")
    app = audited_app(sqlite_url, demo_models_dir, tmp_path / "not-a-dir" / "plots")
    client = app.test_client()
    exp = explain(client, {"instances": [GERMAN_ROW]}).get_json()["explanations"][0]

    with caplog.at_level(logging.WARNING, logger="explain_service.plots.render"):
        first = client.get(exp["plots"]["shap_waterfall"])
        again = client.get(exp["plots"]["shap_waterfall"])

    assert first.status_code == 200 and first.mimetype == "image/png"
    assert first.data.startswith(b"\x89PNG") and again.data == first.data
    assert "not writable" in caplog.text


# -- error bodies name no database --------------------------------------------------------------------


def test_error_bodies_do_not_name_the_database(demo_models_dir: Path, tmp_path: Path) -> None:
    url = "postgresql+psycopg://auditor@127.0.0.1:1/secretdb?connect_timeout=2"
    client = audited_app(url, demo_models_dir, tmp_path / "plots").test_client()

    answers = [explain(client, {"instances": [GERMAN_ROW]}), client.get("/v1/explanations/abc")]

    for answer in answers:
        assert answer.status_code == 503
        text = answer.get_data(as_text=True)
        assert not [word for word in ("127.0.0.1", "secretdb", "auditor", "port") if word in text], text


def test_error_bodies_do_not_show_the_sqlite_path(demo_models_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "a-directory").mkdir()  # where the database file should be: it cannot be opened
    url = f"sqlite:///{tmp_path / 'a-directory'}"
    client = audited_app(url, demo_models_dir, tmp_path / "plots").test_client()

    answer = explain(client, {"instances": [GERMAN_ROW]})

    assert answer.status_code == 503 and str(tmp_path) not in answer.get_data(as_text=True)
    (tmp_path / "not-a-dir").write_text("")
    with pytest.raises(AuditWriteError, match="cannot create the directory") as caught:
        AuditStore(f"sqlite:///{tmp_path / 'not-a-dir' / 'audit.sqlite3'}").append([entry(0)])
    assert str(tmp_path) not in str(caught.value) and str(tmp_path) in caught.value.detail


# -- the same, through gunicorn -----------------------------------------------------------------------


def _post(port: int, body: dict[str, Any]) -> int:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/models/german-credit:explain",
        data=orjson.dumps(body),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


@pytest.mark.slow
def test_gunicorn_refuses_answers_after_rm_rf_and_a_restart_is_caught(
    demo_models_dir: Path, tmp_path: Path, sqlite_url: str
) -> None:
    from tests.test_audit_api import _serve

    export, models = tmp_path / "earlier.jsonl", tmp_path / "models"
    shutil.copytree(demo_models_dir / "german-credit", models / "german-credit")  # boots faster
    proc, port = _serve(sqlite_url, models, tmp_path / "plots", workers=2)
    try:
        before = [_post(port, {"instances": [GERMAN_ROW]}) for _ in range(4)]
        runner = CliRunner()
        assert (
            runner.invoke(
                main, ["audit", "export", "--database-url", sqlite_url, "-o", str(export)]
            ).exit_code
            == 0
        )
        shutil.rmtree(sqlite_file(sqlite_url).parent)
        after = [_post(port, {"instances": [GERMAN_ROW]}) for _ in range(6)]  # both workers answer
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    proc, port = _serve(sqlite_url, models, tmp_path / "plots", workers=2)  # a new, empty store
    try:
        restarted = _post(port, {"instances": [GERMAN_ROW]})
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    verified = runner.invoke(
        main, ["audit", "verify", "--database-url", sqlite_url, "--previous-export", str(export)]
    )

    assert before == [200] * 4 and after == [503] * 6 and restarted == 200
    assert verified.exit_code == 1 and "RESTARTED" in verified.output
