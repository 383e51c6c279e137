"""``explain-service serve`` as operations expect it: keep-alive, a drain on SIGTERM, a reload on SIGHUP.

Each test runs the real gunicorn (``serve_in``) with the threaded worker that ``serve`` uses by default.
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests._gunicorn import TINY_MODEL, LiveServer, parse_raw, serve_in

pytestmark = pytest.mark.slow

ROW = {"x1": 0.5, "x2": -1.0}
PREDICT = f"/v1/models/{TINY_MODEL}:predict"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with serve_in(tmp_path_factory.mktemp("graceful"), workers=1) as live:
        yield live


def _predict_body(x1: float) -> bytes:
    return orjson.dumps({"instances": [{**ROW, "x1": x1}]})


def test_a_pooled_client_reuses_one_connection_for_several_requests(server: LiveServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.connect()
        sock = conn.sock
        local = sock.getsockname()
        answers = []
        for i in range(6):
            if i % 2:
                conn.request("GET", "/healthz")
            else:
                conn.request("POST", PREDICT, _predict_body(i / 10), {"Content-Type": "application/json"})
            resp = conn.getresponse()
            answers.append((resp.status, resp.version, resp.getheader("Connection"), resp.read()))
            # http.client drops its socket when the server announces a close; the same one means reused
            assert conn.sock is sock and sock.getsockname() == local
    finally:
        conn.close()
    assert [a[0] for a in answers] == [200] * 6
    assert all(version == 11 and connection != "close" for _, version, connection, _ in answers)
    assert all("predictions" in orjson.loads(body) for status, _, _, body in answers[::2])


def test_an_error_answer_closes_the_kept_alive_connection(server: LiveServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        first = _read_answer(sock)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGARBAGE\r\n\r\n")
        second = _read_answer(sock)
        third = _read_answer(sock)
        rest = sock.recv(100)
    assert first.status == second.status == 200 and "close" not in first.headers.get("connection", "")
    assert third.status == 400 and third.headers["connection"] == "close"
    assert orjson.loads(third.body)["code"] == 400
    assert rest == b""  # closed after the error


def _read_answer(sock: socket.socket) -> object:
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(1)
    length = int(re.search(rb"content-length: *(\d+)", data, re.I).group(1))  # type: ignore[union-attr]
    while len(data.partition(b"\r\n\r\n")[2]) < length:
        data += sock.recv(length)
    return parse_raw(data)


def _worker_pids(server: LiveServer) -> list[int]:
    return [int(pid) for pid in re.findall(r"Booting worker with pid: (\d+)", server.logs())]


def test_sigterm_lets_a_request_in_flight_finish(tmp_path: Path) -> None:
    with serve_in(tmp_path, workers=1) as live:
        body = _predict_body(0.25)
        head = (
            f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        with socket.create_connection(("127.0.0.1", live.port), timeout=30) as sock:
            sock.sendall(head + body[:5])  # the request is being read when the signal comes
            time.sleep(0.5)
            stopping = time.monotonic()
            os.kill(live.proc.pid, signal.SIGTERM)
            time.sleep(1.0)
            sock.sendall(body[5:])
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        answer = parse_raw(b"".join(chunks))
        assert answer.status == 200, answer
        assert "predictions" in orjson.loads(answer.body)
        live.proc.wait(timeout=30)
        assert time.monotonic() - stopping < 25  # bounded by the graceful timeout (20 s)
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", live.port), timeout=2).close()


def test_sighup_reloads_the_workers_without_failing_a_request(tmp_path: Path) -> None:
    with serve_in(tmp_path, workers=1) as live:
        before = set(_worker_pids(live))
        stop = threading.Event()
        outcomes: list[int | str] = []

        def client(offset: int) -> None:
            i = 0
            while not stop.is_set():
                conn = http.client.HTTPConnection("127.0.0.1", live.port, timeout=60)
                try:
                    body = _predict_body((i + offset) % 7 / 7)
                    conn.request("POST", PREDICT, body, {"Content-Type": "application/json"})
                    resp = conn.getresponse()
                    resp.read()
                    outcomes.append(resp.status)
                except (OSError, http.client.HTTPException) as exc:
                    outcomes.append(repr(exc))
                finally:
                    conn.close()
                i += 1

        threads = [threading.Thread(target=client, args=(n,)) for n in range(3)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        served_before = len(outcomes)
        os.kill(live.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 120
        while not (set(_worker_pids(live)) - before) and time.monotonic() < deadline:
            time.sleep(0.1)
        served_at_reload = len(outcomes)
        # and keep calling until the new worker has answered a good many
        while len(outcomes) < served_at_reload + 50 and time.monotonic() < deadline:
            time.sleep(0.1)
        stop.set()
        for t in threads:
            t.join(timeout=90)
        reloaded = set(_worker_pids(live)) - before
        old_gone = all(f"Worker exiting (pid: {pid})" in live.logs() for pid in before)
    failures = [o for o in outcomes if o != 200]
    assert served_before > 0 and len(outcomes) >= served_at_reload + 50
    assert reloaded and old_gone, live.logs()
    assert not failures, failures[:5]
