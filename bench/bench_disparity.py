"""Live disparity from the derived counts vs. from every record, side by side, over one loaded trail.

A trail of ``--records`` explanation records of the German-credit demo is loaded through the chain's own
append path (:func:`explain_service.audit.bulk.append_in_batches`; bodies are real ``:explain`` records of
64 background rows, varied per record in sex, age and decision). Then, in one run:

* the projection (:class:`explain_service.fairness.monitor.DisparityCounts` fed by
  :class:`explain_service.audit.tally.Tally`) catches up from empty: records folded in per second;
* the window's figures are read from the counts (:func:`explain_service.fairness.monitor.disparity`,
  what the report page, ``/metrics`` and the queue's flag call) and, for comparison, computed by reading
  and parsing every record's body, as a service without the counts would; both give the same counts
  (checked), and the ratio of their median times is the speed-up;
* a whole transparency report (:func:`explain_service.fairness.reporting.report_for`, importance cached).

Run: ``python bench/bench_disparity.py [--records N] [--database-url URL]`` (default: 100,000 records in a
temporary SQLite file). Writes the "Live disparity and reports" section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import copy
import random
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson
from sqlalchemy import select

from bench._common import write_section
from explain_service.app import create_app
from explain_service.audit.bulk import append_in_batches
from explain_service.audit.schema import records
from explain_service.audit.store import AuditEntry
from explain_service.audit.tally import Tally
from explain_service.fairness.groups import group_labels
from explain_service.fairness.monitor import DisparityCounts, disparity, manifest_lookup
from explain_service.fairness.reporting import report_for
from explain_service.registry.demo import build_demo, german_credit_frame
from explain_service.service import rows_as_dicts

EDGES = (0, 25, 40, 60, 200)


def entries(app: Any, count: int, seed: int = 0) -> Iterator[AuditEntry]:
    """``count`` explanation records built from real answers, varied in sex, age and decision."""
    client = app.test_client()
    rows = rows_as_dicts(german_credit_frame()[0].head(64))
    answer = client.post("/v1/models/german-credit:explain", json={"instances": rows, "methods": ["shap"]})
    store = app.extensions["explain"].audit
    templates = [store.get(e["id"]) for e in answer.get_json()["explanations"]]
    rng = random.Random(seed)
    for _ in range(count):
        template = rng.choice(templates)
        body = copy.deepcopy(template.body)
        female = rng.random() < 0.35
        body["instance"]["sex"] = "female" if female else "male"
        body["instance"]["age"] = rng.randint(19, 75)
        good = rng.random() < (0.6 if female else 0.72)
        body["explanation"]["prediction"]["label"] = "good" if good else "bad"
        yield AuditEntry(body, template.model_name, template.model_version, template.model_sha256, "bench")


def direct(app: Any) -> dict[str, dict[str, list[int]]]:
    """The same counts from every record's body, streamed and parsed (what the counts table saves)."""
    counts: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    tally = app.extensions["explain"].tally
    query = select(records.c.body).where(
        records.c.model_name == "german-credit", records.c.model_version == "1"
    )
    values: dict[str, list[Any]] = {"sex": [], "age": []}
    good: list[int] = []
    with tally.connect() as conn:
        for (text,) in conn.execution_options(yield_per=2000).execute(query):
            body = orjson.loads(text)
            if body.get("kind") != "explanation":
                continue
            good.append(int(body["explanation"]["prediction"]["label"] == "good"))
            values["sex"].append(body["instance"]["sex"])
            values["age"].append(body["instance"]["age"])
    for feature, edges in (("sex", None), ("age", EDGES)):
        for group, favourable in zip(group_labels(values[feature], edges), good, strict=True):
            counts[feature][str(group)][0] += 1
            counts[feature][str(group)][1] += favourable
    return counts


def median_seconds(fn: Any, runs: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(runs):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp) / "models"
        build_demo(models, only=["german-credit"])
        url = args.database_url or f"sqlite:///{tmp}/audit.sqlite3"
        app = create_app(
            {"models_dir": str(models), "database_url": url, "plots_dir": f"{tmp}/plots", "auth": "off",
             "ratelimit_default": "", "request_deadline_seconds": 0, "eager_load": False}
        )  # fmt: skip
        services = app.extensions["explain"]
        start = time.perf_counter()
        loaded = append_in_batches(services.audit, entries(app, args.records))
        load = time.perf_counter() - start
        tally = Tally(services.audit, [DisparityCounts(manifest_lookup(models))])
        start = time.perf_counter()
        folded = tally.catch_up(force=True, max_records=None)
        fold = time.perf_counter() - start
        with tally.connect() as conn:
            from_counts, figures = median_seconds(lambda: disparity(conn, "german-credit", "1"), 21)
        from_records, scanned = median_seconds(lambda: direct(app), 3)
        for feature, found in figures["by_feature"].items():
            for group, g in found["groups"].items():
                assert [g["decisions"], g["favourable"]] == scanned[feature][group], (feature, group)
        report_for(services, "german-credit")  # importance computed once, then cached on the model
        report_s, _ = median_seconds(lambda: report_for(services, "german-credit"), 5)
    backend = "PostgreSQL" if url.startswith("postgresql") else "SQLite"
    body = f"""
{loaded:,} explanation records of german-credit v1 ({backend}), loaded through the chain's append path in
{load:.1f} s. The disparity counts caught up from empty over {folded:,} records in {fold:.1f} s
({folded / fold:,.0f} records/s); afterwards each read folds in only the records appended since.

| live disparity of one model version (sex, age band; 30-day window) | median ms |
|---|---|
| from the counts (`GROUP BY` over the derived table) | {from_counts * 1000:.2f} |
| from every record (stream and parse each body) | {from_records * 1000:.0f} |

Ratio: **{from_records / from_counts:,.0f}x** faster from the counts, same counts (checked per group).
A whole transparency report (`report_for`, importance cached on the model): median {report_s * 1000:.0f} ms.
"""
    write_section(
        "Live disparity and reports", body, f"python bench/bench_disparity.py --records {args.records}"
    )
    print(body)


if __name__ == "__main__":
    main()
