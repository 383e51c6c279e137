"""What the audit record costs: one-row ``:explain`` p50 over HTTP with the audit write vs without.

Both servers run under the same gunicorn settings (2 sync workers) on the same models; requests
alternate between them so that machine noise hits both alike. SQLite (the default store) and,
when ``EXPLAIN_TEST_DATABASE_URL`` points at one, PostgreSQL.

Run: ``python bench/bench_audit.py``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import gunicorn, percentile_ms, write_section
from bench.bench_shap import MODELS, http_post
from explain_service.registry.demo import build_demo
from explain_service.registry.store import ModelRegistry

N = 400
PATH = "/v1/models/german-credit:explain"


def measure(database_url: str, bodies: list[bytes]) -> tuple[list[float], list[float]]:
    env = {"EXPLAIN_MODELS_DIR": str(MODELS), "EXPLAIN_DATABASE_URL": database_url}
    with (
        gunicorn("explain_service.app:create_app()", env=env) as audited,
        gunicorn("bench.noaudit_app:create_app()", env=env) as bare,
    ):
        pa, pb = int(audited.rsplit(":", 1)[1]), int(bare.rsplit(":", 1)[1])
        for b in bodies[:20]:
            http_post(pa, PATH, b)
            http_post(pb, PATH, b)
        with_audit, without = [], []
        for b in bodies:
            with_audit.append(http_post(pa, PATH, b))
            without.append(http_post(pb, PATH, b))
    return with_audit, without


def main() -> None:
    build_demo(MODELS, only=["german-credit"])
    model = ModelRegistry(MODELS).get("german-credit")
    rows = model.background.sample(N, replace=True, random_state=2)
    bodies = [
        json.dumps(
            {"instances": [{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()}]}
        ).encode()
        for r in rows.to_dict("records")
    ]
    stores = {}
    with tempfile.TemporaryDirectory() as tmp:
        stores["SQLite (WAL, synchronous=FULL)"] = measure(f"sqlite:///{tmp}/audit.sqlite3", bodies)
    pg = os.environ.get("EXPLAIN_TEST_DATABASE_URL")
    if pg:
        stores["PostgreSQL"] = measure(pg, bodies)
    lines = [
        f"One-row `:explain` of German-credit rows over HTTP, {N} requests each, alternating between the servers.",
        "",
        "| audit store | p50 with audit (ms) | p50 without (ms) | ratio (goal <= 1.2x) | p99 with / without (ms) |",
        "|---|---|---|---|---|",
    ]
    for name, (a, b) in stores.items():
        ratio = percentile_ms(a, 50) / percentile_ms(b, 50)
        lines.append(
            f"| {name} | {percentile_ms(a, 50):.3f} | {percentile_ms(b, 50):.3f} | {ratio:.2f}x "
            f"| {percentile_ms(a, 99):.2f} / {percentile_ms(b, 99):.2f} |"
        )
    body = "\n".join(lines)
    print(body)
    write_section("Audit write", body, "python bench/bench_audit.py")


if __name__ == "__main__":
    main()
