"""Global explanations: mean |SHAP| against shap itself, by sensitive group, the beeswarm, the routes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import shap

from explain_service.fairness.groups import group_labels
from explain_service.fairness.importance import global_importance, reference_from_file
from explain_service.plots.beeswarm import beeswarm
from explain_service.plots.render import render_png
from explain_service.registry import ModelRegistry
from explain_service.registry.demo import GERMAN_CATEGORICAL, german_credit_frame
from tests.test_access import ROLES, auth, secured_app


def _shap_by_feature(model, rows: pd.DataFrame) -> np.ndarray:
    """shap's own TreeSHAP on the transformed matrix, one-hot columns summed back by their names."""
    X = model.preprocessor.transform(rows)
    contributions = shap.TreeExplainer(model.estimator).shap_values(X)
    columns = model.preprocessor.get_feature_names_out()
    out = np.zeros((len(rows), len(model.schema.names)))
    for j, column in enumerate(columns):
        block, _, rest = column.partition("__")
        name = (
            next(n for n in GERMAN_CATEGORICAL if rest.startswith(f"{n}_"))
            if block == "categorical"
            else rest
        )
        out[:, model.schema.names.index(name)] += contributions[:, j]
    return out


def test_mean_abs_shap_over_the_background_equals_shap_computed_directly(registry: ModelRegistry) -> None:
    model = registry.get("german-credit")
    result = global_importance(model)
    expected = np.abs(_shap_by_feature(model, model.background)).mean(axis=0)
    means = result.mean_abs()
    assert result.reference["rows"] == len(model.background) and result.target == "good"
    for j, name in enumerate(model.schema.names):
        assert means[name] == pytest.approx(expected[j], rel=1e-4, abs=1e-6), name
    assert list(means) == sorted(means, key=lambda n: -means[n])
    assert next(iter(result.to_dict()["mean_abs_shap"])) == "checking_account"


def test_means_by_sensitive_group_are_the_means_over_each_group(registry: ModelRegistry) -> None:
    model = registry.get("german-credit")
    result = global_importance(model)
    by_age = result.to_dict()["by_group"]["age"]
    labels = group_labels(result.rows["age"], [0, 25, 40, 60, 200])
    assert list(by_age) == ["[0, 25)", "[25, 40)", "[40, 60)", "[60, 200]"]
    for group, stats in by_age.items():
        subset = np.abs(result.values[labels == group]).mean(axis=0)
        assert stats["count"] == int((labels == group).sum())
        for j, name in enumerate(model.schema.names):
            assert stats["mean_abs_shap"][name] == pytest.approx(subset[j], abs=1e-12)
    assert set(result.to_dict()["by_group"]["sex"]) == {"female", "male"}
    only_sex = global_importance(model, sensitive={"sex": None})
    assert set(only_sex.by_group) == {"sex"}


def test_a_file_reference_is_a_seeded_sample_that_ignores_chunking(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    model = registry.get("german-credit")
    X, y = german_credit_frame()
    path = tmp_path / "labelled.csv"
    X.assign(risk=y).to_csv(path, index=False)
    whole = reference_from_file(model, path, max_rows=200, seed=4)
    chunked = reference_from_file(model, path, max_rows=200, seed=4, chunk_size=77)
    pd.testing.assert_frame_equal(whole, chunked)
    assert len(whole) == 200 and list(whole.columns) == model.schema.names
    assert not whole.equals(reference_from_file(model, path, max_rows=200, seed=5))
    result = global_importance(model, whole, source=path.name)
    assert result.reference == {**result.reference, "source": "labelled.csv", "rows": 200}


def test_the_beeswarm_draws_every_row_and_is_deterministic(registry: ModelRegistry) -> None:
    model = registry.get("german-credit")
    result = global_importance(model, max_rows=300)
    numeric = [f.name for f in model.schema.features if f.is_numeric]
    figures = [
        beeswarm(result.values, result.rows, result.model, numeric=numeric, max_display=5) for _ in range(2)
    ]
    main_axes = figures[0].axes[0]
    assert sum(len(c.get_offsets()) for c in main_axes.collections) == 5 * 300
    assert [t.get_text() for t in main_axes.get_yticklabels()] == list(result.mean_abs())[:5]
    first, second = (render_png(f) for f in figures)
    assert first == second and first.startswith(b"\x89PNG")


def test_the_beeswarm_says_its_colour_is_the_feature_value_not_the_direction(registry: ModelRegistry) -> None:
    """The other charts colour raises/lowers with the same two colours: here the legend must say value."""
    model = registry.get("german-credit")
    result = global_importance(model, max_rows=100)
    numeric = [f.name for f in model.schema.features if f.is_numeric]
    fig = beeswarm(result.values, result.rows, result.model, numeric=numeric, max_display=3)
    main_axes, colour_bar = fig.axes
    assert colour_bar.get_ylabel() == "feature value: low \u2192 high"
    assert [t.get_text() for t in colour_bar.get_yticklabels()] == ["low", "high"]
    texts = [t.get_text() for t in fig.texts]
    assert any("not whether it raised or lowered the output" in t for t in texts), texts
    # the caption sits between the title and the plot, inside the figure
    renderer = fig.canvas.get_renderer()
    title, caption = (t.get_window_extent(renderer) for t in fig.texts)
    plot = main_axes.get_window_extent(renderer)
    assert plot.y1 < caption.y0 < caption.y1 < title.y0 and caption.x1 < fig.bbox.x1


@pytest.mark.parametrize("name", ["wine-mlp", "diabetes-gbr"])
def test_other_model_kinds_have_global_importance(registry: ModelRegistry, name: str) -> None:
    model = registry.get(name)
    result = global_importance(model)
    assert result.values.shape == (result.reference["rows"], len(model.schema.names))
    assert result.by_group == {} and all(v >= 0 for v in result.mean_abs().values())


def test_importance_routes_need_a_review_key(demo_models_dir: Path, tmp_path: Path) -> None:
    app = secured_app(demo_models_dir, f"sqlite:///{tmp_path / 'a.sqlite3'}", tmp_path, ratelimit_default="")
    store = app.extensions["explain_access"].keys
    keys = {role: store.create(f"{role}-key", role) for role in ROLES}
    client = app.test_client()
    for path in ("/v1/models/german-credit/importance", "/v1/models/german-credit/plots/beeswarm.png"):
        assert client.get(path, headers=auth(keys["explain"])).status_code == 403
    r = client.get("/v1/models/german-credit/importance", headers=auth(keys["review"]))
    assert r.status_code == 200 and r.get_json()["reference"]["source"] == "background"
    assert set(r.get_json()["by_group"]) == {"sex", "age"}
    png = client.get("/v1/models/german-credit/plots/beeswarm.png", headers=auth(keys["review"]))
    assert png.status_code == 200 and png.mimetype == "image/png" and png.data.startswith(b"\x89PNG")
    etag = png.headers["ETag"]
    again = client.get(
        "/v1/models/german-credit/plots/beeswarm.png", headers={**auth(keys["review"]), "If-None-Match": etag}
    )
    assert again.status_code == 304
    assert client.get("/v1/models/nope/importance", headers=auth(keys["review"])).status_code == 404


def test_the_beeswarm_of_one_group_draws_only_its_rows(client) -> None:
    whole = client.get("/v1/models/german-credit/plots/beeswarm.png")
    young = client.get("/v1/models/german-credit/plots/beeswarm.png?feature=age&group=[0, 25)")
    assert whole.status_code == young.status_code == 200 and whole.data != young.data
    assert young.headers["ETag"] != whole.headers["ETag"]
    bad_feature = client.get("/v1/models/german-credit/plots/beeswarm.png?feature=duration&group=x")
    assert bad_feature.status_code == 422 and list(bad_feature.get_json()["errors"]) == ["feature"]
    bad_group = client.get("/v1/models/german-credit/plots/beeswarm.png?feature=sex&group=other")
    assert bad_group.status_code == 422 and list(bad_group.get_json()["errors"]) == ["group"]
