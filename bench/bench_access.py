"""What access control costs: one-row ``:explain`` p50 over HTTP with keys + per-key limits on vs off.

Two servers under the same gunicorn settings (2 sync workers) on the same models and SQLite store
kind: one with ``EXPLAIN_AUTH=required`` and a per-key limit high enough never to refuse (the cost of
counting, not of refusing), one with both off. Requests alternate between them so that machine
noise hits both alike.

Run: ``python bench/bench_access.py``.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import gunicorn, percentile_ms, write_section
from bench.bench_shap import MODELS, http_post
from explain_service.access.keys import KeyStore
from explain_service.registry.demo import build_demo
from explain_service.registry.store import ModelRegistry

N = 400
PATH = "/v1/models/german-credit:explain"


def main() -> None:
    build_demo(MODELS, only=["german-credit"])
    model = ModelRegistry(MODELS).get("german-credit")
    rows = model.background.sample(N, replace=True, random_state=3).to_dict("records")
    bodies = [json.dumps({"instances": [{k: getattr(v, "item", lambda v=v: v)() for k, v in r.items()}]}).encode()
              for r in rows]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        secured_db, open_db = f"sqlite:///{tmp}/secured.sqlite3", f"sqlite:///{tmp}/open.sqlite3"
        key = KeyStore(secured_db).create("bench", "explain")
        secured_env = {"EXPLAIN_MODELS_DIR": str(MODELS), "EXPLAIN_DATABASE_URL": secured_db,
                       "EXPLAIN_AUTH": "required", "EXPLAIN_RATELIMIT_DEFAULT": "1000000/minute"}  # fmt: skip
        open_env = {"EXPLAIN_MODELS_DIR": str(MODELS), "EXPLAIN_DATABASE_URL": open_db}
        with (
            gunicorn("explain_service.app:create_app()", env=secured_env) as secured,
            gunicorn("explain_service.app:create_app()", env=open_env) as open_,
        ):
            ps, po = int(secured.rsplit(":", 1)[1]), int(open_.rsplit(":", 1)[1])
            auth = {"Authorization": f"Bearer {key}"}
            for b in bodies[:20]:
                http_post(ps, PATH, b, auth)
                http_post(po, PATH, b)
            on, off = [], []
            for b in bodies:
                on.append(http_post(ps, PATH, b, auth))
                off.append(http_post(po, PATH, b))
    p50_on, p50_off = percentile_ms(on, 50), percentile_ms(off, 50)
    body = (
        "One-row `:explain` (german-credit, SHAP) over HTTP, 2 sync workers each, SQLite audit store, "
        f"{N} requests alternating between the servers.\n\n"
        "| | p50 ms | p90 ms |\n|---|---|---|\n"
        f"| keys + per-key limits on | {p50_on:.2f} | {percentile_ms(on, 90):.2f} |\n"
        f"| both off | {p50_off:.2f} | {percentile_ms(off, 90):.2f} |\n\n"
        f"Ratio of p50: **{p50_on / p50_off:.3f}x** (goal <= 1.05x)."
    )
    print(body)
    write_section("Access control", body, "python bench/bench_access.py")


if __name__ == "__main__":
    main()
