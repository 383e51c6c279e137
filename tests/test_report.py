"""Transparency report: its figures against direct counts of the chain, sklearn, and the registry."""

from __future__ import annotations

import html
import re
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pytest
from click.testing import CliRunner
from sklearn.calibration import calibration_curve
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, brier_score_loss, roc_auc_score

from explain_service.audit.aggregates import lime_bucket
from explain_service.audit.store import AuditStore
from explain_service.cli import main
from explain_service.fairness.importance import global_importance
from explain_service.registry.demo import german_credit_frame
from explain_service.registry.store import ModelRegistry, register_model
from explain_service.service import rows_as_dicts
from tests.conftest import open_app

ROWS = 30


@pytest.fixture
def served(demo_models_dir: Path, tmp_path: Path, url: str):
    """Decisions, reviews, an incident, a suspension and a bias audit of german-credit v1."""
    app = open_app(demo_models_dir, url, tmp_path / "plots", disparity_min_group=1)
    client = app.test_client()
    X, y = german_credit_frame()
    rows = rows_as_dicts(ModelRegistry(demo_models_dir).get("german-credit").schema.coerce(X.head(ROWS)))
    ids = []
    for methods, chunk in ((["shap"], rows[:24]), (["shap", "lime", "counterfactual"], rows[24:])):
        r = client.post("/v1/models/german-credit:explain", json={"instances": chunk, "methods": methods})
        assert r.status_code == 200, r.get_json()
        ids += [e["id"] for e in r.get_json()["explanations"]]
    post = lambda path, body: client.post(path, json=body).status_code  # noqa: E731
    assert (
        post(f"/v1/explanations/{ids[0]}/reviews", {"action": "override", "comment": "c", "decision": "good"})
        == 201
    )
    assert post(f"/v1/explanations/{ids[1]}/reviews", {"action": "escalate", "comment": "look"}) == 201
    assert post(f"/v1/explanations/{ids[2]}/reviews", {"action": "approve"}) == 201
    incident = {"title": "t", "severity": "low", "harm_type": "other", "explanations": ids[:2]}
    assert post("/v1/incidents", incident) == 201
    labels = ["good" if v == 1 else "bad" for v in y.head(200)]
    audit = {"instances": rows_as_dicts(X.head(200)), "labels": labels, "resamples": 50}
    r = client.post("/v1/models/german-credit:fairness", json=audit)
    assert r.status_code == 200, r.get_json()
    app.extensions["explain"].suspensions.suspend("german-credit", "1", "test", by="tester")
    app.extensions["explain"].suspensions.resume("german-credit", "1", by="tester")
    return app, client, url, r.get_json()["id"]


def test_report_figures_equal_direct_counts_of_the_chain(served, demo_models_dir: Path) -> None:
    app, client, url, audit_id = served
    r = client.get("/v1/models/german-credit/report")
    assert r.status_code == 200, r.get_json()
    report = r.get_json()
    records = AuditStore(url).list_records(limit=1000)
    kinds = pd.Series([x.body["kind"] for x in records]).value_counts().to_dict()
    explained = [x for x in records if x.body["kind"] == "explanation"]
    labels = pd.Series([x.body["explanation"]["prediction"]["label"] for x in explained]).value_counts()
    over = report["oversight"]
    assert over["decisions"] == labels.to_dict()
    assert (over["reviews"], over["overrides"], over["escalations"]) == (3, 1, 1)
    assert (
        over["incidents"] == kinds["incident"] == 1 and over["suspensions"] == 1 and over["bias_audits"] == 1
    )
    assert over["status"] == {"overridden": 1, "escalated": 1, "approved": 1, "unreviewed": ROWS - 3}

    quality = report["explanation_quality"]
    shap = [x.body["explanation"]["shap"] for x in explained]
    lime = [x.body["explanation"]["lime"]["score"] for x in explained if "lime" in x.body["explanation"]]
    cf = [
        x.body["explanation"]["counterfactual"]
        for x in explained
        if "counterfactual" in x.body["explanation"]
    ]
    assert quality["explanations"] == len(explained) == ROWS and quality["shap"]["count"] == ROWS
    assert quality["shap"]["max_abs_additivity_residual"] == max(abs(s["additivity_residual"]) for s in shap)
    assert quality["lime"]["count"] == len(lime) == ROWS - 24
    histogram = pd.Series([lime_bucket(s) for s in lime]).value_counts().to_dict()
    assert {k: v for k, v in quality["lime"]["r2_histogram"].items() if v} == histogram
    assert quality["lime"]["r2_below_0_5"] == sum(s < 0.5 for s in lime)
    assert quality["counterfactual"]["found_rate"] == pytest.approx(
        np.mean([bool(c["counterfactuals"]) for c in cf])
    )

    audit = app.extensions["explain"].audit.require(audit_id)
    assert report["bias_audit"]["id"] == audit_id
    sex = audit.body["figures"]["by_feature"]["sex"]
    assert (
        report["bias_audit"]["by_feature"]["sex"]["demographic_parity_ratio"]
        == sex["demographic_parity_ratio"]
    )

    model = ModelRegistry(demo_models_dir).get("german-credit")
    assert report["importance"]["mean_abs_shap"] == global_importance(model).mean_abs()
    background = model.background
    assert report["training_data"]["rows"] == len(background)
    age = report["training_data"]["features"]["age"]
    assert (age["min"], age["max"]) == (background["age"].min(), background["age"].max())
    housing = background["housing"].value_counts()
    assert report["training_data"]["features"]["housing"]["frequencies"]["own"]["count"] == housing["own"]
    assert {f["name"]: f.get("sensitive") for f in report["features"]}["age"] == {
        "bins": [0, 25, 40, 60, 200]
    }
    assert report["provenance"]["sha256"] == model.sha256 and report["change"] is None

    evidence = {e["obligation"].split(":")[0]: e["counts"] for e in report["evidence"]}
    assert evidence["EU AI Act Art. 12"]["records_in_chain"] == len(records)
    assert (
        evidence["EU AI Act Art. 14"]["overrides"] == 1 and evidence["EU AI Act Art. 14"]["suspensions"] == 1
    )
    adverse = int(labels.get("bad", 0))
    assert evidence["US ECOA / Regulation B (12 CFR 1002.9)"]["adverse_decisions"] == adverse
    sex_groups = report["disparity"]["by_feature"]["sex"]["groups"]
    by_sex = pd.Series([x.body["instance"]["sex"] for x in explained]).value_counts().to_dict()
    assert {g: v["decisions"] for g, v in sex_groups.items()} == by_sex
    weekly = report["disparity"]["weekly"]["sex"]  # every record is of this week
    assert {g: points[-1]["decisions"] for g, points in weekly.items()} == by_sex


def test_report_command_measures_performance_with_sklearn_and_writes_html_pdf_json(
    served, demo_models_dir: Path, tmp_path: Path
) -> None:
    _app, _client, url, _audit = served
    X, y = german_credit_frame()
    labelled = X.iloc[200:600].assign(risk=np.where(y.iloc[200:600] == 1, "good", "bad"))
    labelled.loc[labelled.index[:3], "risk"] = "unknown"  # not a class name: left out
    data = tmp_path / "labelled.csv"
    labelled.to_csv(data, index=False)
    runner = CliRunner()
    base = [
        "report",
        "--model",
        "german-credit@1",
        "--models-dir",
        str(demo_models_dir),
        "--database-url",
        url,
    ]
    out = tmp_path / "r.json"
    result = runner.invoke(main, [*base, "--output", str(out), "--data", str(data), "--label", "risk"])
    assert result.exit_code == 0, result.output
    perf = orjson.loads(out.read_bytes())["performance"]

    model = ModelRegistry(demo_models_dir).get("german-credit")
    kept = labelled.iloc[3:]
    proba = model.predict_proba(model.schema.coerce(kept[model.schema.names]))
    truth = (kept["risk"] == "good").to_numpy().astype(int)
    assert perf["data"]["used"] == len(kept) and perf["positive"] == "good"
    assert perf["accuracy"] == pytest.approx(accuracy_score(truth, proba.argmax(axis=1)), abs=1e-12)
    assert perf["roc_auc"] == pytest.approx(roc_auc_score(truth, proba[:, 1]), abs=1e-12)
    assert perf["calibration"]["brier_score"] == pytest.approx(
        brier_score_loss(truth, proba[:, 1]), abs=1e-12
    )
    fraction, predicted = calibration_curve(truth, proba[:, 1], n_bins=10)
    assert [b["fraction_positive"] for b in perf["calibration"]["bins"]] == pytest.approx(list(fraction))
    assert [b["mean_predicted"] for b in perf["calibration"]["bins"]] == pytest.approx(list(predicted))

    html = tmp_path / "r.html"
    assert runner.invoke(main, [*base, "--output", str(html)]).exit_code == 0
    text = html.read_text()
    assert "Transparency report: german-credit v1" in text and text.count("data:image/png;base64,") == 2
    pdf = tmp_path / "r.pdf"
    result = runner.invoke(main, [*base, "--output", str(pdf)])
    assert result.exit_code == 0, result.output
    assert pdf.read_bytes().startswith(b"%PDF-") and pdf.read_bytes().count(b"/Subtype /Image") == 2
    assert runner.invoke(main, [*base, "--output", str(tmp_path / "r.txt")]).exit_code == 2


def test_change_from_the_previous_version_names_schema_and_importance_shift(
    tmp_path: Path, sqlite_url: str
) -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(300, 4)), columns=["a", "b", "c", "d"])
    y = (frame["a"] + 0.5 * frame["b"] - frame["c"] > 0).astype(int)
    models = tmp_path / "models"
    for version, columns in (("1", ["a", "b", "c"]), ("2", ["a", "b", "d"])):
        model = LogisticRegression().fit(frame[columns], y)
        register_model(
            model, "toy", version, background=frame[columns], models_dir=models, intended_use="tests"
        )
    client = open_app(models, sqlite_url, tmp_path / "plots").test_client()
    report = client.get("/v1/models/toy/report").get_json()
    change = report["change"]
    assert report["model"]["version"] == "2" and change["previous_version"] == "1"
    assert change["schema"]["added"] == ["d"] and change["schema"]["removed"] == ["c"]
    registry = ModelRegistry(models)
    before = global_importance(registry.get("toy", "1")).mean_abs()
    after = global_importance(registry.get("toy", "2")).mean_abs()
    assert change["importance_shift"]["a"]["difference"] == pytest.approx(after["a"] - before["a"])
    assert (
        change["importance_shift"]["c"]["after"] is None and change["importance_shift"]["d"]["before"] is None
    )
    assert (
        report["intended_use"] == "tests" and report["performance"] is None and report["bias_audit"] is None
    )
    first = client.get("/v1/models/toy/report?version=1").get_json()
    assert first["change"] is None and first["model"]["version"] == "1"
    assert client.get("/v1/models/nope/report").status_code == 404
    assert client.get("/v1/models/toy/report?version=9").status_code == 404


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("german-credit", "the logarithm of the odds of 'good'"),
        ("breast-cancer-forest", "Contributions are in probability"),
        ("diabetes-gbr", "the model's own output units"),
    ],
)
def test_the_report_page_says_in_words_what_the_importance_units_are(
    demo_models_dir: Path, tmp_path: Path, name: str, words: str
) -> None:
    """The bars and beeswarm are drawn in the model's SHAP units (log-odds for german-credit): say them."""
    app = open_app(demo_models_dir, f"sqlite:///{tmp_path / 'a.sqlite3'}", tmp_path / "plots")
    page = app.test_client().get(f"/review/models/{name}", headers={"Accept": "text/html"})
    assert page.status_code == 200
    assert words in html.unescape(page.get_data(as_text=True))
    with app.test_request_context():
        from explain_service.fairness.reporting import report_for
        from explain_service.review.report_pages import render_report_document

        document = render_report_document(report_for(app.extensions["explain"], name))
    assert words in html.unescape(document)


def test_the_report_command_says_what_it_is_doing(demo_models_dir: Path, tmp_path: Path) -> None:
    """A report takes seconds (a PDF the longest): each step is a timestamped line on stderr."""
    out = tmp_path / "r.html"
    result = CliRunner().invoke(
        main,
        [
            "report",
            "--model",
            "german-credit",
            "--models-dir",
            str(demo_models_dir),
            "--database-url",
            f"sqlite:///{tmp_path / 'a.sqlite3'}",
            "--output",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    steps = result.stderr.splitlines()
    assert [line.split(" report: ")[1] for line in steps] == [
        "loading german-credit and the audit database",
        "reading the audit figures and computing global importance over the background",
        "drawing the images and writing the HTML file",
    ]
    assert all(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ report: ", line) for line in steps)
    assert result.stdout.startswith(f"report of german-credit v1 written to {out} (")


def test_the_report_page_counts_one_of_a_thing_in_the_singular(demo_models_dir: Path, tmp_path: Path) -> None:
    """A one-day window and groups of one read "last 1 day", "at least 1 decision", not "1 days"."""
    app = open_app(
        demo_models_dir,
        f"sqlite:///{tmp_path / 'a.sqlite3'}",
        tmp_path / "plots",
        disparity_window_days=1,
        disparity_min_group=1,
    )
    page = app.test_client().get("/review/models/german-credit", headers={"Accept": "text/html"})
    text = html.unescape(page.get_data(as_text=True))
    assert page.status_code == 200
    assert "last 1 day (" in text and "at least 1 decision;" in text
    assert re.search(r"\b1 (day|decision|row|record|incident)s\b", text) is None


@pytest.mark.parametrize(
    ("n", "noun", "plural", "text"),
    [
        (1, "incident", None, "1 incident"),
        (0, "incident", None, "0 incidents"),
        (2_000, "row", None, "2,000 rows"),
        (1, "match", "matches", "1 match"),
        (3, "match", "matches", "3 matches"),
    ],
    ids=["one", "none", "thousands", "irregular-one", "irregular-many"],
)
def test_counted_nouns(n: int, noun: str, plural: str | None, text: str) -> None:
    from explain_service.counts import count

    assert count(n, noun, plural) == text
