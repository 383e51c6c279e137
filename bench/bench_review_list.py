"""The reviewers' list at scale: search and queue pages over a 1,000,000-record trail in PostgreSQL.

The trail is loaded through the chain's own append path (:func:`explain_service.audit.bulk.append_in_batches`,
1,000 records per atomic append), so ``audit verify`` holds on it; then the trail index is projected
(:meth:`TrailIndex.catch_up`), a few thousand review events are appended and indexed, and each list
query is timed through :class:`TrailIndex` exactly as the pages call it (its catch-up check included,
counts included unless said otherwise). Goal: first page and a filtered page p50 < 300 ms.

Bodies are real ``:explain`` records of the German-credit demo model (SHAP and LIME on 64 background
rows, about 2.5 KB each), varied per record: model and version, caller, a unique reference, the LIME R²
(10% below 0.5), out-of-range inputs (3%) and review routing (15%).

Run: ``python bench/bench_review_list.py`` (needs ``EXPLAIN_TEST_DATABASE_URL``; ``--records N`` for a
smaller run, ``--keep`` to keep the loaded database and print its URL, ``--reuse URL`` to time an
existing one again, e.g. with the HTML pages on top). Without ``--reuse`` it makes and drops its own
database.
"""

from __future__ import annotations

import argparse
import copy
import os
import random
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

from bench._common import percentile_ms, write_section
from explain_service.audit.bulk import append_in_batches
from explain_service.audit.projections import TrailIndex
from explain_service.audit.recorder import record_body
from explain_service.audit.reviews import review_body
from explain_service.audit.search import Filters
from explain_service.audit.store import AuditEntry, AuditStore

MODELS = [
    ("german-credit", "1", 0.4),
    ("german-credit", "2", 0.3),
    ("housing-risk", "1", 0.2),
    ("fraud", "3", 0.1),
]
CALLERS = [f"app-{i:02d}" for i in range(20)]
RUNS = 31
WARMUP = 3


def templates(count: int = 64) -> list[dict[str, Any]]:
    """Real explanation record bodies (SHAP + LIME) of ``count`` German-credit background rows."""
    from explain_service.registry.demo import build_demo
    from explain_service.registry.store import ModelRegistry
    from explain_service.service import ExplainService

    root = Path(tempfile.mkdtemp(prefix="bench-review-")) / "models"
    build_demo(root, only=["german-credit"])
    model = ModelRegistry(root).get("german-credit")
    captured: list[dict[str, Any]] = []

    class Capture:
        def record(self, _model: Any, entries: list[dict[str, Any]], _caller: str | None) -> list[str]:
            captured.extend(entries)
            return [uuid.uuid4().hex for _ in entries]

    ExplainService(recorder=Capture()).explain(model, model.background.head(count), ["shap", "lime"])
    return [
        record_body(model, e["instance"], e["explanation"], e["request"], None, e["review"]) for e in captured
    ]


def entries(total: int, bodies: list[dict[str, Any]], seed: int = 0) -> Iterator[AuditEntry]:
    """``total`` explanation entries varied from ``bodies`` (see the module docstring)."""
    rng = random.Random(seed)
    names = [(n, v) for n, v, _ in MODELS]
    weights = [w for _, _, w in MODELS]
    for i in range(total):
        body = copy.deepcopy(bodies[i % len(bodies)])
        name, version = rng.choices(names, weights)[0]
        body["model"] = {**body["model"], "name": name, "version": version}
        body["reference"] = f"case-{i:07d}"
        explanation = body["explanation"]
        explanation["lime"]["score"] = (
            rng.uniform(0.05, 0.5) if rng.random() < 0.10 else rng.uniform(0.5, 0.99)
        )
        explanation["flags"] = {"out_of_range": ["credit_amount"]} if rng.random() < 0.03 else {}
        rules = ["probability_band"] if rng.random() < 0.15 else []
        body["review"] = {"required": bool(rules), "rules": rules}
        yield AuditEntry(body, name, version, "b" * 64, caller=rng.choice(CALLERS))


def timed(fn: Callable[[], Any]) -> tuple[list[float], Any]:
    for _ in range(WARMUP):
        fn()
    samples, result = [], None
    for _ in range(RUNS):
        start = time.perf_counter()
        result = fn()
        samples.append(time.perf_counter() - start)
    return samples, result


def scenarios(index: TrailIndex, total: int) -> list[tuple[str, Callable[[], Any]]]:
    """The list queries timed: what the reviewers' list and queue pages ask."""
    middle = total // 2
    last_day = index.search(limit=1, count=False).items[0].created_at
    return [
        ("first page, no filter, with total", lambda: index.search(limit=50)),
        ("first page, no filter, no total", lambda: index.search(limit=50, count=False)),
        ("page 10,000 deep (keyset after a mid-trail seq)", lambda: index.search(after=middle, limit=50)),
        ("model + version + label + low LIME R²", lambda: index.search(
            Filters(model_name="german-credit", model_version="1", label="bad", flags=("low_lime_r2",)))),
        ("status flagged", lambda: index.search(Filters(statuses=("flagged",)))),
        ("out-of-range inputs", lambda: index.search(Filters(flags=("out_of_range",)))),
        ("caller + since a day before the newest", lambda: index.search(
            Filters(caller="app-07", since=last_day - timedelta(days=1)))),
        ("reference (exact)", lambda: index.search(Filters(reference=f"case-{middle:07d}"))),
        ("review queue, oldest first", lambda: index.queue(limit=50)),
    ]  # fmt: skip


def load(url: str, total: int) -> dict[str, float]:
    """Fill the trail at ``url`` and project it; return the load figures."""
    bodies = templates()
    store = AuditStore(url, durability="os")
    started = time.perf_counter()
    last = [started]

    def progress(done: int) -> None:
        if done % 100_000 == 0 or done == total:
            now = time.perf_counter()
            print(f"  appended {done:,} ({100_000 / max(now - last[0], 1e-9):,.0f} records/s)", flush=True)
            last[0] = now

    append_in_batches(store, entries(total, bodies), progress=progress)
    appended = time.perf_counter() - started
    index = TrailIndex(store)
    started = time.perf_counter()
    index.catch_up()
    projected = time.perf_counter() - started
    # Reviewers at work: 3,000 events on random records, appended and indexed as the API does.
    rng = random.Random(1)
    picks = (
        index.search(limit=500, count=False).items
        + index.search(after=total // 3, limit=500, count=False).items
    )
    reviews = []
    for _ in range(3000):
        item = rng.choice(picks)
        action = rng.choice(["approve", "flag", "flag", "escalate"])
        body = review_body(item.id, action, "checked", None, "reviewer-1", "review")
        reviews.append(AuditEntry(body, item.model_name, item.model_version, "b" * 64, caller="reviewer-1"))
    append_in_batches(store, reviews, batch_size=100)
    index.catch_up()
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:  # a live database has autovacuum; a fresh bulk load needs it once
        conn.exec_driver_sql("VACUUM ANALYZE audit_index_explanations")
        conn.exec_driver_sql("VACUUM ANALYZE audit_index_reviews")
        conn.exec_driver_sql("VACUUM ANALYZE audit_records")
    engine.dispose()
    index.close()
    store.close()
    return {"append_s": appended, "project_s": projected}


def measure(url: str) -> tuple[int, str, list[tuple[str, list[float], Any]]]:
    version = server_version(url)
    store = AuditStore(url)
    index = TrailIndex(store)
    total = index.search(limit=1).total or 0
    out = [(name, *timed(fn)) for name, fn in scenarios(index, store.head()[0])]
    index.close()
    store.close()
    return total, version, out


def arguments(description: str) -> argparse.Namespace:
    """The options both reviewer benches take; exits when there is no database to load or reuse."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--keep", action="store_true", help="keep a database loaded here and print its URL")
    parser.add_argument("--reuse", default=None, help="time an already loaded database (its URL)")
    parser.add_argument("--no-write", action="store_true", help="do not update bench/RESULTS.md")
    args = parser.parse_args()
    if args.reuse is None and not os.environ.get("EXPLAIN_TEST_DATABASE_URL"):
        sys.exit("set EXPLAIN_TEST_DATABASE_URL to a PostgreSQL database (or pass --reuse URL)")
    return args


@contextmanager
def trail_database(args: argparse.Namespace, prefix: str) -> Iterator[tuple[str, dict[str, float]]]:
    """The URL of ``--reuse``, or of a new database loaded with ``--records`` (dropped after unless
    ``--keep``), and the load's timings (empty when reused)."""
    if args.reuse:
        yield args.reuse, {}
        return
    base = str(os.environ["EXPLAIN_TEST_DATABASE_URL"])
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    admin.dispose()
    url = make_url(base).set(database=name).render_as_string(hide_password=False)
    try:
        print(f"loading {args.records:,} records into {name}", flush=True)
        yield url, load(url, args.records)
    finally:
        if args.keep:
            print(f"kept: {url}")
        else:
            admin = create_engine(base, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            admin.dispose()


def main() -> None:
    args = arguments(__doc__.split("\n\n")[0])
    with trail_database(args, "bench_review") as (url, figures):
        total, version, results = measure(url)
    lines = [
        "| list query (TrailIndex, as the pages call it) | p50 (ms) | p95 (ms) | rows | total |",
        "|---|---|---|---|---|",
    ]
    for label, samples, page in results:
        count = "-" if page.total is None else f"{page.total:,}"
        lines.append(
            f"| {label} | {percentile_ms(samples, 50):.1f} | {percentile_ms(samples, 95):.1f} "
            f"| {len(page.items)} | {count} |"
        )
    report = "\n".join(lines)
    notes = [
        f"- Trail: {total:,} explanation records plus 3,000 review events in PostgreSQL "
        f"(server {version}), pages of 50, medians of {RUNS} runs after {WARMUP} warm-ups.",
    ]
    if figures:
        rate = total / figures["append_s"]
        notes.append(
            f"- Bulk load through `store.append` in batches of 1,000 (chain sealed by audit_append()): "
            f"{figures['append_s']:.0f} s ({rate:,.0f} records/s); projecting the index from the chain: "
            f"{figures['project_s']:.0f} s ({total / figures['project_s']:,.0f} records/s)."
        )
    notes.append(
        "- Each query includes the index's catch-up check (one round trip when nothing is new). Totals are "
        "exact counts over the same index as the page."
    )
    body = report + "\n\n" + "\n".join(notes)
    print(body)
    if not args.no_write:
        command = "python bench/bench_review_list.py" + (
            f" --records {args.records}" if args.records != 1_000_000 else ""
        )
        write_section("Reviewer list at 1,000,000 records (PostgreSQL)", body, command)


def server_version(url: str) -> str:
    engine = create_engine(url)
    with engine.connect() as conn:
        version = str(conn.exec_driver_sql("SHOW server_version").scalar())
    engine.dispose()
    return version.split()[0]


if __name__ == "__main__":
    main()
