"""What access control costs: one-row ``:explain`` p50 over HTTP with keys + per-key limits on vs off.

Three servers under the same gunicorn settings (2 sync workers) on the same models and SQLite store
kind: one with ``EXPLAIN_AUTH=required`` and a per-key limit high enough never to refuse (the cost of
counting, not of refusing), and two with both off. The second "off" server is the noise floor: on a
shared machine, two identical servers differ by a few per cent, and a ratio below that says nothing.
Each round sends one request to every server in a shuffled order, so that machine noise and any
order effect hit all alike.

The same comparison is also made in process, without HTTP or other processes in the way: the
median time of Flask's request hooks (authentication, limits, deadline, headers, metrics) around a
trivial answer, on, with keys but no rate limit (what the limits add), and off.

Run: ``python bench/bench_access.py [--requests N]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import gunicorn, percentile_ms, write_section
from bench.bench_shap import MODELS, http_post
from explain_service.access.keys import KeyStore
from explain_service.app import create_app
from explain_service.logs import REQUEST_LOGGER
from explain_service.registry.demo import build_demo
from explain_service.registry.store import ModelRegistry

PATH = "/v1/models/german-credit:explain"
PROFILE = """Where the cost was (pyinstrument, in process, 300 one-row `:explain` requests with keys + limits on,
before `explain_service/access/memory.py`): of 2.7 s in Flask's before-request hooks, 2.0 s was
`limits`' `memory://` storage starting a `threading.Timer` on almost every hit (its expiry thread lives
10 ms) and waiting for the new thread to be scheduled, which a loaded 2-core machine makes slow; the key
lookup (cached per worker for one second, so one database read per key and second) took 0.02 s, the body
measurement 0.16 s, the rate-limit headers (one window-statistics call per response, cached by
flask-limiter between the headers) 0.03 s. The limits now count in a per-process deque store with no
thread; Redis storage is unchanged (one hit and one window read per request)."""
SECURED = {"EXPLAIN_AUTH": "required", "EXPLAIN_RATELIMIT_DEFAULT": "1000000/minute"}


def hook_times(app: Any, headers: dict[str, str], body: bytes, n: int) -> list[float]:
    """Seconds spent in the app's before/after/teardown hooks around a trivial JSON answer."""
    out = []
    for _ in range(n):
        with app.test_request_context(PATH, method="POST", data=body, headers=headers,
                                      content_type="application/json"):  # fmt: skip
            started = time.perf_counter()
            app.preprocess_request()
            app.process_response(app.make_response(({"ok": True}, 200)))
            app.do_teardown_request(None)
            out.append(time.perf_counter() - started)
    return out


def in_process(tmp: str, body: bytes) -> dict[str, float]:
    """Median microseconds of the request hooks with keys + limits on, keys alone, and both off."""
    logging.getLogger(REQUEST_LOGGER).setLevel(logging.WARNING)  # the same for all; not measured here
    configs = {
        "on": {"ratelimit_default": "1000000/minute"},
        "keys": {"ratelimit_default": ""},
        "off": {"auth": "off", "ratelimit_default": ""},
    }
    apps = {}
    for name, config in configs.items():
        app = create_app({"models_dir": str(MODELS), "database_url": f"sqlite:///{tmp}/hooks-{name}.sqlite3",
                          "plots_dir": f"{tmp}/plots", **config})  # fmt: skip
        headers = {}
        if name != "off":
            headers = {
                "Authorization": f"Bearer {app.extensions['explain_access'].keys.create('hooks', 'explain')}"
            }
        apps[name] = (app, headers)
    times: dict[str, list[float]] = {name: [] for name in apps}
    for _ in range(30):
        for name, (app, headers) in apps.items():
            times[name] += hook_times(app, headers, body, 100)
    return {name: statistics.median(t) * 1e6 for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=1000)
    n = parser.parse_args().requests
    build_demo(MODELS, only=["german-credit"])
    model = ModelRegistry(MODELS).get("german-credit")
    rows = model.background.sample(n, replace=True, random_state=3).to_dict("records")
    bodies = [json.dumps({"instances": [{k: getattr(v, "item", lambda v=v: v)() for k, v in r.items()}]}).encode()
              for r in rows]  # fmt: skip
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        hooks = in_process(tmp, bodies[0])
        secured_db = f"sqlite:///{tmp}/secured.sqlite3"
        key = KeyStore(secured_db).create("bench", "explain")
        env = {"EXPLAIN_MODELS_DIR": str(MODELS)}
        with (
            gunicorn("explain_service.app:create_app()", env={**env, **SECURED, "EXPLAIN_DATABASE_URL": secured_db}) as on,
            gunicorn("explain_service.app:create_app()", env={**env, "EXPLAIN_DATABASE_URL": f"sqlite:///{tmp}/a.sqlite3"}) as off,
            gunicorn("explain_service.app:create_app()", env={**env, "EXPLAIN_DATABASE_URL": f"sqlite:///{tmp}/b.sqlite3"}) as off2,
        ):  # fmt: skip
            auth = {"Authorization": f"Bearer {key}"}
            servers = {"on": (on, auth), "off": (off, {}), "off2": (off2, {})}
            ports = {
                name: (int(base.rsplit(":", 1)[1]), headers) for name, (base, headers) in servers.items()
            }
            times: dict[str, list[float]] = {name: [] for name in ports}
            for b in bodies[:20]:
                for port, headers in ports.values():
                    http_post(port, PATH, b, headers)
            order = random.Random(5)
            for b in bodies:
                names = list(ports)
                order.shuffle(names)
                for name in names:
                    port, headers = ports[name]
                    times[name].append(http_post(port, PATH, b, headers))
    load_after = os.getloadavg()[0]
    p50 = {name: percentile_ms(t, 50) for name, t in times.items()}
    body = (
        f"One-row `:explain` (german-credit, SHAP) over HTTP, 2 sync workers per server, SQLite audit store, "
        f"{n} rounds of one request to each server in a shuffled order; 1-minute load average "
        f"{load_before:.1f} before, {load_after:.1f} after (other jobs share this 2-core machine).\n\n"
        "| server | p50 ms | p90 ms |\n|---|---|---|\n"
        f"| keys + per-key limits on | {p50['on']:.2f} | {percentile_ms(times['on'], 90):.2f} |\n"
        f"| both off | {p50['off']:.2f} | {percentile_ms(times['off'], 90):.2f} |\n"
        f"| both off, a second identical server (noise floor) | {p50['off2']:.2f} | "
        f"{percentile_ms(times['off2'], 90):.2f} |\n\n"
        f"Ratio of p50, on vs off: **{p50['on'] / p50['off']:.3f}x** (goal <= 1.05x); "
        f"on vs the second off server: {p50['on'] / p50['off2']:.3f}x; "
        f"the two identical off servers: {p50['off2'] / p50['off']:.3f}x.\n\n"
        f"In process, the request hooks around a trivial answer (median of 3,000): {hooks['on']:.0f} us with "
        f"keys + limits on, {hooks['keys']:.0f} us with keys alone, {hooks['off']:.0f} us off, so access "
        f"control adds {hooks['on'] - hooks['off']:.0f} us per request, of which the rate limits "
        f"{hooks['on'] - hooks['keys']:.0f} us."
    )
    body += "\n\n" + PROFILE
    print(body)
    write_section("Access control", body, "python bench/bench_access.py")


if __name__ == "__main__":
    main()
