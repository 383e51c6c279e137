"""The reviewers' HTML pages at scale: list, filtered list, queue and detail over a large PostgreSQL trail.

Each page is requested through the whole Flask stack (routing, the access guard, the index query, the
Jinja2 template) with the app's test client, and timed next to the index query alone
(:meth:`TrailIndex.search` with the same filters), so the ratio shows what rendering adds. Goal: the
first page and a filtered page p50 < 300 ms with 1,000,000 records.

The trail is the one ``bench/bench_review_list.py`` loads (through the chain's append path, so ``audit
verify`` holds): pass ``--reuse URL`` for a database it kept (``--keep``), or ``--records N`` to load a
fresh one here with the same loader. The pages run with access control off (the gate is measured in
``bench_access.py``), so nothing is written to a reused database.

Run: ``python bench/bench_review_pages.py --reuse postgresql+psycopg://.../bench_review_...`` or
``python bench/bench_review_pages.py`` (needs ``EXPLAIN_TEST_DATABASE_URL``; loads 1,000,000 records).
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from bench._common import percentile_ms, write_section
from bench.bench_review_list import RUNS, WARMUP, arguments, server_version, timed, trail_database
from explain_service.app import create_app
from explain_service.audit.search import Filters

TITLE = "Reviewer pages (HTML) at 1,000,000 records (PostgreSQL)"


def page_app(url: str) -> Any:
    """The service on ``url`` with the German-credit demo model registered, access control off."""
    from explain_service.registry.demo import build_demo

    root = Path(tempfile.mkdtemp(prefix="bench-pages-"))
    build_demo(root / "models", only=["german-credit"])
    return create_app(
        {
            "database_url": url,
            "models_dir": str(root / "models"),
            "plots_dir": str(root / "plots"),
            "auth": "off",
            "ratelimit_default": "",
            "request_deadline_seconds": 0,
            "secret_key": "bench-" + "s" * 40,  # so a reused database gets no stored secret
        }
    )


def scenarios(app: Any) -> list[tuple[str, str, Callable[[], Any] | None]]:
    """(label, page path, the same query on the index alone or None)."""
    index = app.extensions["explain"].index
    head = app.extensions["explain"].audit.head()[0]
    middle = head // 2
    sample = index.search(after=middle, limit=1, count=False).items[0]
    filtered = Filters(model_name="german-credit", model_version="1", label="bad", flags=("low_lime_r2",))
    return [
        ("first page (no filter, with total)", "/review/", lambda: index.search(limit=50)),
        (
            "filtered: model + version + label + low LIME R²",
            "/review/?model=german-credit&version=1&label=bad&flag=low_lime_r2",
            lambda: index.search(filtered, limit=50),
        ),
        ("status flagged", "/review/?status=flagged", lambda: index.search(Filters(statuses=("flagged",)))),
        (
            "reference (exact)",
            f"/review/?reference={sample.reference}",
            lambda: index.search(Filters(reference=sample.reference)),
        ),
        ("page deep in the trail (keyset)", f"/review/?after={middle}", lambda: index.search(after=middle)),
        ("review queue", "/review/queue", lambda: index.queue(limit=50)),
        ("one explanation (detail page)", f"/review/explanations/{sample.id}", None),
    ]


def measure(url: str) -> tuple[int, list[tuple[str, list[float], list[float] | None, int]]]:
    app = page_app(url)
    client = app.test_client()
    total = app.extensions["explain"].index.search(limit=1).total or 0
    out = []
    for label, path, query in scenarios(app):

        def get(path: str = path) -> int:
            response = client.get(path, headers={"Accept": "text/html"})
            assert response.status_code == 200, (path, response.status_code)
            return len(response.data)

        page_samples, size = timed(get)
        query_samples = timed(query)[0] if query is not None else None
        out.append((label, page_samples, query_samples, int(size)))
    return total, out


def main() -> None:
    args = arguments(__doc__.split("\n\n")[0])
    with trail_database(args, "bench_pages") as (url, _figures):
        version = server_version(url)
        total, results = measure(url)
    lines = [
        "| page (whole Flask request, HTML) | p50 (ms) | p95 (ms) | index query alone p50 (ms) | page / query | HTML size |",
        "|---|---|---|---|---|---|",
    ]
    for label, page, query, size in results:
        p50 = percentile_ms(page, 50)
        q50 = percentile_ms(query, 50) if query is not None else None
        ratio = f"{p50 / q50:.2f}x" if q50 else "-"
        lines.append(
            f"| {label} | {p50:.1f} | {percentile_ms(page, 95):.1f} | "
            f"{'-' if q50 is None else f'{q50:.1f}'} | {ratio} | {size / 1024:.0f} KiB |"
        )
    notes = [
        f"- Trail: {total:,} explanation records (plus the review events of `bench_review_list.py`'s load) in "
        f"PostgreSQL {version}; pages of 50; medians of {RUNS} runs after {WARMUP} warm-ups, the page and its "
        "index query timed side by side in one process.",
        "- A page's time is the whole request through Flask's test client: routing, the access guard (off), "
        "the index query with its catch-up check and exact total, suspended-model lookups and the template. "
        "The detail page reads the record, its index row, its reviews and the model's manifest; its plots are "
        "separate requests (rendered once, then cached).",
    ]
    if args.reuse:
        notes.append(
            "- The database is the one `python bench/bench_review_list.py --keep` loaded through the chain's "
            "append path, timed here with `--reuse URL`. The 2 cores were shared with other jobs during the "
            "run, so p95 and page/query ratios near 1 carry that noise."
        )
    body = "\n".join(lines) + "\n\n" + "\n".join(notes)
    print(body)
    if not args.no_write:
        command = "python bench/bench_review_pages.py" + (" --reuse URL" if args.reuse else "")
        if not args.reuse and args.records != 1_000_000:
            command += f" --records {args.records}"
        write_section(TITLE, body, command)


if __name__ == "__main__":
    main()
