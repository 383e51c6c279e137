"""Compute deadlines and the per-request evaluation budget."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import pytest

from explain_service.app import create_app
from explain_service.deadline import check_deadline, deadline_scope
from explain_service.errors import DeadlineExceeded
from explain_service.explainers import _tabular, lime

WINE = "/v1/models/wine-mlp:explain"  # the model-agnostic demo model


@pytest.fixture
def timed(demo_models_dir: Path, tmp_path: Path):
    app = create_app(
        {
            "models_dir": str(demo_models_dir),
            "database_url": f"sqlite:///{tmp_path}/audit.sqlite3",
            "plots_dir": str(tmp_path / "plots"),
            "ratelimit_default": "",
            "request_deadline_seconds": 0.25,
            "eager_load": False,
        }
    )
    key = app.extensions["explain_access"].keys.create("k", "explain")
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {key}"
    rows = app.extensions["explain"].registry.get("wine-mlp").background.iloc[:10]
    instances = [{k: float(v) for k, v in r.items()} for r in rows.to_dict(orient="records")]
    return app, client, instances


def test_the_deadline_stops_the_most_expensive_legal_request(timed) -> None:
    app, client, instances = timed
    audit = app.extensions["explain"].audit
    # A cheap request first: the model's first use (loading, warming) is not what the deadline bounds.
    assert client.post(WINE.replace(":explain", ":predict"), json={"instances": instances}).status_code == 200
    before = audit.count()
    # 10 x 200,000 evaluations: exactly the per-request budget, so legal, and far beyond a second.
    body = {"instances": instances, "methods": ["shap"], "options": {"shap": {"max_evals": 200_000}}}
    started = time.monotonic()
    r = client.post(WINE, json=body)
    elapsed = time.monotonic() - started
    assert r.status_code == 503, r.get_json()
    assert r.get_json()["errors"] == {"_request": ["deadline_exceeded"]}
    assert int(r.headers["Retry-After"]) > 0
    assert elapsed < 0.25 + 1.0
    assert audit.count() == before  # nothing recorded for an unanswered request
    cheap = client.post(WINE, json={"instances": instances[:1], "methods": ["shap"]})
    assert cheap.status_code == 200 and audit.count() == before + 1


@pytest.mark.parametrize("model", ["wine-mlp", "german-credit"])
def test_lime_at_its_largest_legal_options_stops_within_the_deadline_plus_a_second(timed, model: str) -> None:
    app, client, _ = timed
    audit = app.extensions["explain"].audit
    rows = app.extensions["explain"].registry.get(model).background.iloc[:10]
    instances = [
        {k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()} for r in rows.to_dict("records")
    ]
    path = f"/v1/models/{model}"
    assert client.post(f"{path}:predict", json={"instances": instances}).status_code == 200
    before = audit.count()
    # 10 rows x 20,000 samples x 10 seeds: exactly the per-request budget; one row alone takes over a
    # second on this machine, so the checks must come inside a row, not only between rows.
    options = {"lime": {"num_samples": 20_000, "stability": 10}}
    started = time.monotonic()
    r = client.post(f"{path}:explain", json={"instances": instances, "methods": ["lime"], "options": options})
    elapsed = time.monotonic() - started
    assert r.status_code == 503, r.get_json()
    assert r.get_json()["errors"] == {"_request": ["deadline_exceeded"]}
    assert elapsed < 0.25 + 1.0
    assert audit.count() == before


def test_lime_checks_the_deadline_throughout_a_row_not_only_between_rows(
    registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a loaded machine one row at the largest options takes seconds: no stretch may go unchecked."""
    checks: list[float] = []
    monkeypatch.setattr(lime, "check_deadline", lambda: checks.append(time.perf_counter()))
    monkeypatch.setattr(_tabular, "check_deadline", lambda: checks.append(time.perf_counter()), raising=False)
    model = registry.get("german-credit")
    options = lime.LimeOptions().load({"num_samples": 20_000, "stability": 10})
    lime.LimeExplainer().explain(model, model.background.iloc[:1], None, options)  # warm the caches
    checks.clear()
    started = time.perf_counter()
    lime.LimeExplainer().explain(model, model.background.iloc[:1], None, options)
    finished = time.perf_counter()
    moments = [started, *checks, finished]
    longest = max(b - a for a, b in itertools.pairwise(moments))
    assert len(checks) >= 20
    # Checked only between rows, the one row would be one unchecked stretch (all of it). Inside the row
    # the longest stretch is one model chunk of 65,536 of its 200,000 samples: about a third of the time,
    # so the bound leaves room for a slow chunk on a busy machine.
    assert longest < 0.5 * (finished - started), (longest, finished - started)


@pytest.mark.parametrize(
    ("options", "n", "field"),
    [
        ({"shap": {"max_evals": 200_000}}, 11, "options.shap.max_evals"),
        ({"lime": {"num_samples": 20_000, "stability": 10}}, 11, "options.lime.num_samples"),
    ],
    ids=["shap-evals", "lime-samples"],
)
def test_declared_work_over_the_budget_is_refused_up_front(timed, options, n: int, field: str) -> None:
    _, client, instances = timed
    body = {"instances": (instances * 2)[:n], "methods": list(options), "options": options}
    started = time.monotonic()
    r = client.post(WINE, json=body)
    assert r.status_code == 422 and list(r.get_json()["errors"]) == [field]
    assert "per-request budget is 2,000,000" in r.get_json()["errors"][field][0]
    assert time.monotonic() - started < 0.5


def test_without_a_scope_the_check_does_nothing_and_inside_it_raises_once_passed() -> None:
    check_deadline()
    with deadline_scope(0.05):
        check_deadline()
        time.sleep(0.06)
        with pytest.raises(DeadlineExceeded):
            check_deadline()
    check_deadline()
