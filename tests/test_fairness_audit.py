"""Bias audits: figures against fairlearn and by hand, seeded bootstrap, chunking, rejected rows, CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest
from click.testing import CliRunner
from fairlearn.metrics import (
    MetricFrame,
    demographic_parity_difference,
    demographic_parity_ratio,
    equal_opportunity_difference,
    equalized_odds_difference,
    false_positive_rate,
    selection_rate,
    true_positive_rate,
)

from explain_service.audit.store import AuditStore
from explain_service.cli import main
from explain_service.errors import ValidationFailed
from explain_service.fairness.audit import (
    AuditPlan,
    CountAccumulator,
    answer,
    figures,
    positive_class,
    resolve_sensitive,
)
from explain_service.fairness.data import audit_file
from explain_service.fairness.groups import group_labels
from explain_service.fairness.metrics import GroupCounts, bootstrap_intervals, disparities, feature_figures
from explain_service.registry import ModelRegistry
from explain_service.registry.demo import german_credit_frame

METRICS = {
    "demographic_parity_difference": demographic_parity_difference,
    "demographic_parity_ratio": demographic_parity_ratio,
    "equal_opportunity_difference": equal_opportunity_difference,
    "equalized_odds_difference": equalized_odds_difference,
}
RATES = {
    "selection_rate": selection_rate,
    "true_positive_rate": true_positive_rate,
    "false_positive_rate": false_positive_rate,
}


def _tiny_counts() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Group a: 4 rows, group b: 6 rows; labels and decisions chosen to give round rates."""
    groups = np.array(["a"] * 4 + ["b"] * 6)
    y_true = np.array([1, 1, 0, 0, 1, 1, 1, 0, 0, 0], dtype=bool)
    y_pred = np.array([1, 0, 0, 0, 1, 1, 1, 1, 1, 0], dtype=bool)
    return groups, y_true, y_pred


def test_figures_of_a_tiny_table_match_the_hand_computed_values() -> None:
    groups, y_true, y_pred = _tiny_counts()
    acc = CountAccumulator(AuditPlan({"g": None}, positive="yes", resamples=0))
    acc.add({"g": groups}, y_true, y_pred)
    out = figures(acc)["by_feature"]["g"]
    # a: selected 1 of 4; positives 2, of which 1 selected; negatives 2, none selected.
    # b: selected 5 of 6; positives 3, all selected; negatives 3, 2 selected.
    assert out["groups"]["a"] == pytest.approx(
        {"count": 4, "selection_rate": 0.25, "true_positive_rate": 0.5, "false_positive_rate": 0.0}
    )
    assert out["groups"]["b"] == pytest.approx(
        {"count": 6, "selection_rate": 5 / 6, "true_positive_rate": 1.0, "false_positive_rate": 2 / 3}
    )
    assert out["demographic_parity_difference"] == pytest.approx(5 / 6 - 0.25)
    assert out["demographic_parity_ratio"] == pytest.approx(0.25 / (5 / 6))
    assert out["equal_opportunity_difference"] == pytest.approx(0.5)
    assert out["equalized_odds_difference"] == pytest.approx(2 / 3)
    assert out["four_fifths_rule"] == {"threshold": 0.8, "ratio": pytest.approx(0.3), "flagged": True}
    assert out["group_sizes"] == {"a": 4, "b": 6}
    assert [w for w in out["warnings"] if "fewer than 30" in w] and len(out["warnings"]) == 2


def test_the_bootstrap_formulas_agree_with_fairlearn_on_the_observed_counts() -> None:
    rng = np.random.default_rng(3)
    groups = rng.choice(["x", "y", "z"], 400, p=[0.5, 0.3, 0.2])
    y_true = rng.random(400) < 0.4
    y_pred = rng.random(400) < np.where(groups == "x", 0.7, 0.4)
    y_pred[(groups == "z") & ~y_true] = False  # a group whose false positive rate is 0
    acc = CountAccumulator(AuditPlan({"g": None}, positive="yes"))
    acc.add({"g": groups}, y_true, y_pred)
    counts = acc.groups(("g",)).counts
    ours = {k: float(v) for k, v in disparities(counts).items()}
    for name, metric in METRICS.items():
        assert ours[name] == pytest.approx(metric(y_true, y_pred, sensitive_features=groups), abs=1e-12)


@pytest.fixture(scope="module")
def german(registry: ModelRegistry, tmp_path_factory: pytest.TempPathFactory):
    """The German credit demo model and its table with a ``risk`` label column, as CSV and Parquet."""
    model = registry.get("german-credit")
    X, y = german_credit_frame()
    frame = X.assign(risk=np.where(y.to_numpy() == 1, "good", "bad"))
    root = tmp_path_factory.mktemp("fairness")
    frame.to_csv(root / "german.csv", index=False)
    frame.to_parquet(root / "german.parquet", index=False)
    return model, frame, root


def _plan(model, intersect: bool = False, **kwargs) -> AuditPlan:
    return AuditPlan(resolve_sensitive(model, None), positive_class(model), intersect=intersect, **kwargs)


def test_file_audit_equals_fairlearn_on_the_same_predictions(german) -> None:
    model, frame, root = german
    acc, data = audit_file(model, root / "german.csv", "risk", _plan(model, intersect=True))
    result = answer(model, acc, "risk", data)
    proba = model.predict_proba(model.schema.coerce(frame[model.schema.names]))
    y_pred = proba.argmax(axis=1) == model.class_names.index("good")
    y_true = frame["risk"].to_numpy() == "good"
    sex = group_labels(frame["sex"], None)
    age = group_labels(frame["age"], [0, 25, 40, 60, 200])
    both = np.char.add(np.char.add(sex.astype(str), " & "), age.astype(str))
    assert data["rows"] == data["used"] == len(frame) and data["rejected"] == 0
    assert list(result["by_feature"]) == ["sex", "age", "sex & age"]
    assert list(result["by_feature"]["age"]["groups"]) == ["[0, 25)", "[25, 40)", "[40, 60)", "[60, 200]"]
    for key, sensitive in (("sex", sex), ("age", age), ("sex & age", both)):
        ours = result["by_feature"][key]
        frame_ = MetricFrame(metrics=RATES, y_true=y_true, y_pred=y_pred, sensitive_features=sensitive)
        for group, stats in ours["groups"].items():
            assert stats["count"] == int((sensitive == group).sum())
            for rate in RATES:
                assert stats[rate] == pytest.approx(frame_.by_group.loc[group, rate], abs=1e-12), (key, group)
        for name, metric in METRICS.items():
            assert ours[name] == pytest.approx(
                metric(y_true, y_pred, sensitive_features=sensitive), abs=1e-12
            )
        for name in METRICS:
            low, high = ours["intervals"][name]["low"], ours["intervals"][name]["high"]
            assert low <= high
    assert result["by_feature"]["age"]["four_fifths_rule"]["flagged"] == (
        result["by_feature"]["age"]["demographic_parity_ratio"] < 0.8
    )


def test_bootstrap_intervals_are_reproducible_with_a_seed() -> None:
    counts = GroupCounts(("a", "b"), np.array([[40, 10, 5, 45], [50, 10, 25, 15]]))
    first = bootstrap_intervals(counts, 500, seed=7)
    assert bootstrap_intervals(counts, 500, seed=7) == first
    assert bootstrap_intervals(counts, 500, seed=8) != first
    point = {k: float(v) for k, v in disparities(counts.counts).items()}
    for name, interval in first.items():
        assert interval["low"] < point[name] < interval["high"], name
    assert feature_figures(counts, resamples=500, seed=7)["intervals"] == first


def test_chunked_reading_gives_the_same_answer_as_one_chunk(german) -> None:
    model, _, root = german
    plan = _plan(model, intersect=True, resamples=200, seed=1)
    results = []
    for name, chunk_size in (
        ("german.csv", 10_000),
        ("german.csv", 97),
        ("german.parquet", 10_000),
        ("german.parquet", 64),
    ):
        acc, data = audit_file(model, root / name, "risk", plan, chunk_size=chunk_size)
        results.append(
            answer(
                model,
                acc,
                "risk",
                {k: v for k, v in data.items() if k not in ("source", "format", "sha256", "size")},
            )
        )
    assert all(r == results[0] for r in results[1:])


def test_bad_rows_are_left_out_and_reported_by_row(german, tmp_path: Path) -> None:
    model, frame, _ = german
    broken = frame.head(50).astype(object)
    broken.loc[3, "risk"] = "maybe"
    broken.loc[7, "age"] = "old"
    broken.loc[9, "sex"] = "unknown"
    path = tmp_path / "broken.csv"
    broken.to_csv(path, index=False)
    acc, data = audit_file(model, path, "risk", _plan(model, resamples=0), chunk_size=20)
    assert (data["rows"], data["used"], data["rejected"]) == (50, 47, 3)
    assert [e["row"] for e in data["rejected_examples"]] == [3, 7, 9]
    assert (
        "risk" in data["rejected_examples"][0]["errors"] and "age" in data["rejected_examples"][1]["errors"]
    )
    assert sum(s["count"] for s in figures(acc)["by_feature"]["sex"]["groups"].values()) == 47


def test_sensitive_features_are_checked_by_name(german) -> None:
    model, _, _ = german
    with pytest.raises(ValidationFailed) as info:
        resolve_sensitive(model, ["sex", "credit_amount", "religion"], {"duration": [0, 10]})
    assert set(info.value.errors) == {"sensitive.2", "bins.duration"}
    with pytest.raises(ValidationFailed) as info:
        resolve_sensitive(model, ["age"], {"age": [50, 40]})
    assert "strictly increasing" in info.value.errors["bins.age"][0]
    assert resolve_sensitive(model, ["age"], {"age": [18, 30, 80]}) == {"age": (18, 30, 80)}
    assert resolve_sensitive(model, ["region"], extra_columns=["region"]) == {"region": None}


def test_cli_writes_json_and_html_and_stores_a_verifiable_record(
    german, demo_models_dir: Path, tmp_path: Path
) -> None:
    _, _, root = german
    db = f"sqlite:///{tmp_path / 'audit.sqlite3'}"
    out, html = tmp_path / "audit.json", tmp_path / "audit.html"
    args = [
        "fairness",
        "--model",
        "german-credit@1",
        "--data",
        str(root / "german.csv"),
        "--label",
        "risk",
        "--sensitive",
        "sex,age",
        "--intersect",
        "--output",
        str(out),
        "--html",
        str(html),
        "--models-dir",
        str(demo_models_dir),
        "--database-url",
        db,
        "--resamples",
        "200",
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    audit = orjson.loads(out.read_bytes())
    assert f"audit {audit['id']}" in result.stderr and "FLAGGED" in result.stderr
    assert set(audit["by_feature"]) == {"sex", "age", "sex & age"}
    page = html.read_text()
    assert audit["id"] in page and "data:image/png;base64," in page and "[25, 40)" in page
    # The chart's dashed line and orange bars are said in words beside it.
    assert "the dashed line is four fifths of the highest rate" in page
    with AuditStore(db) as store:
        record = store.require(audit["id"])
        assert record.body["kind"] == "fairness" and record.caller == "cli"
        assert record.body["model"]["sha256"] == audit["model"]["sha256"]
        assert record.body["data"]["sha256"] == audit["data"]["sha256"]
        assert record.body["figures"]["by_feature"] == audit["by_feature"]
        assert record.body["request"]["sensitive"] == {"sex": None, "age": [0, 25, 40, 60, 200]}
        assert store.verify().ok
    again = CliRunner().invoke(
        main, [*args[:-4], "--database-url", db, "--resamples", "200", "--chunk-size", "33"]
    )
    assert again.exit_code == 0, again.output
    repeat = orjson.loads(out.read_bytes())
    assert repeat["id"] != audit["id"] and repeat["by_feature"] == audit["by_feature"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--label", "nope"], "no label column 'nope'"),
        (
            ["--label", "risk", "--sensitive", "religion"],
            "'religion' is not a feature of the model nor a column",
        ),
        (["--label", "risk", "--bins", "age"], "expected FEATURE=E1,E2"),
    ],
    ids=["label", "sensitive", "bins"],
)
def test_cli_refuses_bad_arguments_by_name(
    german, demo_models_dir: Path, tmp_path: Path, extra, message
) -> None:
    _, _, root = german
    args = [
        "fairness",
        "--model",
        "german-credit",
        "--data",
        str(root / "german.csv"),
        *extra,
        "--models-dir",
        str(demo_models_dir),
        "--database-url",
        f"sqlite:///{tmp_path / 'a.sqlite3'}",
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0 and message in result.output, result.output


def test_a_stored_audit_is_verified_by_running_it_again(
    german, demo_models_dir: Path, tmp_path: Path
) -> None:
    _, frame, root = german
    db = f"sqlite:///{tmp_path / 'audit.sqlite3'}"
    common = ["--models-dir", str(demo_models_dir), "--database-url", db]
    first = CliRunner().invoke(
        main,
        [
            "fairness",
            "--model",
            "german-credit",
            "--data",
            str(root / "german.parquet"),
            "--label",
            "risk",
            "--intersect",
            "--seed",
            "5",
            "--resamples",
            "100",
            "--output",
            str(tmp_path / "a.json"),
            *common,
        ],
    )
    assert first.exit_code == 0, first.output
    record_id = orjson.loads((tmp_path / "a.json").read_bytes())["id"]
    ok = CliRunner().invoke(
        main,
        [
            "fairness",
            "--verify",
            record_id,
            "--data",
            str(root / "german.parquet"),
            "--chunk-size",
            "123",
            *common,
        ],
    )
    assert ok.exit_code == 0 and f"verified {record_id}" in ok.output, ok.output
    changed = frame.copy()
    changed.loc[0, "risk"] = "bad" if changed.loc[0, "risk"] == "good" else "good"
    changed.to_parquet(tmp_path / "changed.parquet", index=False)
    bad = CliRunner().invoke(
        main, ["fairness", "--verify", record_id, "--data", str(tmp_path / "changed.parquet"), *common]
    )
    assert bad.exit_code == 1 and "data sha256" in bad.output, bad.output
    missing = CliRunner().invoke(
        main, ["fairness", "--verify", "nope", "--data", str(root / "german.csv"), *common]
    )
    assert missing.exit_code != 0 and "no audit record 'nope'" in missing.output
    with AuditStore(db) as store:
        assert store.count() == 1  # verifying stores nothing
