"""The stop button in one process: admin endpoints, the 503 answer, chain records, the CLI."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from explain_service.audit.store import AuditStore
from explain_service.audit.suspensions import (
    CACHE_SECONDS,
    BadSuspensionReason,
    SuspensionConflict,
    Suspensions,
)
from explain_service.cli import main
from tests.conftest import GERMAN_ROW
from tests.test_access import auth, secured_app

ROLES = ("explain", "review", "admin")
MODEL = "german-credit"
BODY = {"instances": [GERMAN_ROW]}


@pytest.fixture
def secured(demo_models_dir: Path, tmp_path: Path, url: str):
    app = secured_app(demo_models_dir, url, tmp_path)
    store = app.extensions["explain_access"].keys
    keys = {role: store.create(f"{role}-key", role) for role in ROLES}
    return app, app.test_client(), keys


def predict(client, key: str, version: str | None = None):
    where = f"/v1/models/{MODEL}" + (f"/versions/{version}" if version else "")
    return client.post(f"{where}:predict", json=BODY, headers=auth(key))


def test_suspend_and_resume_over_http(secured) -> None:
    app, client, keys = secured
    assert predict(client, keys["explain"]).status_code == 200
    for role in ("explain", "review"):
        r = client.post(f"/v1/models/{MODEL}:suspend", json={"reason": "x"}, headers=auth(keys[role]))
        assert r.status_code == 403
    r = client.post(
        f"/v1/models/{MODEL}:suspend", json={"reason": "drift in income data"}, headers=auth(keys["admin"])
    )
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["suspension"]["by"] == "admin-key"
    for path in (":predict", ":explain", "/versions/1:predict", "/versions/1:explain"):
        r = client.post(
            f"/v1/models/{MODEL}{path}", json=BODY, headers=auth(keys["explain"])
        )  # shap by default
        assert r.status_code == 503, path
        answer = r.get_json()
        assert (
            answer["message"].startswith("model_suspended:") and "drift in income data" in answer["message"]
        )
        assert answer["errors"]["model"] == ["model_suspended: drift in income data"]
    described = client.get(f"/v1/models/{MODEL}", headers=auth(keys["explain"])).get_json()
    assert described["suspension"]["scope"] == "model"
    assert described["suspension"]["reason"] == "drift in income data"
    again = client.post(f"/v1/models/{MODEL}:suspend", json={"reason": "y"}, headers=auth(keys["admin"]))
    assert again.status_code == 409
    # Nothing was explained while suspended: no explanation record, only the suspension's.
    store: AuditStore = app.extensions["explain"].audit
    kinds = [r.body["kind"] for r in store.list_records(limit=50)]
    assert "explanation" not in kinds and kinds.count("suspension") == 1

    r = client.post(f"/v1/models/{MODEL}:resume", json={}, headers=auth(keys["admin"]))
    assert r.status_code == 200, r.get_json()
    assert predict(client, keys["explain"]).status_code == 200
    assert client.get(f"/v1/models/{MODEL}", headers=auth(keys["explain"])).get_json()["suspension"] is None
    assert client.post(f"/v1/models/{MODEL}:resume", json={}, headers=auth(keys["admin"])).status_code == 409
    suspensions = [r.body for r in store.list_records(limit=50) if r.body["kind"] == "suspension"]
    assert [(b["action"], b["by"], b["version"]) for b in reversed(suspensions)] == [
        ("suspend", "admin-key", None),
        ("resume", "admin-key", None),
    ]
    assert store.verify().ok


def test_a_version_suspension_and_a_model_suspension_are_separate(secured) -> None:
    _, client, keys = secured
    admin = auth(keys["admin"])
    r = client.post(f"/v1/models/{MODEL}/versions/1:suspend", json={"reason": "bad batch"}, headers=admin)
    assert r.status_code == 200
    assert predict(client, keys["explain"], "1").status_code == 503
    client.post(f"/v1/models/{MODEL}:suspend", json={"reason": "all off"}, headers=admin)
    client.post(f"/v1/models/{MODEL}:resume", json={}, headers=admin)
    r = predict(client, keys["explain"], "1")
    assert r.status_code == 503 and "bad batch" in r.get_json()["message"]
    assert client.post(f"/v1/models/{MODEL}/versions/1:resume", json={}, headers=admin).status_code == 200
    assert predict(client, keys["explain"], "1").status_code == 200
    bad = [
        (f"/v1/models/{MODEL}:suspend", {}, 422),
        (f"/v1/models/{MODEL}:suspend", {"reason": ""}, 422),
        (f"/v1/models/{MODEL}:suspend", {"reason": "x" * 501}, 422),
        ("/v1/models/no-such-model:suspend", {"reason": "x"}, 404),
        (f"/v1/models/{MODEL}/versions/99:suspend", {"reason": "x"}, 404),
    ]
    for path, body, status in bad:
        assert client.post(path, json=body, headers=admin).status_code == status, (path, body)


def test_the_cli_suspends_a_running_service_within_the_cache_time(
    secured, demo_models_dir: Path, url: str
) -> None:
    """Another process (the CLI) suspends; this app's worker obeys once its one-second cache expires."""
    _, client, keys = secured
    assert predict(client, keys["explain"]).status_code == 200  # the state is now cached as "running"
    runner = CliRunner()
    args = ["--models-dir", str(demo_models_dir), "--database-url", url]
    result = runner.invoke(main, ["models", "suspend", f"{MODEL}@1", "--reason", "incident 12", *args])
    assert result.exit_code == 0, result.output
    started = time.monotonic()
    while predict(client, keys["explain"]).status_code != 503:
        assert time.monotonic() - started < CACHE_SECONDS + 1.0
        time.sleep(0.05)
    result = runner.invoke(main, ["models", "suspensions", MODEL, "--database-url", url])
    assert "incident 12" in result.output and "cli:" in result.output
    result = runner.invoke(main, ["models", "resume", f"{MODEL}@1", *args])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["models", "suspend", "nope", "--reason", "x", *args])
    assert result.exit_code != 0 and "no model nope" in result.output
    # A version left out after the @ is refused, not taken for the whole model.
    result = runner.invoke(main, ["models", "suspend", f"{MODEL}@", "--reason", "x", *args])
    assert result.exit_code == 2 and "NAME@VERSION" in result.output
    with AuditStore(url) as store:
        assert Suspensions(store).of_model(MODEL) == []
        assert store.verify().ok


def test_a_suspended_models_answer_is_a_sentence_not_a_failure_report(secured, caplog) -> None:
    """The refusal is the admin's decision, not a fault: no pointer to the log, no ERROR line per call."""
    _app, client, keys = secured
    client.post(
        f"/v1/models/{MODEL}:suspend", json={"reason": "drift in income data"}, headers=auth(keys["admin"])
    )
    caplog.clear()
    r = predict(client, keys["explain"])
    message = r.get_json()["message"]
    assert r.status_code == 503
    assert message == (
        f"model_suspended: model 'german-credit' is suspended: drift in income data. "
        f"Request id {r.headers['X-Request-ID']}."
    )
    assert not [x for x in caplog.records if x.levelname == "ERROR"]


def test_resume_answers_the_state_after_it_not_the_lifted_suspension(secured) -> None:
    """Lifting one suspension may leave another in force: the answer says which, read after the resume."""
    _, client, keys = secured
    admin = auth(keys["admin"])
    post = lambda path, body: client.post(f"/v1/models/{MODEL}{path}", json=body, headers=admin)  # noqa: E731
    assert post("/versions/1:suspend", {"reason": "bad batch"}).status_code == 200
    assert post(":suspend", {"reason": "all off"}).status_code == 200

    version_resumed = post("/versions/1:resume", {})
    assert version_resumed.status_code == 200, version_resumed.get_json()
    answer = version_resumed.get_json()
    assert answer["lifted"]["reason"] == "bad batch" and answer["lifted"]["scope"] == "version"
    # version 1 still answers 503: its whole model is suspended
    assert answer["suspended"] is True and answer["suspension"]["reason"] == "all off"
    assert [s["reason"] for s in answer["in_force"]] == ["all off"]
    assert predict(client, keys["explain"], "1").status_code == 503

    assert post("/versions/1:suspend", {"reason": "bad batch again"}).status_code == 200
    model_resumed = post(":resume", {}).get_json()
    assert model_resumed["lifted"]["reason"] == "all off" and model_resumed["lifted"]["scope"] == "model"
    assert model_resumed["suspended"] is False and model_resumed["suspension"] is None
    assert [(s["scope"], s["reason"]) for s in model_resumed["in_force"]] == [("version", "bad batch again")]

    last = post("/versions/1:resume", {}).get_json()
    assert (last["suspended"], last["suspension"], last["in_force"]) == (False, None, [])
    assert last["lifted"]["reason"] == "bad batch again"
    assert predict(client, keys["explain"], "1").status_code == 200


def register_reasoning_model(models_dir: Path) -> str:
    """A tiny model whose name contains the word "reason", as a conflict message about it would."""
    import numpy as np
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    from explain_service.registry.store import register_model

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x1": rng.normal(size=100), "x2": rng.normal(size=100)})
    model = LogisticRegression().fit(frame, np.where(frame["x1"] > 0, "yes", "no"))
    register_model(model, "treason-screen", background=frame.iloc[:30], models_dir=models_dir)
    return "treason-screen"


@pytest.mark.parametrize(
    ("first", "second", "status", "field"),
    [
        (None, {"reason": "   "}, 422, "reason"),
        ({"reason": "first"}, {"reason": "second"}, 409, None),
    ],
    ids=["blank-reason-422", "already-suspended-409"],
)
def test_a_bad_reason_is_422_and_a_repeated_suspension_409_whatever_the_model_is_called(
    tmp_path: Path, url: str, first, second, status: int, field: str | None
) -> None:
    """The status follows the error's type, not its wording: "treason" in a 409's message is no bad reason."""
    name = register_reasoning_model(tmp_path / "models")
    app = secured_app(tmp_path / "models", url, tmp_path)
    admin = auth(app.extensions["explain_access"].keys.create("admin-key", "admin"))
    client = app.test_client()
    if first is not None:
        assert client.post(f"/v1/models/{name}:suspend", json=first, headers=admin).status_code == 200
    r = client.post(f"/v1/models/{name}:suspend", json=second, headers=admin)
    answer = r.get_json()
    assert r.status_code == status, answer
    if field is None:
        assert answer["message"] == f"model '{name}' is already suspended" and "reason" not in answer.get(
            "errors", {}
        )
    else:
        assert answer["errors"][field] == ["a suspension needs a reason"]
    resumed = client.post(f"/v1/models/{name}:resume", json={}, headers=admin)
    assert resumed.status_code == (200 if first is not None else 409)


def test_the_store_raises_one_type_per_refusal(tmp_path: Path) -> None:
    with AuditStore(f"sqlite:///{tmp_path / 'a.sqlite3'}") as store:
        suspensions = Suspensions(store)
        with pytest.raises(BadSuspensionReason, match="needs a reason"):
            suspensions.suspend("reason", None, " \t", by=None)
        with pytest.raises(BadSuspensionReason, match="at most 500 characters"):
            suspensions.suspend("reason", None, "x" * 501, by=None)
        suspensions.suspend("reason", "1", "why", by=None)
        with pytest.raises(SuspensionConflict, match="model 'reason' version '1' is already suspended"):
            suspensions.suspend("reason", "1", "why again", by=None)
        with pytest.raises(SuspensionConflict, match="model 'reason' is not suspended"):
            suspensions.resume("reason", None, by=None)
