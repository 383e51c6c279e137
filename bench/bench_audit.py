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
import resource
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
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


@dataclass
class Load:
    """What rounds under load gave: answers, wall seconds, latencies, and where the CPU went: the whole
    machine's busy and idle CPU seconds, and the load generator's own (this process)."""

    n: int = 0
    wall: float = 0.0
    lat: list[float] = field(default_factory=list)
    busy: float = 0.0
    idle: float = 0.0
    clients: float = 0.0

    def __add__(self, other: Load) -> Load:
        return Load(
            self.n + other.n,
            self.wall + other.wall,
            self.lat + other.lat,
            self.busy + other.busy,
            self.idle + other.idle,
            self.clients + other.clients,
        )

    def cpu_ms(self) -> tuple[float, float, float]:
        """Per answer: the machine's CPU (ms), the load generator's share of it (ms); the idle fraction."""
        return 1000 * self.busy / self.n, 1000 * self.clients / self.n, self.idle / (self.busy + self.idle)


def _machine_cpu() -> tuple[float, float]:
    """(busy, idle) CPU seconds of the whole machine since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        user, nice, system, idle, iowait, irq, softirq, steal = (int(x) for x in f.readline().split()[1:9])
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq + steal) / tick, (idle + iowait) / tick


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def under_load(port: int, bodies: list[bytes], seconds: float) -> Load:
    """``CLIENTS`` threads, one kept-alive connection each, for ``seconds``."""
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
    (busy0, idle0), own0, t0 = _machine_cpu(), _own_cpu(), time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    (busy1, idle1), own1 = _machine_cpu(), _own_cpu()
    flat = [x for per in latencies for x in per]
    return Load(len(flat), wall, flat, busy1 - busy0, idle1 - idle0, own1 - own0)


def taking_turns(ports: dict[str, int], bodies: list[bytes]) -> dict[str, Load]:
    """``ROUNDS`` rounds under load in which every server takes a turn, each round starting with the
    next one, so that machine noise hits all alike."""
    out = {name: Load() for name in ports}
    names = list(ports)
    for r in range(ROUNDS):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            out[name] += under_load(ports[name], bodies, ROUND_SECONDS)
    return out


def server_env(database_url: str, notes: Path, extra: dict[str, str]) -> dict[str, str]:
    """A benchmark server's environment: the demo models, its audit store, where it notes each commit
    (bench/observed_app.py), and ``extra``."""
    return {
        "EXPLAIN_MODELS_DIR": str(MODELS),
        "EXPLAIN_DATABASE_URL": database_url,
        "BENCH_AUDIT_OBSERVATIONS": str(notes),
        **extra,
    }


def measure(
    database_url: str,
    bodies: list[bytes],
    extra_env: dict[str, str] | None = None,
    audited: str = "bench.observed_app:create_app()",
) -> dict:
    notes = Path(tempfile.mkdtemp()) / "commits.txt"
    env = server_env(database_url, notes, extra_env or {})
    out: dict = {"with": {"seq": []}, "without": {"seq": []}}
    with (
        gunicorn(audited, env=env) as with_audit,
        gunicorn("bench.noaudit_app:create_app()", env=env) as bare,
    ):
        ports = {"with": int(with_audit.rsplit(":", 1)[1]), "without": int(bare.rsplit(":", 1)[1])}
        for port in ports.values():
            under_load(port, bodies, 1.0)  # warm every thread's path
        notes.write_text("")  # commits under load only
        for side, load in taking_turns(ports, bodies).items():
            out[side]["load"] = load
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


def decomposition(bodies: list[bytes]) -> dict[str, Load]:
    """The servers of DECOMPOSITION (SQLite, threaded worker) side by side, taking turns under 8 clients:
    what the flush, the database and the rest of the audit path each cost."""
    with contextlib.ExitStack() as stack:
        ports: dict[str, int] = {}
        for name, (app, extra) in DECOMPOSITION.items():
            tmp = stack.enter_context(tempfile.TemporaryDirectory())
            env = server_env(f"sqlite:///{tmp}/a.sqlite3", Path(tmp) / "commits.txt", extra)
            ports[name] = int(stack.enter_context(gunicorn(app, env=env)).rsplit(":", 1)[1])
        for port in ports.values():
            under_load(port, bodies, 1.0)
        return taking_turns(ports, bodies)


def append_cpu(bodies: list[bytes], groups: tuple[int, ...] = (1, 2, 4, 8)) -> dict[int, float]:
    """CPU time (ms, this thread's, kernel included) per record of a durable append in one process, one
    thread, no other load, by the records each commit holds: {records per commit: ms per record}.

    Real record bodies (from ``:explain`` calls through the Flask test client) appended through
    :meth:`AuditStore.append_raw` with durability ``full``: canonical form, the group, the seal, SQLite's
    insert and commit, the flush. Building the record body from the explanation is not included."""
    from explain_service.app import create_app
    from explain_service.audit.store import AuditEntry

    out: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        settings = {"models_dir": str(MODELS), "database_url": f"sqlite:///{tmp}/a.sqlite3"}
        app = create_app({**settings, "plots_dir": f"{tmp}/plots", "auth": "off", "ratelimit_default": ""})
        client = app.test_client()
        for body in bodies[:64]:
            client.post(PATH, data=body, content_type="application/json")
        store = app.extensions["explain"].audit
        entries = [
            AuditEntry(r.body, r.model_name, r.model_version, r.model_sha256, r.caller)
            for r in store.list_records(limit=64)
        ]
        for size in groups:
            calls = IN_PROCESS // size
            store.append_raw(entries[:size])  # warm
            cpu = time.thread_time()
            for i in range(calls):
                start = (i * size) % len(entries)
                store.append_raw(entries[start : start + size])
            out[size] = 1000 * (time.thread_time() - cpu) / (calls * size)
        store.close()
    return out


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
        "| sequential p50 with / without (ms) | records per commit under load (mean) | commit (ms, mean) "
        "| machine CPU per answer with / without (ms) | cores idle with / without |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in stores.items():
        a, b = m["with"]["load"], m["without"]["load"]
        commits, records, seconds = m["commits"]
        rps_a, rps_b = a.n / a.wall, b.n / b.wall
        p50a, p50b = percentile_ms(a.lat, 50), percentile_ms(b.lat, 50)
        (cpu_a, _, idle_a), (cpu_b, _, idle_b) = a.cpu_ms(), b.cpu_ms()
        lines.append(
            f"| {name} | {rps_a:.0f} | {rps_b:.0f} | **{rps_a / rps_b:.2f}x** | {p50a:.2f} / {p50b:.2f} "
            f"| **{p50a / p50b:.2f}x** | {percentile_ms(a.lat, 99):.2f} / {percentile_ms(b.lat, 99):.2f} "
            f"| {percentile_ms(m['with']['seq'], 50):.2f} / {percentile_ms(m['without']['seq'], 50):.2f} "
            f"| {records / commits:.2f} | {1000 * seconds / commits:.2f} "
            f"| {cpu_a:.2f} / {cpu_b:.2f} | {idle_a:.0%} / {idle_b:.0%} |"
        )
    parts = decomposition(bodies)
    bare = parts["no audit"]
    lines += [
        "",
        f"Where the cost lies: four servers on SQLite (threaded worker) side by side in one run, taking "
        f"turns under {CLIENTS} clients ({ROUNDS} rounds of {ROUND_SECONDS:g} s each). CPU per answer is "
        "the whole machine's (servers, kernel, database, load generator) over the answers of the turns; "
        "the load generator's part is this process's own:",
        "",
        "| server | req/s | vs no audit | p50 (ms) | p99 (ms) | machine CPU per answer (ms) "
        "| of it the load generator (ms) | cores idle |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, load in parts.items():
        cpu, clients, idle = load.cpu_ms()
        lines.append(
            f"| {name} | {load.n / load.wall:.0f} | {load.n / load.wall / (bare.n / bare.wall):.2f}x "
            f"| {percentile_ms(load.lat, 50):.2f} | {percentile_ms(load.lat, 99):.2f} | {cpu:.2f} "
            f"| {clients:.2f} | {idle:.0%} |"
        )
    floor = append_cpu(bodies)
    lines += [
        "",
        f"The append alone, in process (one thread, no other load, durability full, {IN_PROCESS} records "
        "per size): CPU per record of `AuditStore.append_raw` (canonical form, group, seal, insert, commit, "
        "flush; kernel included) by the records one commit holds.",
        "",
        "| records per commit | " + " | ".join(str(size) for size in floor) + " |",
        "|---|" + "---|" * len(floor),
        "| CPU per record (ms) | " + " | ".join(f"{ms:.3f}" for ms in floor.values()) + " |",
    ]
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
