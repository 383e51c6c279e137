"""Option errors: one type from every explainer, a 422 naming the field over HTTP, a clear batch error."""

from __future__ import annotations

from pathlib import Path

import orjson
import pandas as pd
import pytest
from click.testing import CliRunner

from explain_service.batch.command import batch
from explain_service.errors import OptionError, ServiceError, ValidationFailed
from explain_service.explainers import EXPLAINERS
from explain_service.registry.store import ModelRegistry
from tests.conftest import GERMAN_ROW

# method, options that fit no German-credit model, the field named in the answer
BAD_OPTIONS = [
    ("shap", {"output": "raw"}, "options.shap.output"),
    ("lime", {"stability": 1}, "options.lime.stability"),
    ("counterfactual", {"desired_range": [0.0, 1.0]}, "options.counterfactual.desired_range"),
    ("counterfactual", {"immutable": ["salary"]}, "options.counterfactual.immutable"),
    (
        "counterfactual",
        {"constraints": {"purpose": {"direction": "increase"}}},
        "options.counterfactual.constraints.purpose.direction",
    ),
]
IDS = ["shap-output", "lime-stability", "cf-range", "cf-immutable", "cf-direction"]


@pytest.mark.parametrize(
    ("method", "options", "field"),
    [c for c in BAD_OPTIONS if c[0] != "lime"],  # LIME has no option that only the model can judge
    ids=[i for i, c in zip(IDS, BAD_OPTIONS, strict=True) if c[0] != "lime"],
)
def test_explainers_raise_one_option_error_type(
    registry: ModelRegistry, method: str, options: dict, field: str
) -> None:
    model = registry.get("german-credit")
    explainer = EXPLAINERS[method]
    rows = model.background.iloc[:1]
    with pytest.raises(OptionError) as info:
        explainer.explain(model, rows, None, explainer.options_schema().load(options))
    error = info.value
    assert isinstance(error, ValidationFailed) and isinstance(error, ServiceError)
    assert error.status == 422 and error.field == field and error.method == method
    assert list(error.errors) == [field] and field in error.message


@pytest.mark.parametrize(("method", "options", "field"), BAD_OPTIONS, ids=IDS)
def test_bad_option_is_a_422_naming_the_field(client, method: str, options: dict, field: str) -> None:
    body = {"instances": [GERMAN_ROW], "methods": [method], "options": {method: options}}
    r = client.post(
        "/v1/models/german-credit:explain", data=orjson.dumps(body), content_type="application/json"
    )
    answer = r.get_json()
    assert r.status_code == 422, answer
    assert answer["code"] == 422 and answer["status"] == "Unprocessable Entity"
    assert list(answer["errors"]) == [field] and field in answer["message"]


@pytest.mark.parametrize(("method", "options", "field"), BAD_OPTIONS, ids=IDS)
def test_batch_job_reports_a_bad_option_as_a_cli_error(
    demo_models_dir: Path, tmp_path: Path, method: str, options: dict, field: str
) -> None:
    pd.DataFrame([GERMAN_ROW]).to_csv(tmp_path / "in.csv", index=False)
    out = tmp_path / "out.parquet"
    args = ["--models-dir", str(demo_models_dir), "--progress-every", "0", "--model", "german-credit"]
    args += ["--input", str(tmp_path / "in.csv"), "--output", str(out), "--methods", method]
    args += ["--options", orjson.dumps({method: options}).decode()]
    result = CliRunner().invoke(batch, args)
    assert result.exit_code == 2, result.output
    assert f"{field}: " in result.output and "Traceback" not in result.output
    assert not out.exists()


@pytest.mark.parametrize(
    ("method", "option", "given"),
    [
        ("shap", "max_evals", "5000"),
        ("shap", "seed", "7"),
        ("lime", "num_samples", "500"),
        ("lime", "seed", 7.0),
        ("counterfactual", "count", "2"),
        ("counterfactual", "seed", True),
    ],
    ids=["shap-max-evals", "shap-seed", "lime-samples", "lime-seed", "cf-count", "cf-seed"],
)
def test_integer_options_take_only_json_integers(client, method: str, option: str, given: object) -> None:
    body = {"instances": [GERMAN_ROW], "methods": [method], "options": {method: {option: given}}}
    r = client.post(
        "/v1/models/german-credit:explain", data=orjson.dumps(body), content_type="application/json"
    )
    assert r.status_code == 422, r.get_json()
    assert list(r.get_json()["errors"]) == [f"options.{method}.{option}"]
