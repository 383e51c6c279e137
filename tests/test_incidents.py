"""Incidents: opened from stored explanations, chained, listed, exported with inputs opened or withheld."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from explain_service.audit.incident_export import export_incidents, verify_incident_export
from explain_service.audit.incidents import IncidentIndex, commitment
from explain_service.audit.store import AuditStore
from explain_service.audit.tally import Tally
from explain_service.cli import main
from tests.conftest import GERMAN_ROW, open_app

FEATURES = sorted(GERMAN_ROW)


@pytest.fixture
def served(demo_models_dir: Path, tmp_path: Path, url: str):
    app = open_app(demo_models_dir, url, tmp_path / "plots")
    client = app.test_client()
    rows = [GERMAN_ROW, {**GERMAN_ROW, "age": 61, "sex": "male"}, {**GERMAN_ROW, "credit_amount": 900}]
    r = client.post("/v1/models/german-credit:explain", json={"instances": rows, "methods": ["shap"]})
    assert r.status_code == 200, r.get_json()
    ids = [e["id"] for e in r.get_json()["explanations"]]
    return app, client, url, ids


def incident(ids: list[str], **fields) -> dict:
    body = {
        "title": "Young women declined on thin evidence",
        "severity": "high",
        "harm_type": "discrimination",
        "description": "Three applicants <script>alert(1)</script> declined.",
        "explanations": ids,
    }
    return {**body, **fields}


def _leaves(value: Any) -> list[Any]:
    """Every scalar in a JSON value, and every string's words, so a value hidden in text is found too."""
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in _leaves(item)]
    if isinstance(value, list):
        return [leaf for item in value for leaf in _leaves(item)]
    if isinstance(value, str):
        return [value, *value.split()]
    return [value]


def test_an_incident_is_a_chain_record_holding_commitments_not_values(served) -> None:
    _app, client, url, ids = served
    r = client.post("/v1/incidents", json=incident(ids[:2]))
    assert r.status_code == 201, r.get_json()
    answer = r.get_json()
    store = AuditStore(url)
    record = store.get(answer["id"])
    assert record.body["kind"] == "incident" and answer["seq"] == record.seq == 4
    openings = store.list_records(limit=1)[0]
    assert openings.seq == 5 and openings.body == {**openings.body, "kind": "incident_openings"}
    assert openings.body["incident"] == answer["id"]
    for link, rid in zip(record.body["explanations"], ids[:2], strict=True):
        explained = store.get(rid)
        assert (link["id"], link["seq"], link["hash"]) == (rid, explained.seq, explained.hash)
        assert link["prediction"] == explained.body["explanation"]["prediction"]
        assert sorted(link["inputs"]) == FEATURES
        salts = openings.body["salts"][rid]
        for feature, sealed in link["inputs"].items():
            assert sealed == commitment(rid, feature, explained.body["instance"][feature], salts[feature])
    # no input value appears in the incident record itself (compared as values: a hash may hold "5951")
    assert "female" not in _leaves(record.body) and 5951 not in _leaves(record.body)
    assert store.verify().ok
    got = client.get(f"/v1/incidents/{answer['id']}").get_json()
    assert got == answer and got["explanations"][1]["prediction"]["label"] in ("good", "bad")


def test_incident_requests_are_validated_and_unknown_ids_are_refused(served) -> None:
    _app, client, url, ids = served
    cases = [
        (incident(ids, severity="huge"), "severity"),
        (incident(ids, harm_type="bad vibes"), "harm_type"),
        (incident([]), "explanations"),
        (incident(["nope"]), "explanations"),
        (incident([ids[0], ids[0]]), "explanations"),
        (incident(ids, title=""), "title"),
        ({**incident(ids), "extra": 1}, "extra"),
    ]
    for body, field in cases:
        r = client.post("/v1/incidents", json=body)
        assert r.status_code == 422, (body, r.get_json())
        assert field in r.get_json()["errors"], r.get_json()
    assert AuditStore(url).count() == 3  # nothing appended
    r = client.post("/v1/incidents", json=incident(ids))
    assert client.get(f"/v1/incidents/{ids[0]}").status_code == 404  # an explanation is not an incident
    assert client.get("/v1/incidents/" + "x" * 300).status_code == 404
    assert r.status_code == 201


def test_incidents_list_newest_first_by_keyset_pages(served) -> None:
    _app, client, _url, ids = served
    assert client.get("/v1/incidents").get_json() == {"incidents": [], "next_before_seq": None}
    opened = [
        client.post("/v1/incidents", json=incident([i], title=f"t{n}")).get_json() for n, i in enumerate(ids)
    ]
    page = client.get("/v1/incidents?limit=2").get_json()
    assert [i["id"] for i in page["incidents"]] == [opened[2]["id"], opened[1]["id"]]
    assert page["incidents"][0]["severity"] == "high" and page["incidents"][0]["title"] == "t2"
    rest = client.get(f"/v1/incidents?limit=2&before_seq={page['next_before_seq']}").get_json()
    assert [i["id"] for i in rest["incidents"]] == [opened[0]["id"]] and rest["next_before_seq"] is None
    assert client.get("/v1/incidents?model=other").get_json()["incidents"] == []
    assert client.get("/v1/incidents?limit=0").status_code == 422


def _export(app, **kwargs) -> bytes:
    services = app.extensions["explain"]
    out = io.BytesIO()
    export_incidents(services.audit, Tally(services.audit, [IncidentIndex()]), out, **kwargs)
    return out.getvalue()


def test_a_redacted_export_withholds_values_and_still_verifies(served) -> None:
    app, client, _url, ids = served
    client.post("/v1/incidents", json=incident(ids[:2]))
    client.post("/v1/incidents", json=incident(ids[2:], severity="low", harm_type="wrong_decision"))

    full = _export(app)
    check = verify_incident_export(io.BytesIO(full))
    assert check.ok, check.problems
    assert (check.incidents, check.opened, check.withheld) == (2, 3 * len(FEATURES), 0)

    redacted = _export(app, withheld=lambda name, version: {"sex", "age"})
    check = verify_incident_export(io.BytesIO(redacted))
    assert check.ok, check.problems
    assert (check.opened, check.withheld) == (3 * (len(FEATURES) - 2), 3 * 2)
    lines = [orjson.loads(line) for line in redacted.splitlines()]
    for line in lines[:-1]:
        for rid, opened in line["openings"].items():
            assert "sex" not in opened and "age" not in opened
            assert line["withheld"][rid] == ["age", "sex"]
    assert b"female" not in redacted and b'"male"' not in redacted
    # the incident records are byte for byte those of the full export: redaction changes no sealed byte
    assert [orjson.loads(x)["incident"] for x in full.splitlines()[:-1]] == [
        x["incident"] for x in lines[:-1]
    ]
    assert lines[-1]["trailer"]["redacted"] is True and lines[-1]["trailer"]["count"] == 2

    unknown_model = _export(app, withheld=lambda name, version: None)  # a version gone: withhold all
    assert verify_incident_export(io.BytesIO(unknown_model)).opened == 0


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda line: line["incident"]["body"].update(severity="low"), id="edited-severity"),
        pytest.param(lambda line: line["incident"].update(caller="someone"), id="edited-caller"),
        pytest.param(
            lambda line: next(iter(line["openings"].values()))["credit_amount"].update(value=1),
            id="edited-value",
        ),
        pytest.param(lambda line: next(iter(line["openings"].values())).pop("job"), id="dropped-input"),
        pytest.param(
            lambda line: line.update(incident={**line["incident"], "body": "x"}), id="body-replaced"
        ),
    ],
)
def test_a_changed_export_fails_its_check(served, tamper) -> None:
    app, client, _url, ids = served
    client.post("/v1/incidents", json=incident(ids[:1]))
    lines = _export(app, withheld=lambda name, version: {"sex"}).splitlines()
    line = orjson.loads(lines[0])
    tamper(line)
    changed = [orjson.dumps(line), *lines[1:]]
    check = verify_incident_export(changed)
    assert not check.ok and check.problems
    assert not verify_incident_export(lines[:1]).ok  # cut short: no trailer


def test_the_incidents_commands_export_and_verify(served, tmp_path: Path, demo_models_dir: Path) -> None:
    _app, client, url, ids = served
    client.post("/v1/incidents", json=incident(ids))
    target = tmp_path / "incidents.jsonl"
    runner = CliRunner()
    args = ["incidents", "export", "--database-url", url, "--models-dir", str(demo_models_dir)]
    args += ["--redact-feature", "sex", "-o", str(target)]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert b"female" not in target.read_bytes()  # sex named here; age (in bands) by the model's manifest
    assert result.stderr.strip().splitlines()[-1] == "1 incident (redacted)"
    result = runner.invoke(main, ["incidents", "verify", str(target)])
    assert result.exit_code == 0, result.output
    assert (
        "ok: 1 incident verified by chain hash" in result.output
        and f"{3 * (len(FEATURES) - 2)} inputs opened" in result.output
    )
    text = target.read_bytes().replace(b'"severity":"high"', b'"severity":"low"')
    target.write_bytes(text)
    result = runner.invoke(main, ["incidents", "verify", str(target)])
    assert result.exit_code == 1 and "does not match its chain hash" in result.output


def test_personal_and_sensitive_features_of_the_manifest_are_withheld(tmp_path: Path) -> None:
    import numpy as np
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    from explain_service.audit.incident_export import manifest_withheld
    from explain_service.errors import RegistrationError
    from explain_service.registry.store import register_model

    rng = np.random.default_rng(0)
    model_frame = pd.DataFrame({"income": rng.normal(size=80), "postcode": rng.integers(1000, 9999, 80)})
    model = LogisticRegression().fit(model_frame, model_frame["income"] > 0)
    models = tmp_path / "models"
    manifest = register_model(
        model, "toy", background=model_frame, models_dir=models, personal=["postcode"], owner="Risk team"
    )
    assert manifest.personal == ("postcode",) and manifest.owner == "Risk team"
    assert manifest_withheld(str(models), ["income"])("toy", "1") == {"postcode", "income"}
    assert manifest_withheld(str(models))("toy", "2") is None  # no such version: withhold everything
    with pytest.raises(RegistrationError, match="personal features \\['zip'\\]"):
        register_model(model, "toy", background=model_frame, models_dir=models, personal=["zip"])
