"""Review events over HTTP: who may post and read them, the rules, the status, references and routing."""

from __future__ import annotations

from pathlib import Path

import pytest

from explain_service.audit.store import AuditStore
from explain_service.registry.store import ModelRegistry
from tests.conftest import GERMAN_ROW
from tests.test_access import auth, secured_client


@pytest.fixture
def secured(demo_models_dir: Path, tmp_path: Path, url: str):
    return secured_client(demo_models_dir, url, tmp_path)


def explain(client, key: str, rows=None, references=None) -> list[dict]:
    body: dict = {"instances": rows or [GERMAN_ROW], "methods": ["shap"]}
    if references is not None:
        body["references"] = references
    r = client.post("/v1/models/german-credit:explain", json=body, headers=auth(key))
    assert r.status_code == 200, r.get_json()
    return r.get_json()["explanations"]


def review(client, key: str, record_id: str, **body):
    return client.post(f"/v1/explanations/{record_id}/reviews", json=body, headers=auth(key))


def test_escalate_resolve_override_readable_by_the_calling_system(secured) -> None:
    app, client, keys = secured
    (item,) = explain(client, keys["explain"])
    rid = item["id"]
    # The calling system reads its record's status; another explain key cannot see it at all.
    r = client.get(f"/v1/explanations/{rid}", headers=auth(keys["explain"]))
    assert r.get_json()["status"] == "unreviewed"
    assert client.get(f"/v1/explanations/{rid}/reviews", headers=auth(keys["other"])).status_code == 404
    assert review(client, keys["explain"], rid, action="approve").status_code == 403

    r = review(client, keys["review"], rid, action="escalate", comment="income looks wrong")
    assert r.status_code == 201, r.get_json()
    assert r.get_json()["by"] == "review-key" and r.get_json()["role"] == "review"
    r = review(client, keys["review"], rid, action="approve")
    assert r.status_code == 403 and "admin" in r.get_json()["message"]

    label = item["prediction"]["label"]
    other = next(c for c in item["prediction"]["probabilities"] if c != label)
    r = review(client, keys["admin"], rid, action="override", comment="policy 4.2", decision=other)
    assert r.status_code == 201, r.get_json()

    r = client.get(f"/v1/explanations/{rid}/reviews", headers=auth(keys["explain"]))
    answer = r.get_json()
    assert r.status_code == 200
    assert answer["status"] == "overridden" and answer["decision"] == other
    assert [(e["action"], e["by"]) for e in answer["reviews"]] == [
        ("escalate", "review-key"),
        ("override", "admin-key"),
    ]
    stored = client.get(f"/v1/explanations/{rid}", headers=auth(keys["explain"])).get_json()
    assert (stored["status"], stored["decision"]) == ("overridden", other)
    # Review events are chain records: the chain still verifies, and they name the reviewer.
    store: AuditStore = app.extensions["explain"].audit
    assert store.verify().ok
    kinds = [r.body["kind"] for r in store.list_records(limit=10)]
    assert kinds.count("review") == 2


def test_review_rules_answer_422_naming_the_field(secured) -> None:
    _, client, keys = secured
    (item,) = explain(client, keys["explain"])
    rid = item["id"]
    cases = [
        ({"action": "flag"}, "comment"),
        ({"action": "escalate", "comment": "   "}, "comment"),
        ({"action": "override", "comment": "x", "decision": "maybe"}, "decision"),
        ({"action": "override", "comment": "x"}, "decision"),
        ({"action": "approve", "decision": "good"}, "decision"),
        ({"action": "delete"}, "action"),
        ({"action": "approve", "comment": "x" * 4001}, "comment"),
        ({"action": "approve", "by": "someone-else"}, "by"),
    ]
    for body, field in cases:
        r = review(client, keys["review"], rid, **body)
        assert r.status_code == 422, (body, r.get_json())
        assert field in r.get_json()["errors"], (body, r.get_json())
    assert (
        client.get(f"/v1/explanations/{rid}/reviews", headers=auth(keys["review"])).get_json()["reviews"]
        == []
    )
    assert review(client, keys["review"], "no-such-record", action="approve").status_code == 404


def test_references_are_stored_searchable_and_checked(secured) -> None:
    app, client, keys = secured
    row = {**GERMAN_ROW}
    items = explain(client, keys["explain"], rows=[row, row], references=["case 2026-0412", None])
    assert items[0]["reference"] == "case 2026-0412" and "reference" not in items[1]
    # The model never sees it: the same row explains the same with or without a reference.
    assert items[0]["shap"] == items[1]["shap"]
    stored = client.get(f"/v1/explanations/{items[0]['id']}", headers=auth(keys["review"])).get_json()
    assert stored["explanations"][0]["reference"] == "case 2026-0412"
    from explain_service.audit.search import Filters

    page = app.extensions["explain"].index.search(Filters(reference="case 2026-0412"))
    assert [i.id for i in page.items] == [items[0]["id"]]
    bad = [
        ({"references": ["x" * 129]}, "references.0"),
        ({"references": ["a", "b"]}, "references"),
        ({"references": [5]}, "references.0"),
        ({"references": "case-1"}, "references"),
    ]
    for extra, field in bad:
        body = {"instances": [GERMAN_ROW], "methods": ["shap"], **extra}
        r = client.post("/v1/models/german-credit:explain", json=body, headers=auth(keys["explain"]))
        assert r.status_code == 422, extra
        assert field in r.get_json()["errors"], (extra, r.get_json())
    # A replay of a record with a reference is still identical (the reference is not recomputed).
    r = client.get(f"/v1/explanations/{items[0]['id']}/verify", headers=auth(keys["review"]))
    assert r.get_json()["identical"] is True, r.get_json()


def test_routing_rules_mark_answers_and_fill_the_queue(secured, demo_models_dir: Path) -> None:
    """The probability band fires exactly when the model's own top two probabilities are close."""
    app, client, keys = secured
    model = ModelRegistry(demo_models_dir).get("german-credit")
    band = model.manifest.review_rules.probability_band
    assert band == 0.1
    import pandas as pd

    rows = model.background.head(40).to_dict(orient="records")
    rows = [{k: (None if pd.isna(v) else v) for k, v in r.items()} for r in rows]
    rows = [
        {k: (int(v) if isinstance(v, float) and v.is_integer() else v) for k, v in r.items()} for r in rows
    ]
    items = explain(client, keys["explain"], rows=rows)
    proba = model.predict_proba(model.background.head(40))
    near = [abs(p[0] - p[1]) < 2 * band for p in proba]
    got = ["probability_band" in item["review"]["rules"] for item in items]
    assert got == near
    assert any(near) and not all(near)
    for item in items:
        assert item["review"]["required"] == bool(item["review"]["rules"])
    required = {item["id"] for item in items if item["review"]["required"]}
    queue = app.extensions["explain"].index.queue(limit=100)
    assert {i.id for i in queue.items} == required
