"""One rule for the class a counterfactual aims at, the same over HTTP, in process and in a batch job.

The rule: the requested ``target``; else the favourable class, unless the row is already predicted as
it; else the most probable other class.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pytest
from click.testing import CliRunner

from explain_service.batch.command import batch
from explain_service.explainers import EXPLAINERS
from explain_service.explainers.counterfactual import counterfactual_goals
from explain_service.registry.store import ModelRegistry


def plain(row: pd.Series) -> dict:
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in row.to_dict().items()}


def background_row(registry: ModelRegistry, name: str, label: str) -> pd.DataFrame:
    """The first background row of ``name`` that the model predicts as ``label``."""
    model = registry.get(name)
    predicted = model.predict_proba(model.background).argmax(axis=1)
    index = int(np.flatnonzero(predicted == model.class_names.index(label))[0])
    return model.background.iloc[[index]].reset_index(drop=True)


def http_target(client, name: str, row: dict) -> str:
    body = {"instances": [row], "methods": ["counterfactual"], "options": {"counterfactual": {"count": 1}}}
    r = client.post(f"/v1/models/{name}:explain", data=orjson.dumps(body), content_type="application/json")
    assert r.status_code == 200, r.get_json()
    return r.get_json()["explanations"][0]["counterfactual"]["target"]


def explainer_target(registry: ModelRegistry, name: str, rows: pd.DataFrame) -> str:
    explainer = EXPLAINERS["counterfactual"]
    options = explainer.options_schema().load({"count": 1})
    return explainer.explain(registry.get(name), rows, None, options)[0]["target"]


def batch_target(models: Path, name: str, rows: pd.DataFrame, tmp_path: Path) -> str:
    rows.to_csv(tmp_path / "in.csv", index=False)
    out = tmp_path / "out.parquet"
    args = ["--models-dir", str(models), "--progress-every", "0", "--model", name]
    args += ["--input", str(tmp_path / "in.csv"), "--output", str(out), "--methods", "counterfactual"]
    args += ["--options", '{"counterfactual": {"count": 1}}']
    result = CliRunner().invoke(batch, args)
    assert result.exit_code == 0, result.output
    return orjson.loads(pd.read_parquet(out)["counterfactual.json"][0])["target"]


@pytest.mark.parametrize(
    ("predicted", "goal"),
    [("bad", "good"), ("good", "bad")],
    ids=["unfavourable-row-aims-at-favourable", "favourable-row-aims-at-the-other-class"],
)
def test_service_explainer_and_batch_aim_at_the_same_class(
    client, registry: ModelRegistry, demo_models_dir: Path, tmp_path: Path, predicted: str, goal: str
) -> None:
    rows = background_row(registry, "german-credit", predicted)
    assert registry.get("german-credit").favorable == "good"
    seen = {
        "http": http_target(client, "german-credit", plain(rows.iloc[0])),
        "explainer": explainer_target(registry, "german-credit", rows),
        "batch": batch_target(demo_models_dir, "german-credit", rows, tmp_path),
    }
    assert seen == {"http": goal, "explainer": goal, "batch": goal}


def test_goals_follow_the_rule_row_by_row(registry: ModelRegistry) -> None:
    german = registry.get("german-credit")  # favourable "good" = index 1
    proba = np.array([[0.9, 0.1], [0.2, 0.8]])
    assert counterfactual_goals(german, proba).tolist() == [1, 0]
    assert counterfactual_goals(german, proba, target=1).tolist() == [1, 1]
    wine = registry.get("wine-mlp")
    assert wine.favorable is None
    proba3 = np.array([[0.5, 0.2, 0.3], [0.1, 0.6, 0.3], [0.2, 0.2, 0.6]])
    assert counterfactual_goals(wine, proba3).tolist() == [2, 2, 0]  # runner-up; ties by class order
    assert counterfactual_goals(wine, proba3, target=0).tolist() == [0, 0, 0]


def test_regressors_have_no_goal_class(registry: ModelRegistry) -> None:
    assert counterfactual_goals(registry.get("diabetes-gbr"), np.zeros((2, 1))) is None
