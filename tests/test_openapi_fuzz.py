"""Our own OpenAPI document: generated requests (with a valid key) never get a 5xx; answers match it.

schemathesis drives each operation with requests generated from the document and checks the
answers against the response schemas it declares; a direct test validates real ``:explain``
answers (every method, classifier and regressor) with jsonschema against the same document.
"""

from __future__ import annotations

from typing import Any

import jsonschema
import orjson
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from explain_service.app import create_app
from tests.conftest import GERMAN_ROW, OPEN_ACCESS

OPERATIONS = [
    "GET /v1/models/{name}",
    "GET /v1/models/{name}/versions/{version}",
    "POST /v1/models/{name}:predict",
    "POST /v1/models/{name}/versions/{version}:predict",
    "POST /v1/models/{name}:explain",
    "POST /v1/models/{name}/versions/{version}:explain",
    "GET /v1/explanations/{record_id}",
    "GET /v1/explanations/{record_id}/verify",
    "GET /v1/explanations/{record_id}/plots/{plot}.png",
    "GET /v1/explanations/{record_id}/reviews",
    "POST /v1/explanations/{record_id}/reviews",
]


@pytest.fixture(scope="module")
def operations(demo_models_dir, tmp_path_factory):
    var = tmp_path_factory.mktemp("fuzz")
    app = create_app(
        {
            "models_dir": str(demo_models_dir),
            "database_url": f"sqlite:///{var}/audit.sqlite3",
            "plots_dir": str(var / "plots"),
            "ratelimit_default": "",
            "counterfactual_daily_quota": 0,
            "request_deadline_seconds": 0,
        }
    )
    key = app.extensions["explain_access"].keys.create("fuzz", "admin")
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app, headers=bearer(key))
    found = {op.label: op for op in (r.ok() for r in schema.get_all_operations())}
    assert set(OPERATIONS) <= set(found), sorted(found)
    return found, key


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize("label", OPERATIONS)
def test_generated_requests_never_get_a_server_error(operations, label: str) -> None:
    found, key = operations
    operation = found[label]

    @settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy())
    def check(case) -> None:
        response = case.call(headers=bearer(key))
        assert response.status_code < 500, (label, case.path_parameters, case.body, response.text[:300])
        case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])

    check()


EXPLAIN_BODY = {
    "instances": [GERMAN_ROW],
    "methods": ["shap", "lime", "counterfactual"],
    "options": {"lime": {"num_samples": 256}, "counterfactual": {"count": 2}},
}
KNOWN_GOOD = {
    "GET /v1/models/{name}": ({"name": "german-credit"}, None),
    "GET /v1/models/{name}/versions/{version}": ({"name": "diabetes-gbr", "version": "1"}, None),
    "POST /v1/models/{name}:predict": ({"name": "german-credit"}, {"instances": [GERMAN_ROW]}),
    "POST /v1/models/{name}/versions/{version}:predict": (
        {"name": "german-credit", "version": "1"},
        {"instances": [GERMAN_ROW]},
    ),
    "POST /v1/models/{name}:explain": ({"name": "german-credit"}, EXPLAIN_BODY),
    "POST /v1/models/{name}/versions/{version}:explain": (
        {"name": "german-credit", "version": "1"},
        EXPLAIN_BODY,
    ),
}


@pytest.mark.parametrize("label", list(KNOWN_GOOD))
def test_successful_answers_conform_to_the_document(operations, label: str) -> None:
    """Generated requests mostly name no model; these succeed, so their 200 answers get checked."""
    found, key = operations
    path_parameters, body = KNOWN_GOOD[label]
    kwargs = {"body": body, "media_type": "application/json"} if body is not None else {}
    case = found[label].Case(path_parameters=path_parameters, **kwargs)
    response = case.call(headers=bearer(key))
    assert response.status_code == 200, response.text[:300]
    case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])


def as_json_schema(node: Any) -> Any:
    """An OpenAPI 3.0 schema as JSON Schema: ``nullable: true`` becomes "or null"."""
    if isinstance(node, list):
        return [as_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {
        k: (
            {n: as_json_schema(v) for n, v in node[k].items()}
            if k == "properties"
            else as_json_schema(node[k])
        )
        for k in node
        if k != "nullable"
    }
    return {"anyOf": [out, {"type": "null"}]} if node.get("nullable") is True else out


@pytest.fixture(scope="module")
def response_validator(client_module):
    spec = client_module.get("/openapi.json").get_json()

    def validator(path: str, method: str, status: str = "200") -> jsonschema.Validator:
        schema = spec["paths"][path][method]["responses"][status]["content"]["application/json"]["schema"]
        root = {**as_json_schema(schema), "components": as_json_schema(spec["components"])}
        return jsonschema.Draft202012Validator(root)

    return validator


@pytest.fixture(scope="module")
def client_module(demo_models_dir, tmp_path_factory):
    var = tmp_path_factory.mktemp("answers")
    app = create_app(
        {
            "models_dir": str(demo_models_dir),
            "database_url": f"sqlite:///{var}/audit.sqlite3",
            "plots_dir": str(var / "plots"),
            **OPEN_ACCESS,
        }
    )
    return app.test_client()


def _diabetes_row(client) -> dict[str, float]:
    features = client.get("/v1/models/diabetes-gbr").get_json()["features"]
    return {f["name"]: (f["min"] + f["max"]) / 2 for f in features}


ANSWERS = {
    "classifier": (
        "german-credit",
        lambda client: {
            "instances": [GERMAN_ROW],
            "methods": ["shap", "lime", "counterfactual"],
            "target": "bad",
            "options": {"lime": {"num_samples": 256, "stability": 2}, "counterfactual": {"count": 2}},
        },
    ),
    "classifier-agnostic": (
        "wine-mlp",
        lambda client: {
            "instances": [
                {f["name"]: f["min"] for f in client.get("/v1/models/wine-mlp").get_json()["features"]}
            ],
            "methods": ["shap", "lime", "counterfactual"],
            "options": {"shap": {"max_evals": 2000}, "lime": {"num_samples": 256}},
        },
    ),
    "regressor": (
        "diabetes-gbr",
        lambda client: {
            "instances": [_diabetes_row(client)],
            "methods": ["shap", "lime", "counterfactual"],
            "options": {"counterfactual": {"desired_range": [0, 1], "count": 3, "time_budget_ms": 50}},
        },
    ),
}


@pytest.mark.parametrize("kind", list(ANSWERS))
def test_real_explain_answers_match_the_openapi_document(client_module, response_validator, kind) -> None:
    name, body = ANSWERS[kind]
    r = client_module.post(
        f"/v1/models/{name}:explain", data=orjson.dumps(body(client_module)), content_type="application/json"
    )
    assert r.status_code == 200, r.data[:300]
    answer = r.get_json()
    response_validator("/v1/models/{name}:explain", "post").validate(answer)
    item = answer["explanations"][0]
    assert {"shap", "lime", "counterfactual", "reasons"} <= set(item)
    stored = client_module.get(f"/v1/explanations/{item['id']}")
    assert stored.status_code == 200
    response_validator("/v1/explanations/{record_id}", "get").validate(stored.get_json())


def test_the_document_refuses_what_the_service_does_not_send(response_validator) -> None:
    """The response schemas are closed: an undeclared or mistyped field fails validation."""
    validator = response_validator("/v1/models/{name}:explain", "post")
    base = {"model": {"name": "m", "version": "1", "sha256": "0"}, "explanations": [{"id": "x"}]}
    validator.validate(base)
    for bad in (
        {"lime": {"weights": {"age": "high"}}},
        {"counterfactual": {"surprise": 1}},
        {"reasons": [{"feature": 1}]},
    ):
        with pytest.raises(jsonschema.ValidationError):
            validator.validate({**base, "explanations": [{"id": "x", **bad}]})


def test_review_and_suspension_answers_match_the_openapi_document(client_module, response_validator) -> None:
    body = {"instances": [GERMAN_ROW], "references": ["case 1"]}
    r = client_module.post("/v1/models/german-credit:explain", json=body)
    item = r.get_json()["explanations"][0]
    response_validator("/v1/models/{name}:explain", "post").validate(r.get_json())
    assert item["reference"] == "case 1" and isinstance(item["review"]["required"], bool)
    path = f"/v1/explanations/{item['id']}/reviews"
    r = client_module.post(path, json={"action": "override", "comment": "c", "decision": "bad"})
    assert r.status_code == 201, r.get_json()
    response_validator("/v1/explanations/{record_id}/reviews", "post", "201").validate(r.get_json())
    response_validator("/v1/explanations/{record_id}/reviews", "get").validate(
        client_module.get(path).get_json()
    )
    stored = client_module.get(f"/v1/explanations/{item['id']}").get_json()
    response_validator("/v1/explanations/{record_id}", "get").validate(stored)
    assert stored["status"] == "overridden"
    r = client_module.post("/v1/models/wine-mlp/versions/1:suspend", json={"reason": "schema check"})
    response_validator("/v1/models/{name}/versions/{version}:suspend", "post").validate(r.get_json())
    described = client_module.get("/v1/models/wine-mlp/versions/1").get_json()
    response_validator("/v1/models/{name}/versions/{version}", "get").validate(described)
    assert described["suspension"]["reason"] == "schema check"
    r = client_module.post("/v1/models/wine-mlp/versions/1:resume", json={})
    response_validator("/v1/models/{name}/versions/{version}:resume", "post").validate(r.get_json())


def test_the_document_says_who_may_call_each_operation_and_real_refusals_match_it(operations) -> None:
    """Bearer security on every operation but the public ones; 401, 403 (review and admin operations),
    413 (with a body) and 429 documented in the error shape; and real refusals validate against it."""
    from explain_service.access.rules import ROLE_RANK, rule_for

    found, key = operations
    app = next(iter(found.values())).schema.app
    spec = app.test_client().get("/openapi.json", headers=bearer(key)).get_json()
    assert spec["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": spec["components"]["securitySchemes"]["bearer"]["description"],
    }
    endpoints = {
        (rule.rule.replace("<", "{").replace(">", "}").replace("{path:", "{"), method.lower()): rule.endpoint
        for rule in app.url_map.iter_rules()
        for method in rule.methods or ()
    }
    seen_roles = set()
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method not in ("get", "post", "put", "delete", "patch"):
                continue
            role = rule_for(endpoints[(path, method)]).role
            seen_roles.add(role)
            documented = set(operation["responses"])
            if role == "public":
                assert operation["security"] == [] and not documented & {"401", "403", "429"}, path
                continue
            assert operation["security"] == [{"bearer": []}], path
            assert {"401", "429"} <= documented, path
            assert ("403" in documented) == (ROLE_RANK[role] > ROLE_RANK["explain"]), path
            assert ("413" in documented) == ("requestBody" in operation), path
    assert seen_roles == {"public", "explain", "review", "admin"}

    def error_schema(path: str, method: str, status: str) -> jsonschema.Validator:
        ref = spec["paths"][path][method]["responses"][status]["$ref"].rsplit("/", 1)[1]
        response = spec["components"]["responses"][ref]
        schema = response["content"]["application/json"]["schema"]
        return jsonschema.Draft202012Validator(
            {**as_json_schema(schema), "components": as_json_schema(spec["components"])}
        )

    client = app.test_client()
    explain = "/v1/models/{name}:explain"
    r = client.post("/v1/models/german-credit:explain", json={"instances": [GERMAN_ROW]})
    assert r.status_code == 401
    error_schema(explain, "post", "401").validate(r.get_json())
    weak = app.extensions["explain_access"].keys.create("weak", "explain")
    r = client.get("/v1/models/german-credit/report", headers=bearer(weak))
    assert r.status_code == 403
    error_schema("/v1/models/{name}/report", "get", "403").validate(r.get_json())
    assert "Retry-After" in spec["components"]["responses"]["RATE_LIMITED"]["headers"]


def test_without_authentication_the_document_declares_none(client_module) -> None:
    spec = client_module.get("/openapi.json").get_json()
    assert "securitySchemes" not in spec.get("components", {})
    operation = spec["paths"]["/v1/models/{name}:explain"]["post"]
    assert "security" not in operation and "401" not in operation["responses"]
