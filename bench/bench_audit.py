"""What the durable audit record costs: one-row ``:explain`` with the audit write vs the same server without.

Both servers run the settings of ``explain-service serve`` (gunicorn_conf.py: the threaded worker, 2
workers x 4 threads, one native thread each) on the same models, audit durability ``full``. Measured side
by side in one run, on SQLite (the default store) and, when ``EXPLAIN_TEST_DATABASE_URL`` points at one,
PostgreSQL:

- under 8 concurrent clients, each on its own kept-alive connection: requests per second and the latency
  of each request (p50, p99), in rounds of a few seconds that alternate between the two servers so that
  machine noise hits both alike;
- one client, sequential requests on new connections (the figure measured before group commit).

The sync worker (one request at a time per process, so concurrent appends never share a commit) is
measured the same way on SQLite, as the reason for the threaded one. The audited server notes every
commit (bench/observed_app.py), for the records a commit held and its duration.

Two more rows give the ceiling of group commit in worker threads: the same audited path with a commit
that stores nothing (bench/noop_commit_app.py), with and without the host's turn between processes.
Then four SQLite servers run side by side, taking turns (durability full, durability os, no database,
no audit): what the flush to disk, the database's own work and the rest of the audit path each cost.

Run: ``python bench/bench_audit.py``.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import gunicorn, percentile_ms, write_section
from bench.bench_shap import MODELS, http_post
from explain_service.registry.demo import build_demo
from explain_service.registry.store import ModelRegistry

N = 200
IN_PROCESS = 400
PATH = "/v1/models/german-credit:explain"
CLIENTS = 8
ROUNDS = 6
ROUND_SECONDS = 3.0
SYNC = {"GUNICORN_CMD_ARGS": "--worker-class explain_service.gunicorn_worker.JsonErrorWorker"}


def under_load(port: int, bodies: list[bytes], seconds: float) -> tuple[int, float, list[float]]:
    """``CLIENTS`` threads, one kept-alive connection each, for ``seconds``: (answers, wall, latencies)."""
    latencies: list[list[float]] = [[] for _ in range(CLIENTS)]
    stop = time.perf_counter() + seconds

    def client(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        i = k
        try:
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                conn.request("POST", PATH, bodies[i % len(bodies)], {"Content-Type": "application/json"})
                resp = conn.getresponse()
                resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"HTTP {resp.status}")
                latencies[k].append(time.perf_counter() - t0)
                i += CLIENTS
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(CLIENTS)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    flat = [x for per in latencies for x in per]
    return len(flat), wall, flat


def taking_turns(ports: dict[str, int], bodies: list[bytes]) -> dict[str, tuple[int, float, list[float]]]:
    """``ROUNDS`` rounds under load in which every server takes a turn, each round starting with the
    next one, so that machine noise hits all alike: {name: (answers, wall seconds, latencies)}."""
    out: dict[str, tuple[int, float, list[float]]] = {name: (0, 0.0, []) for name in ports}
    names = list(ports)
    for r in range(ROUNDS):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            n, wall, lat = under_load(ports[name], bodies, ROUND_SECONDS)
            total_n, total_wall, total_lat = out[name]
            out[name] = (total_n + n, total_wall + wall, total_lat + lat)
    return out


def measure(
    database_url: str,
    bodies: list[bytes],
    extra_env: dict[str, str] | None = None,
    audited: str = "bench.observed_app:create_app()",
) -> dict:
    notes = Path(tempfile.mkdtemp()) / "commits.txt"
    env = {
        "EXPLAIN_MODELS_DIR": str(MODELS),
        "EXPLAIN_DATABASE_URL": database_url,
        "BENCH_AUDIT_OBSERVATIONS": str(notes),
        **(extra_env or {}),
    }
    out: dict = {
        "with": {"n": 0, "wall": 0.0, "lat": [], "seq": []},
        "without": {"n": 0, "wall": 0.0, "lat": [], "seq": []},
    }
    with (
        gunicorn(audited, env=env) as with_audit,
        gunicorn("bench.noaudit_app:create_app()", env=env) as bare,
    ):
        ports = {"with": int(with_audit.rsplit(":", 1)[1]), "without": int(bare.rsplit(":", 1)[1])}
        for port in ports.values():
            under_load(port, bodies, 1.0)  # warm every thread's path
        notes.write_text("")  # commits under load only
        for side, (n, wall, lat) in taking_turns(ports, bodies).items():
            out[side].update(n=n, wall=wall, lat=lat)
        commits = [line.split() for line in notes.read_text().splitlines()]
        out["commits"] = (len(commits), sum(int(n) for _, n in commits), sum(float(t) for t, _ in commits))
        for b in bodies[:N]:
            out["with"]["seq"].append(http_post(ports["with"], PATH, b))
            out["without"]["seq"].append(http_post(ports["without"], PATH, b))
    return out


DECOMPOSITION = {
    "audit, durability full (the default)": ("bench.observed_app:create_app()", {}),
    "audit, durability os (no flush to disk)": (
        "bench.observed_app:create_app()",
        {"EXPLAIN_AUDIT_DURABILITY": "os"},
    ),
    "audit path, no database (commit stores nothing)": ("bench.noop_commit_app:create_app()", {}),
    "no audit": ("bench.noaudit_app:create_app()", {}),
}


def decomposition(bodies: list[bytes]) -> dict[str, tuple[float, list[float]]]:
    """The servers of DECOMPOSITION (SQLite, threaded worker) side by side, taking turns under 8 clients:
    what the flush, the database and the rest of the audit path each cost. {name: (req/s, latencies)}."""
    with contextlib.ExitStack() as stack:
        ports: dict[str, int] = {}
        for name, (app, extra) in DECOMPOSITION.items():
            tmp = stack.enter_context(tempfile.TemporaryDirectory())
            env = {
                "EXPLAIN_MODELS_DIR": str(MODELS),
                "EXPLAIN_DATABASE_URL": f"sqlite:///{tmp}/a.sqlite3",
                "BENCH_AUDIT_OBSERVATIONS": f"{tmp}/commits.txt",
                **extra,
            }
            ports[name] = int(stack.enter_context(gunicorn(app, env=env)).rsplit(":", 1)[1])
        for port in ports.values():
            under_load(port, bodies, 1.0)
        out = taking_turns(ports, bodies)
    return {name: (n / wall, lat) for name, (n, wall, lat) in out.items()}


def in_process(bodies: list[bytes], durability: str) -> dict[str, tuple[float, float]]:
    """Median wall and CPU time (ms) of one ``:explain`` through the Flask test client, recorder on/off."""
    from explain_service.app import create_app

    with tempfile.TemporaryDirectory() as tmp:
        app = create_app(
            {
                "models_dir": str(MODELS),
                "database_url": f"sqlite:///{tmp}/a.sqlite3",
                "plots_dir": f"{tmp}/plots",
                "audit_durability": durability,
                "auth": "off",
                "ratelimit_default": "",
                "request_deadline_seconds": 0,
            }
        )
        client, service = app.test_client(), app.extensions["explain"].service
        recorder = service.recorder
        samples: dict[str, tuple[list[float], list[float]]] = {"with": ([], []), "without": ([], [])}
        for i in range(2 * IN_PROCESS + 20):
            side = "with" if i % 2 == 0 else "without"
            service.recorder = recorder if side == "with" else None
            wall, cpu = time.perf_counter(), time.thread_time()
            answer = client.post(PATH, data=bodies[i % len(bodies)], content_type="application/json")
            if answer.status_code != 200:
                raise RuntimeError(f"HTTP {answer.status_code}")
            if i >= 20:
                samples[side][0].append(time.perf_counter() - wall)
                samples[side][1].append(time.thread_time() - cpu)
        service.recorder = recorder
        app.extensions["explain"].audit.close()
    return {side: (percentile_ms(w, 50), percentile_ms(c, 50)) for side, (w, c) in samples.items()}


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
    stores: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        stores["SQLite (WAL, synchronous=FULL), threaded worker"] = measure(
            f"sqlite:///{tmp}/a.sqlite3", bodies
        )
    pg = os.environ.get("EXPLAIN_TEST_DATABASE_URL")
    if pg:
        stores["PostgreSQL, threaded worker"] = measure(pg, bodies)
    with tempfile.TemporaryDirectory() as tmp:
        stores["SQLite, sync worker (before)"] = measure(f"sqlite:///{tmp}/a.sqlite3", bodies, SYNC)
    # The ceiling: the same path with a commit that stores nothing (bench/noop_commit_app.py).
    for name, extra in (
        ("no database (commit stores nothing), threaded worker, host turn", {}),
        ("no database, threaded worker, no host turn", {"BENCH_AUDIT_NO_TURN": "1"}),
    ):
        with tempfile.TemporaryDirectory() as tmp:
            stores[name] = measure(
                f"sqlite:///{tmp}/a.sqlite3", bodies, extra, "bench.noop_commit_app:create_app()"
            )
    lines = [
        f"One-row `:explain` (German credit, SHAP), 2 gunicorn workers (threaded: x 4 threads). Under load: "
        f"{CLIENTS} clients on kept-alive connections, {ROUNDS} rounds of {ROUND_SECONDS:g} s per server, "
        f"alternating. Sequential: one client, {N} requests on new connections, alternating.",
        "",
        "| audit store, worker | req/s with audit | req/s without | ratio (goal >= 0.9x) "
        "| p50 under load with / without (ms) | ratio (goal <= 1.15x) | p99 under load with / without (ms) "
        "| sequential p50 with / without (ms) | records per commit under load (mean) | commit (ms, mean) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in stores.items():
        a, b = m["with"], m["without"]
        commits, records, seconds = m["commits"]
        rps_a, rps_b = a["n"] / a["wall"], b["n"] / b["wall"]
        p50a, p50b = percentile_ms(a["lat"], 50), percentile_ms(b["lat"], 50)
        lines.append(
            f"| {name} | {rps_a:.0f} | {rps_b:.0f} | **{rps_a / rps_b:.2f}x** | {p50a:.2f} / {p50b:.2f} "
            f"| **{p50a / p50b:.2f}x** | {percentile_ms(a['lat'], 99):.2f} / {percentile_ms(b['lat'], 99):.2f} "
            f"| {percentile_ms(a['seq'], 50):.2f} / {percentile_ms(b['seq'], 50):.2f} "
            f"| {records / commits:.2f} | {1000 * seconds / commits:.2f} |"
        )
    parts = decomposition(bodies)
    bare_rps = parts["no audit"][0]
    lines += [
        "",
        f"Where the cost lies: four servers on SQLite (threaded worker) side by side in one run, taking "
        f"turns under {CLIENTS} clients ({ROUNDS} rounds of {ROUND_SECONDS:g} s each):",
        "",
        "| server | req/s | vs no audit | p50 (ms) | p99 (ms) |",
        "|---|---|---|---|---|",
    ]
    for name, (rps, lat) in parts.items():
        lines.append(
            f"| {name} | {rps:.0f} | {rps / bare_rps:.2f}x | {percentile_ms(lat, 50):.2f} "
            f"| {percentile_ms(lat, 99):.2f} |"
        )
    lines += [
        "",
        f"In process (Flask test client, one thread, SQLite, {IN_PROCESS} calls each, alternating): what "
        "the audit adds to one request's wall time and to its CPU time (this thread's, kernel included).",
        "",
        "| durability | wall with / without (ms) | CPU with / without (ms) | CPU the audit adds |",
        "|---|---|---|---|",
    ]
    for durability in ("full", "os"):
        m = in_process(bodies, durability)
        (wa, ca), (wb, cb) = m["with"], m["without"]
        lines.append(
            f"| {durability} | {wa:.2f} / {wb:.2f} | {ca:.2f} / {cb:.2f} | {ca - cb:.2f} ms ({ca / cb - 1:.0%}) |"
        )
    body = "\n".join(lines)
    print(body)
    write_section("Audit write", body, "python bench/bench_audit.py")


if __name__ == "__main__":
    main()
