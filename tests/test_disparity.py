"""Live disparity: counts per sensitive group from the chain, parity ratios, the alert and its gauges."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fairlearn.metrics import demographic_parity_ratio
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine

from explain_service.audit.chain import StoredRecord
from explain_service.audit.store import AuditStore
from explain_service.fairness.groups import group_labels
from explain_service.fairness.monitor import (
    DisparityCounts,
    DisparitySettings,
    Monitored,
    disparity,
    metadata,
    series,
)
from explain_service.registry.store import ModelRegistry
from explain_service.service import rows_as_dicts
from tests.conftest import open_app

TODAY = date(2026, 12, 2)
EDGES = (0, 25, 40, 60, 200)


def fake_record(seq: int, day: date, sex: str, age: int, label: str, version: str = "1") -> StoredRecord:
    body = {
        "kind": "explanation",
        "instance": {"sex": sex, "age": age, "job": 1},
        "explanation": {"prediction": {"label": label}},
    }
    when = datetime(day.year, day.month, day.day, 12, tzinfo=UTC)
    return StoredRecord(seq, f"r{seq}", when, "credit", version, "0" * 64, None, body, "", "")


@pytest.fixture
def synthetic(tmp_path: Path):
    """400 seeded decisions over 60 days folded into a disparity table, and the same rows as a frame."""
    rng = np.random.default_rng(7)
    rows = []
    for seq in range(1, 401):
        sex = "female" if rng.random() < 0.4 else "male"
        age = int(rng.integers(19, 75))
        good = rng.random() < (0.45 if sex == "female" else 0.7)
        day = TODAY - timedelta(days=int(rng.integers(0, 60)))
        rows.append({"seq": seq, "day": day, "sex": sex, "age": age, "label": "good" if good else "bad"})
    frame = pd.DataFrame(rows)
    engine = create_engine(f"sqlite:///{tmp_path / 'd.sqlite3'}")
    metadata.create_all(engine)
    lookup = {("credit", "1"): Monitored({"sex": None, "age": EDGES}, "good")}
    projection = DisparityCounts(lambda name, version: lookup.get((name, version)))
    records = [fake_record(r["seq"], r["day"], r["sex"], r["age"], r["label"]) for r in rows]
    with engine.begin() as conn:
        for start in range(0, len(records), 150):  # batches fold into the same keys
            projection.apply(conn, records[start : start + 150])
        projection.apply(
            conn, [fake_record(999, TODAY, "female", 30, "good", version="9")]
        )  # unknown version
    return engine, frame


def test_window_rates_and_ratio_equal_direct_counts_and_fairlearn(synthetic) -> None:
    engine, frame = synthetic
    settings = DisparitySettings(threshold=0.8, window_days=30, min_group=1)
    with engine.connect() as conn:
        report = disparity(conn, "credit", "1", settings, today=TODAY)
        assert disparity(conn, "credit", "9", settings, today=TODAY)["by_feature"] == {}
    window = frame[frame["day"] > TODAY - timedelta(days=30)]
    assert report["window"] == {"start": "2026-11-03", "end": "2026-12-02", "days": 30}
    favourable = (window["label"] == "good").astype(int)
    for feature, labels in [("sex", window["sex"]), ("age", group_labels(window["age"], EDGES))]:
        figures = report["by_feature"][feature]
        direct = favourable.groupby(np.asarray(labels)).agg(["count", "sum"])
        assert set(figures["groups"]) == set(direct.index)
        for group, row in direct.iterrows():
            got = figures["groups"][group]
            assert (got["decisions"], got["favourable"]) == (row["count"], row["sum"])
            assert got["selection_rate"] == pytest.approx(row["sum"] / row["count"], abs=1e-12)
        expected = demographic_parity_ratio(favourable, favourable, sensitive_features=np.asarray(labels))
        assert figures["demographic_parity_ratio"] == pytest.approx(expected, abs=1e-12)
    sex = report["by_feature"]["sex"]
    assert sex["alert"] is (sex["demographic_parity_ratio"] < 0.8) and report["alert"] is True


def test_alert_follows_threshold_and_small_groups_are_not_compared(synthetic) -> None:
    engine, _frame = synthetic
    with engine.connect() as conn:
        never = disparity(conn, "credit", "1", DisparitySettings(threshold=0.0, min_group=1), today=TODAY)
        always = disparity(conn, "credit", "1", DisparitySettings(threshold=1.01, min_group=1), today=TODAY)
        strict = disparity(conn, "credit", "1", DisparitySettings(min_group=10_000), today=TODAY)
    assert never["alert"] is False and always["alert"] is True
    assert all(f["alert"] for f in always["by_feature"].values())
    assert strict["by_feature"]["sex"]["compared_groups"] == []
    assert strict["by_feature"]["sex"]["demographic_parity_ratio"] is None and strict["alert"] is False


def test_daily_and_weekly_series_sum_to_the_direct_counts(synthetic) -> None:
    engine, frame = synthetic
    with engine.connect() as conn:
        daily = series(conn, "credit", "1", period="day")
        weekly = series(conn, "credit", "1", period="week")
    females = frame[frame["sex"] == "female"]
    assert sum(p["decisions"] for p in daily["sex"]["female"]) == len(females)
    assert sum(p["decisions"] for p in weekly["sex"]["female"]) == len(females)
    monday = TODAY - timedelta(days=TODAY.weekday())
    this_week = females[females["day"] >= monday]
    last = weekly["sex"]["female"][-1]
    assert last["period"] == monday.isoformat() and last["decisions"] == len(this_week)
    assert last["selection_rate"] == pytest.approx((this_week["label"] == "good").mean())


def _gauges(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        if family.name.startswith("explain_disparity"):
            for sample in family.samples:
                out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


@pytest.mark.parametrize("threshold, alert", [(0.0, 0.0), (1.01, 1.0)], ids=["quiet", "alert"])
def test_gauges_on_metrics_equal_counts_of_the_served_records(
    demo_models_dir: Path, tmp_path: Path, url: str, threshold: float, alert: float
) -> None:
    app = open_app(
        demo_models_dir, url, tmp_path / "plots", disparity_min_group=1, disparity_threshold=threshold
    )
    client = app.test_client()
    rows = rows_as_dicts(ModelRegistry(demo_models_dir).get("german-credit").background.iloc[:80])
    r = client.post("/v1/models/german-credit:explain", json={"instances": rows, "methods": ["shap"]})
    assert r.status_code == 200
    gauges = _gauges(client.get("/metrics").get_data(as_text=True))
    records = [x for x in AuditStore(url).list_records(limit=1000) if x.body["kind"] == "explanation"]
    frame = pd.DataFrame(
        [{**x.body["instance"], "label": x.body["explanation"]["prediction"]["label"]} for x in records]
    )
    good = (frame["label"] == "good").astype(int)
    for feature, labels in [("sex", frame["sex"]), ("age", group_labels(frame["age"], EDGES))]:
        base = {"model": "german-credit", "version": "1", "feature": feature}
        rates = good.groupby(np.asarray(labels)).agg(["count", "mean"])
        for group, row in rates.iterrows():
            key = tuple(sorted({**base, "group": group}.items()))
            assert gauges[("explain_disparity_decisions", key)] == row["count"]
            assert gauges[("explain_disparity_selection_rate", key)] == pytest.approx(row["mean"], abs=1e-12)
        ratio = gauges[("explain_disparity_ratio", tuple(sorted(base.items())))]
        expected = rates["mean"].min() / rates["mean"].max()
        assert ratio == pytest.approx(expected, abs=1e-12) and not math.isnan(ratio)
        assert gauges[("explain_disparity_alert", tuple(sorted(base.items())))] == alert


def test_workers_catching_up_at_once_count_each_record_once(tmp_path: Path, url: str) -> None:
    """Four workers' tallies fold the same trail in parallel: the counts equal one count of the records."""
    import threading

    from explain_service.audit.bulk import append_in_batches
    from explain_service.audit.store import AuditEntry
    from explain_service.audit.tally import Tally

    store = AuditStore(url)
    rng = np.random.default_rng(3)
    sexes = rng.choice(["female", "male"], 3000)
    labels = rng.choice(["good", "bad"], 3000)
    entries = (
        AuditEntry(
            {
                "kind": "explanation",
                "instance": {"sex": s, "age": 30},
                "explanation": {"prediction": {"label": y}},
            },
            "credit",
            "1",
            "0" * 64,
        )
        for s, y in zip(sexes, labels, strict=True)
    )
    append_in_batches(store, entries, batch_size=500)
    lookup = {("credit", "1"): Monitored({"sex": None}, "good")}
    tallies = [Tally(AuditStore(url), [DisparityCounts(lambda n, v: lookup.get((n, v)))]) for _ in range(4)]
    threads = [
        threading.Thread(target=t.catch_up, kwargs={"force": True, "max_records": None}) for t in tallies
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with tallies[0].connect() as conn:
        groups = disparity(conn, "credit", "1", DisparitySettings(min_group=1))["by_feature"]["sex"]["groups"]
    for sex in ("female", "male"):
        mine = sexes == sex
        assert groups[sex]["decisions"] == mine.sum()
        assert groups[sex]["favourable"] == (labels[mine] == "good").sum()
    assert sum(t.catch_up(force=True) for t in tallies) == 0  # nothing left to fold in


def test_audit_reindex_rebuild_restores_the_counts(
    demo_models_dir: Path, tmp_path: Path, sqlite_url: str
) -> None:
    from click.testing import CliRunner
    from sqlalchemy import delete

    from explain_service.cli import main
    from explain_service.fairness.monitor import disparity_counts

    app = open_app(demo_models_dir, sqlite_url, tmp_path / "plots")
    rows = rows_as_dicts(ModelRegistry(demo_models_dir).get("german-credit").background.iloc[:20])
    assert (
        app.test_client().post("/v1/models/german-credit:explain", json={"instances": rows}).status_code
        == 200
    )
    tally = app.extensions["explain"].tally
    tally.catch_up(force=True)
    with tally.connect() as conn:
        before = disparity(conn, "german-credit", "1")["by_feature"]
        conn.execute(delete(disparity_counts))  # a derived table lost (or edited): rebuilt from the chain
        conn.commit()
        assert disparity(conn, "german-credit", "1")["by_feature"] == {}
    env = {"EXPLAIN_MODELS_DIR": str(demo_models_dir)}
    result = CliRunner().invoke(
        main, ["audit", "reindex", "--rebuild", "--database-url", sqlite_url], env=env
    )
    assert result.exit_code == 0, result.output
    with tally.connect() as conn:
        assert disparity(conn, "german-credit", "1")["by_feature"] == before
    assert sum(g["decisions"] for g in before["sex"]["groups"].values()) == 20


def test_gauges_under_gunicorns_multiprocess_metrics_are_one_family_each(
    demo_models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With PROMETHEUS_MULTIPROC_DIR (as under gunicorn) each disparity family is exposed once, unlabelled by pid.

    A metric family named twice (a second HELP/TYPE line) makes Prometheus refuse the whole scrape.
    """
    from prometheus_client import values

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    monkeypatch.setattr(values, "ValueClass", values.MultiProcessValue())
    app = open_app(
        demo_models_dir, f"sqlite:///{tmp_path / 'audit.sqlite3'}", tmp_path / "plots", disparity_min_group=1
    )
    client = app.test_client()
    rows = rows_as_dicts(ModelRegistry(demo_models_dir).get("german-credit").background.iloc[:40])
    assert client.post("/v1/models/german-credit:explain", json={"instances": rows}).status_code == 200
    for _ in range(2):  # a second scrape reads what the first one may have left behind
        text = client.get("/metrics").get_data(as_text=True)
    for name in ("ratio", "alert", "selection_rate", "decisions"):
        assert text.count(f"# TYPE explain_disparity_{name} gauge") == 1, name
    samples = [
        s
        for f in text_string_to_metric_families(text)
        if f.name.startswith("explain_disparity")
        for s in f.samples
    ]
    assert samples and all("pid" not in s.labels for s in samples)
