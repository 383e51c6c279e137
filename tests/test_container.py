"""The container image: the Dockerfile and compose.yaml checked against the repository, and built and run.

The static checks hold on any machine: what the Dockerfile copies exists and is not ignored, every
runtime dependency (and theirs) is pinned in the requirements it installs against, it runs as a
non-root user with ``explain-service serve`` as its command and a health check on ``/readyz``, and
compose.yaml wires two replicas to one PostgreSQL, one Redis and one models volume, with a Dask
scheduler and worker. The slow test builds the image with podman and runs it; it needs a base image
with Python 3.12 (``python:3.12-slim`` or the one named by ``EXPLAIN_TEST_BASE_IMAGE``) in podman's
local store and the package index reachable for ``pip install``.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import re
import shutil
import socket
import subprocess
import time
import tomllib
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from explain_service.cli import serve

ROOT = Path(__file__).resolve().parent.parent
BASE_IMAGE = os.environ.get("EXPLAIN_TEST_BASE_IMAGE", "python:3.12-slim")


def instructions() -> list[tuple[str, str]]:
    """The Dockerfile as (INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    text = (ROOT / "Dockerfile").read_text()
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def pins() -> dict[str, str]:
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    found = {}
    for line in lines:
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            found[canonicalize_name(name)] = version.strip()
    return found


def runtime_closure() -> set[str]:
    """The package's runtime dependencies as this checkout's pyproject.toml declares them (the installed
    metadata of an editable install is that of the day it was installed), and theirs as installed here
    (markers evaluated)."""
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    todo = [Requirement(r) for r in declared]
    todo = [r for r in todo if r.marker is None or r.marker.evaluate({"extra": ""})]
    seen: set[str] = set()
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        extras = req.extras
        if name in seen and not extras:
            continue
        seen.add(name)
        for raw in importlib.metadata.requires(req.name) or []:
            sub = Requirement(raw)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in (extras or {""})):
                todo.append(sub)
    return seen


def test_dockerfile_copies_files_that_exist_and_are_not_ignored() -> None:
    ignored = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copies = [args.split() for word, args in instructions() if word == "COPY"]
    assert copies
    for args in copies:
        for source in args[:-1]:
            assert (ROOT / source).exists(), source
            assert source.rstrip("/") not in ignored, source


def test_dockerfile_base_user_entry_point_and_health_check() -> None:
    steps = instructions()
    words = [w for w, _ in steps]
    base = dict(a.split("=", 1) for w, a in steps if w == "ARG" and "=" in a)["BASE_IMAGE"]
    assert base == "python:3.12-slim"
    assert any(w == "FROM" and a == "${BASE_IMAGE}" for w, a in steps)
    user = [a for w, a in steps if w == "USER"]
    assert user and user[-1] not in ("root", "0")
    assert words.index("USER") > max(
        i for i, w in enumerate(words) if w == "RUN"
    )  # nothing runs as root after
    assert "--uid 10001" in " ".join(a for w, a in steps if w == "RUN")
    assert json.loads(dict(steps)["ENTRYPOINT"]) == ["explain-service"]
    cmd = json.loads(dict(steps)["CMD"])
    assert cmd[0] == "serve"
    options = {o for p in serve.params for o in p.opts}
    assert {c for c in cmd if c.startswith("--")} <= options
    assert "/readyz" in dict(steps)["HEALTHCHECK"]


def test_image_installs_the_package_against_the_pinned_requirements() -> None:
    steps = instructions()
    env = " ".join(a for w, a in steps if w == "ENV")
    assert "PIP_CONSTRAINT=/app/requirements.txt" in env
    assert any(w == "WORKDIR" and a == "/app" for w, a in steps)
    assert any(w == "COPY" and a.split()[0] == "requirements.txt" for w, a in steps)
    assert any(w == "RUN" and "pip install ." in a for w, a in steps)
    pinned = pins()
    unpinned = sorted(runtime_closure() - set(pinned))
    assert unpinned == [], f"runtime dependencies without a pin in requirements.txt: {unpinned}"


def test_compose_runs_two_replicas_on_shared_stores_and_dask() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    replicas = {n: s for n, s in services.items() if s.get("build") == "."}
    assert len(replicas) == 2
    for service in replicas.values():
        env = service["environment"]
        assert env["EXPLAIN_DATABASE_URL"].startswith("postgresql+psycopg://")
        assert "@postgres:5432/" in env["EXPLAIN_DATABASE_URL"]
        assert env["EXPLAIN_RATELIMIT_STORAGE_URI"] == "redis://redis:6379/0"
        assert service["command"][0] == "serve"
        assert "models:/app/models" in service["volumes"]
        assert {"postgres", "redis"} <= set(service["depends_on"])
    assert services["postgres"]["image"].startswith("postgres:")
    assert services["redis"]["image"].startswith("redis:")
    assert services["dask-scheduler"]["entrypoint"] == ["dask", "scheduler"]
    worker = services["dask-worker"]
    assert worker["entrypoint"] == ["dask", "worker"]
    assert worker["command"][0] == "tcp://dask-scheduler:8786"
    assert {"models", "pgdata"} <= set(compose["volumes"])
    # The `dask` command the scheduler and worker run comes with a runtime dependency of the image.
    assert "dask" in {ep.name for ep in importlib.metadata.entry_points(group="console_scripts")}


# -- built and run ------------------------------------------------------------------------------------


# Limits a container may be given without CAP_SYS_RESOURCE (podman's defaults raise them), and runc
# when installed: crun refuses hosts whose cgroups are in hybrid (v1 + v2) mode.
ULIMITS = ("--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096")


def _podman(*args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
    runtime = ["--runtime", "runc"] if shutil.which("runc") else []
    return subprocess.run(
        ["podman", *runtime, *args], capture_output=True, text=True, timeout=timeout, check=check
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_image_builds_and_serves_readyz_as_non_root(tmp_path: Path) -> None:
    if shutil.which("podman") is None:
        pytest.skip("no container runtime (podman) on this machine")
    if _podman("image", "exists", BASE_IMAGE, check=False).returncode != 0:
        pytest.skip(f"base image {BASE_IMAGE} is not in podman's local store (set EXPLAIN_TEST_BASE_IMAGE)")
    tag = f"localhost/explain-service-test:{uuid.uuid4().hex[:8]}"
    name = f"explain-test-{uuid.uuid4().hex[:8]}"
    port = _free_port()
    build = [
        "build",
        "--format",
        "docker",  # the OCI format has no HEALTHCHECK
        *ULIMITS,
        "--network",
        "host",
        "--build-arg",
        f"BASE_IMAGE={BASE_IMAGE}",
        "-t",
        tag,
        str(ROOT),
    ]
    try:
        built = _podman(*build, timeout=3000, check=False)
        assert built.returncode == 0, built.stdout[-4000:] + built.stderr[-4000:]
        assert _podman("run", *ULIMITS, "--rm", "--entrypoint", "id", tag, "-u").stdout.strip() == "10001"
        _podman("run", *ULIMITS, "-d", "--name", name, "-p", f"127.0.0.1:{port}:8000", tag)
        deadline = time.monotonic() + 300
        status = None
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r,
            ):
                status = r.status
                break
            time.sleep(1)
        logs = _podman("logs", name, check=False)
        assert status == 200, logs.stdout[-3000:] + logs.stderr[-3000:]
        # No keys yet: the first start made an admin key and printed it once; with it, the demo models list.
        found = re.search(r"EXPLAIN_KEY=(\S+)", logs.stdout + logs.stderr)
        assert found, logs.stdout[-3000:]
        key = found.group(1)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": f"Bearer {key}"}
        )
        with urllib.request.urlopen(request, timeout=10) as r:
            names = {m["name"] for m in json.loads(r.read())["models"]}
        assert "german-credit" in names
        assert _podman("healthcheck", "run", name, check=False).returncode == 0
        users = _podman("top", name, "user").stdout.split()[1:]
        assert users and "root" not in users
    finally:
        _podman("rm", "-f", name, check=False)
        _podman("rmi", "-f", tag, check=False, timeout=120)
