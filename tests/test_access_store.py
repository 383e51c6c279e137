"""The key store lives on the audit store: one engine, one schema, the same file checks, clear failures."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import inspect

from explain_service.access.keys import KeyStore
from explain_service.app import create_app
from explain_service.audit.errors import AuditError
from explain_service.audit.store import AuditStore
from explain_service.cli import main

CHEAP = "/openapi.json"


def test_the_app_keys_use_the_audit_stores_engine_and_schema(
    demo_models_dir: Path, tmp_path: Path, url: str
) -> None:
    app = create_app({"models_dir": str(demo_models_dir), "database_url": url, "eager_load": False})
    keys = app.extensions["explain_access"].keys
    assert keys.audit is app.extensions["explain"].audit
    # The audit store's schema creation makes the keys table: nothing in the key store creates one.
    store = AuditStore(url)
    assert store.ping()
    with store.connection() as conn:
        assert inspect(conn).has_table("api_keys")
    key = keys.create("caller", "explain")
    r = app.test_client().get(CHEAP, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200


def test_a_schema_made_before_the_keys_table_gains_it(sqlite_url: str) -> None:
    store = AuditStore(sqlite_url)
    assert store.ping()
    with store.connection(write=True) as conn:
        conn.exec_driver_sql("DROP TABLE api_keys")
    store.close()
    keys = KeyStore(sqlite_url)  # a new process: its store finds the table missing and adds it
    key = keys.create("late", "review")
    found = keys.authenticate(key)
    assert found is not None and found.role == "review"
    assert keys.audit.verify().ok and keys.audit.count() == 1  # the key.created record


def test_a_replaced_database_file_refuses_keys_instead_of_reading_another(
    demo_models_dir: Path, tmp_path: Path, sqlite_url: str
) -> None:
    app = create_app({"models_dir": str(demo_models_dir), "database_url": sqlite_url, "eager_load": False})
    key = app.extensions["explain_access"].keys.create("caller", "explain")
    client = app.test_client()
    assert client.get(CHEAP, headers={"Authorization": f"Bearer {key}"}).status_code == 200
    path = sqlite_url.removeprefix("sqlite:///")
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    AuditStore(sqlite_url).ping()  # another store makes a new, empty file at the path
    app.extensions["explain_access"].keys._cache.clear()  # past the one-second cache
    r = client.get(CHEAP, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 503 and r.get_json()["code"] == 503


@pytest.fixture
def uncreatable(tmp_path: Path) -> str:
    """A SQLite URL whose directory cannot be made (a regular file stands where a directory must)."""
    (tmp_path / "file").write_text("not a directory")
    return f"sqlite:///{tmp_path}/file/var/audit.sqlite3"


def test_an_uncreatable_database_directory_starts_the_app_answers_503_and_logs(
    demo_models_dir: Path, uncreatable: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="explain_service"):
        app = create_app({"models_dir": str(demo_models_dir), "database_url": uncreatable})
    logged = caplog.text
    assert "cannot create the directory" in logged and "audit store cannot be used" in logged
    client = app.test_client()
    r = client.get(CHEAP, headers={"Authorization": "Bearer xsk_" + "a" * 43})
    assert r.status_code == 503 and r.get_json()["status"] == "Service Unavailable"
    assert "file/var" not in r.get_data(as_text=True)  # no path in an answer
    with pytest.raises(AuditError):
        KeyStore(uncreatable).list()


@pytest.mark.parametrize(
    "args",
    [
        ["keys", "list"],
        ["keys", "create", "--role", "admin", "--name", "a"],
        ["keys", "revoke", "a"],
        ["serve"],
    ],
    ids=["list", "create", "revoke", "serve"],
)
def test_commands_on_an_uncreatable_database_directory_exit_2_with_one_clear_line(
    uncreatable: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "prometheus"))
    result = CliRunner().invoke(main, args, env={"EXPLAIN_DATABASE_URL": uncreatable})
    assert result.exit_code == 2, result.output
    assert "cannot be used" in result.output and "cannot create the directory" in result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
