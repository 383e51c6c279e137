"""Access control: keys, the route -> role table, object-level checks, revocation, headers."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient

from explain_service.access.commands import is_loopback, prepare_serve
from explain_service.access.keys import KEY_PREFIX, KeyStore, key_hash
from explain_service.access.rules import RULES, at_least
from explain_service.app import create_app
from explain_service.audit.store import AuditStore
from explain_service.cli import main
from explain_service.config import Settings
from tests.conftest import GERMAN_ROW

ROLES = ("explain", "review", "admin")
CHEAP = "/openapi.json"  # a route that needs a key but loads no model


def secured_app(models_dir: Path, url: str, tmp_path: Path, **settings) -> Flask:
    return create_app(
        {
            "models_dir": str(models_dir),
            "database_url": url,
            "plots_dir": str(tmp_path / "plots"),
            "eager_load": False,
            **settings,
        }
    )


def secured_client(models_dir: Path, url: str, tmp_path: Path) -> tuple[Flask, FlaskClient, dict[str, str]]:
    """An app with the defaults (keys required), its client, one key per role and a second explain key."""
    app = secured_app(models_dir, url, tmp_path)
    store = app.extensions["explain_access"].keys
    keys = {role: store.create(f"{role}-key", role) for role in ROLES}
    keys["other"] = store.create("other-explain-key", "explain")
    return app, app.test_client(), keys


@pytest.fixture
def secured(demo_models_dir: Path, tmp_path: Path, url: str):
    """See :func:`secured_client`."""
    return secured_client(demo_models_dir, url, tmp_path)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def explain(client, key: str, methods: tuple[str, ...] = ("shap",)) -> str:
    body = {"instances": [GERMAN_ROW], "methods": list(methods)}
    r = client.post("/v1/models/german-credit:explain", json=body, headers=auth(key))
    assert r.status_code == 200, r.get_json()
    return str(r.get_json()["explanations"][0]["id"])


def test_every_route_has_an_access_rule(secured) -> None:
    app, _, _ = secured
    missing = sorted({rule.endpoint for rule in app.url_map.iter_rules()} - set(RULES))
    assert not missing, f"routes without a rule in explain_service/access/rules.py: {missing}"


def _sample_request(rule, record_id: str) -> tuple[str, str, dict | None]:
    values = {"name": "german-credit", "version": "1", "record_id": record_id, "plot": "shap_waterfall"}
    values["incident_id"] = record_id
    values["image"] = "importance"
    values["filename"] = "missing.css"
    values["anything"] = "no-such-page"
    path = rule.rule
    for arg in rule.arguments:
        path = path.replace(f"<{arg}>", values[arg]).replace(f"<path:{arg}>", values[arg])
    if "POST" in rule.methods:
        return "POST", path, {"instances": [GERMAN_ROW], "methods": ["shap"]}
    return "GET", path, None


def test_role_by_route_matrix_follows_the_table(secured) -> None:
    app, client, keys = secured
    record_id = explain(client, keys["explain"])
    for rule in app.url_map.iter_rules():
        needed = RULES[rule.endpoint]
        method, path, body = _sample_request(rule, record_id)
        for role in (None, *ROLES):
            headers = auth(keys[role]) if role else {}
            r = client.open(path, method=method, json=body, headers=headers)
            if needed.role == "public":
                # The sample request may be malformed for the route (a page form without its token).
                assert r.status_code not in (401, 403), (path, role)
            elif role is None:
                assert r.status_code == 401, (path, role)
                assert r.headers["WWW-Authenticate"].startswith("Bearer")
            elif not at_least(role, needed.role):
                assert r.status_code == 403, (path, role)
            else:
                assert r.status_code not in (401, 403), (path, role, r.get_data()[:200])


def test_an_explain_key_sees_only_its_own_records(secured) -> None:
    _, client, keys = secured
    record_id = explain(client, keys["explain"])
    own = [
        f"/v1/explanations/{record_id}",
        f"/v1/explanations/{record_id}/verify",
        f"/v1/explanations/{record_id}/plots/shap_waterfall.png",
    ]
    for path in own:
        assert client.get(path, headers=auth(keys["explain"])).status_code == 200, path
        other = client.get(path, headers=auth(keys["other"]))
        assert other.status_code == 404, path
        assert other.get_json() == {
            "code": 404,
            "status": "Not Found",
            "message": f"No explanation with id {record_id!r}",
        }
        # The same answer as for an id that does not exist: nothing to enumerate.
        missing = client.get(path.replace(record_id, "0" * 32), headers=auth(keys["other"]))
        assert missing.status_code == 404
        for role in ("review", "admin"):
            assert client.get(path, headers=auth(keys[role])).status_code == 200, (path, role)


def test_records_name_their_key_as_caller(secured) -> None:
    app, client, keys = secured
    record_id = explain(client, keys["other"])
    record = app.extensions["explain"].audit.get(record_id)
    assert record is not None and record.caller == "other-explain-key"
    read = client.get(f"/v1/explanations/{record_id}", headers=auth(keys["review"])).get_json()
    assert read["audit"]["caller"] == "other-explain-key"


def test_401_and_403_shapes(secured) -> None:
    _, client, keys = secured
    missing = client.get("/v1/models")
    assert missing.status_code == 401
    assert missing.headers["WWW-Authenticate"] == 'Bearer realm="explain-service"'
    assert missing.get_json()["code"] == 401 and missing.get_json()["status"] == "Unauthorized"
    for header in ("Basic dXNlcjpwdw==", "Bearer", f"Bearer {KEY_PREFIX}nope", "Bearer " + "x" * 5000):
        r = client.get("/v1/models", headers={"Authorization": header})
        assert r.status_code == 401, header
        assert 'error="invalid_token"' in r.headers["WWW-Authenticate"]
    forbidden = client.get("/metrics", headers=auth(keys["review"]))
    assert forbidden.status_code == 403
    assert forbidden.get_json() == {
        "code": 403,
        "status": "Forbidden",
        "message": "This route needs the admin role; this key has the review role",
    }
    # Unrouted paths need a key too, so the route list cannot be probed anonymously.
    assert client.get("/v1/nothing-here").status_code == 401
    assert client.get("/v1/nothing-here", headers=auth(keys["explain"])).status_code == 404


def test_library_versions_are_for_review_and_admin_keys(secured) -> None:
    _, client, keys = secured
    seen = {
        role: "libraries" in client.get("/v1/models/german-credit", headers=auth(keys[role])).get_json()
        for role in ROLES
    }
    assert seen == {"explain": False, "review": True, "admin": True}


def test_a_revoked_key_is_refused_within_two_seconds(secured, url: str) -> None:
    _, client, keys = secured
    assert client.get(CHEAP, headers=auth(keys["other"])).status_code == 200  # now cached
    # Revoked by another process (the CLI) through its own store.
    KeyStore(AuditStore(url)).revoke("other-explain-key", by="test")
    revoked_at = time.monotonic()
    while client.get(CHEAP, headers=auth(keys["other"])).status_code == 200:
        assert time.monotonic() - revoked_at < 2.0
        time.sleep(0.05)
    assert time.monotonic() - revoked_at < 2.0
    assert client.get(CHEAP, headers=auth(keys["explain"])).status_code == 200


def test_keys_are_stored_only_as_hashes_and_changes_are_audit_records(url: str) -> None:
    audit = AuditStore(url)
    store = KeyStore(audit)
    key = store.create("alice", "review", by="cli:root")
    assert key.startswith(KEY_PREFIX) and len(key) >= 40
    store.revoke("alice", by="cli:root")
    with audit.connection() as conn:
        stored = conn.exec_driver_sql("SELECT key_sha256 FROM api_keys").scalar_one()
    assert stored == key_hash(key) and key not in stored
    bodies = [r.body for r in reversed(audit.list_records())]
    assert bodies == [
        {"kind": "access", "event": "key.created", "name": "alice", "role": "review", "by": "cli:root"},
        {"kind": "access", "event": "key.revoked", "name": "alice", "role": "review", "by": "cli:root"},
    ]
    assert audit.verify().ok
    assert store.authenticate(key) is None


def test_the_keys_command_creates_lists_and_revokes(url: str) -> None:
    runner = CliRunner()
    created = runner.invoke(main, ["keys", "create", "--role", "explain", "--name", "calling-system"],
                            env={"EXPLAIN_DATABASE_URL": url})  # fmt: skip
    assert created.exit_code == 0, created.output
    key = created.output.strip().splitlines()[-1].split()[-1]
    store = KeyStore(url)
    found = store.authenticate(key)
    assert found is not None and (found.name, found.role) == ("calling-system", "explain")
    again = runner.invoke(main, ["keys", "create", "--role", "admin", "--name", "calling-system",
                                 "--database-url", url])  # fmt: skip
    assert again.exit_code != 0 and "exists already" in again.output
    bad_role = runner.invoke(main, ["keys", "create", "--role", "root", "--name", "x", "--database-url", url])
    assert bad_role.exit_code != 0
    listed = runner.invoke(main, ["keys", "list", "--database-url", url])
    lines = listed.output.strip().splitlines()
    assert lines[0] == "name\trole\tcreated\tlast used\trevoked"
    assert lines[1].startswith("calling-system\texplain\t") and lines[1].endswith("\t-")
    revoked = runner.invoke(main, ["keys", "revoke", "calling-system", "--database-url", url])
    assert revoked.exit_code == 0 and "revoked calling-system" in revoked.output
    assert KeyStore(url).authenticate(key) is None
    listed = runner.invoke(main, ["keys", "list", "--database-url", url])
    assert not listed.output.strip().splitlines()[1].endswith("\t-")
    assert runner.invoke(main, ["keys", "revoke", "nobody", "--database-url", url]).exit_code != 0


def test_first_serve_creates_one_admin_key_and_refuses_open_access_off_loopback(url: str, capsys) -> None:
    settings = Settings.from_env({}, database_url=url)
    prepare_serve(settings, "127.0.0.1", 8000, "http")
    printed = capsys.readouterr().out
    key = printed.split("EXPLAIN_KEY=")[1].split()[0]
    assert 'curl -s -H "Authorization: Bearer $EXPLAIN_KEY" http://localhost:8000/v1/models' in printed
    admin = KeyStore(url).authenticate(key)
    assert admin is not None and (admin.name, admin.role) == ("admin", "admin")
    prepare_serve(settings, "127.0.0.1", 8000, "http")
    assert "EXPLAIN_KEY" not in capsys.readouterr().out
    open_settings = Settings.from_env({}, database_url=url, auth="off")
    prepare_serve(open_settings, "::1", 8000, "http")
    with pytest.raises(Exception, match="loopback"):
        prepare_serve(open_settings, "0.0.0.0", 8000, "http")
    assert is_loopback("127.0.0.2") and is_loopback("localhost") and not is_loopback("10.0.0.1")
    with pytest.raises(ValueError, match="EXPLAIN_AUTH"):
        Settings.from_env({"EXPLAIN_AUTH": "maybe"})
    with pytest.raises(ValueError, match="EXPLAIN_RATELIMIT_DEFAULT"):
        Settings.from_env({"EXPLAIN_RATELIMIT_DEFAULT": "600/minute;lots/sometimes"})


@pytest.mark.parametrize(
    "env", [{"EXPLAIN_AUTH": "maybe"}, {"EXPLAIN_RATELIMIT_DEFAULT": "lots/sometimes"}], ids=["auth", "limit"]
)
def test_serve_refuses_a_bad_setting_in_one_line_before_starting(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["serve", "--port", "1"], env=env)
    assert result.exit_code == 2, result.output
    assert next(iter(env)) in result.output and "Traceback" not in result.output
    assert not (tmp_path / "var").exists()  # nothing was started or created


def test_security_headers_on_every_response(secured) -> None:
    _, client, keys = secured
    for path, headers in [("/healthz", {}), (CHEAP, {}), (CHEAP, auth(keys["admin"]))]:
        r = client.get(path, headers=headers)
        assert r.headers["Content-Security-Policy"].startswith("default-src 'self'; frame-ancestors 'none'")
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert r.headers["Referrer-Policy"] == "no-referrer"
        assert "Strict-Transport-Security" not in r.headers
        assert "Retry-After" not in r.headers
    secure = client.get("/healthz", base_url="https://localhost")
    assert secure.headers["Strict-Transport-Security"].startswith("max-age=")
    docs = client.get("/docs", headers=auth(keys["explain"]))
    assert "script-src" not in docs.headers["Content-Security-Policy"]
    assert "'unsafe-inline'" not in docs.headers["Content-Security-Policy"]
    assert b"<script" not in docs.data


def test_open_access_records_no_caller(demo_models_dir: Path, tmp_path: Path, sqlite_url: str) -> None:
    app = secured_app(demo_models_dir, sqlite_url, tmp_path, auth="off")
    client = app.test_client()
    r = client.post("/v1/models/german-credit:explain", data=orjson.dumps({"instances": [GERMAN_ROW]}),
                    content_type="application/json")  # fmt: skip
    assert r.status_code == 200
    record = app.extensions["explain"].audit.get(r.get_json()["explanations"][0]["id"])
    assert record is not None and record.caller is None
    assert client.get("/metrics").status_code == 200
