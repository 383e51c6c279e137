"""Requests generated from our own OpenAPI document (schemathesis), with a valid key, never get a 5xx."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from explain_service.app import create_app

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

    check()
