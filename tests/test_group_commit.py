"""Group commit: concurrent appends of one process share a transaction, keep a total order, fail together.

The queue itself is tested with a fake commit that holds the first transaction open, so the batches that
arrive meanwhile must form one group; the store is tested with threads appending to SQLite and PostgreSQL.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import tempfile
import threading
import time
from dataclasses import replace
from typing import Any

import pytest

import explain_service.audit.store as store_module
from explain_service.audit.chain import RawRecord
from explain_service.audit.group import GroupCommit
from explain_service.audit.store import AuditEntry, AuditStore, AuditWriteError
from explain_service.audit.turn import HostTurn

THREADS = 8
APPENDS = 12


def raw(tag: str) -> RawRecord:
    return RawRecord(0, tag, "", "m", "1", "s" * 64, None, "{}", "", "")


class FakeCommit:
    """Numbers records like a chain; the first call waits for ``release``; calls and sizes are kept."""

    def __init__(self, fail: BaseException | None = None, fail_when: Any = None) -> None:
        self.seq = 0
        self.groups: list[list[str]] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.fail, self.fail_when = fail, fail_when

    def __call__(self, records: list[RawRecord]) -> list[RawRecord]:
        self.groups.append([r.id for r in records])
        if len(self.groups) == 1:
            self.entered.set()
            assert self.release.wait(10)
        if self.fail is not None and (self.fail_when is None or self.fail_when(records)):
            raise self.fail
        out = []
        for record in records:
            self.seq += 1
            out.append(replace(record, seq=self.seq))
        return out


def submit_all(group: GroupCommit, commit: FakeCommit, batches: list[list[str]]) -> dict[int, Any]:
    """Submit the first batch, and the others while its commit is held open; each thread's outcome."""
    outcomes: dict[int, Any] = {}

    def run(index: int) -> None:
        try:
            outcomes[index] = group.submit([raw(tag) for tag in batches[index]])
        except BaseException as exc:
            outcomes[index] = exc

    first = threading.Thread(target=run, args=(0,))
    first.start()
    assert commit.entered.wait(10)
    others = [threading.Thread(target=run, args=(i,)) for i in range(1, len(batches))]
    for t in others:
        t.start()
    deadline = time.monotonic() + 10
    while len(group._queue) < len(others) and time.monotonic() < deadline:  # all queued behind the first
        time.sleep(0.005)
    commit.release.set()
    for t in [first, *others]:
        t.join(10)
    return outcomes


def test_batches_queued_during_a_commit_share_the_next_one_in_arrival_order() -> None:
    commit = FakeCommit()
    group = GroupCommit(commit)
    batches = [["a0"], ["b0", "b1"], ["c0"], ["d0", "d1", "d2"]]
    outcomes = submit_all(group, commit, batches)
    assert len(commit.groups) == 2 and commit.groups[0] == ["a0"]
    assert sorted(commit.groups[1]) == sorted(t for b in batches[1:] for t in b)
    for index, batch in enumerate(batches):  # each caller gets its own records, consecutive, in order
        sealed = outcomes[index]
        assert [r.id for r in sealed] == batch
        assert [r.seq for r in sealed] == list(range(sealed[0].seq, sealed[0].seq + len(batch)))
    assert sorted(r.seq for o in outcomes.values() for r in o) == list(range(1, 8))


def test_a_group_is_capped_in_records_and_the_rest_commits_next() -> None:
    commit = FakeCommit()
    group = GroupCommit(commit, max_records=3)
    batches = [["a"], ["b0", "b1"], ["c"], ["d0", "d1"]]
    outcomes = submit_all(group, commit, batches)
    assert [len(g) for g in commit.groups] == [1, 3, 2]
    assert all(isinstance(o, list) for o in outcomes.values())


def test_a_failed_commit_fails_every_caller_in_its_group_and_stores_nothing() -> None:
    commit = FakeCommit(fail=sqlite3.OperationalError("disk I/O error"), fail_when=lambda rs: len(rs) > 1)
    group = GroupCommit(commit)
    outcomes = submit_all(group, commit, [["a"], ["b"], ["c"], ["d"]])
    assert [r.id for r in outcomes[0]] == ["a"]  # its own group, committed before the failure
    errors = [outcomes[i] for i in (1, 2, 3)]
    assert all(isinstance(e, sqlite3.OperationalError) and "disk I/O" in str(e) for e in errors)
    assert len({id(e) for e in errors}) == 3  # each caller raises its own copy
    assert commit.seq == 1


def test_an_error_one_batch_may_cause_alone_is_retried_batch_by_batch() -> None:
    taken = sqlite3.IntegrityError("UNIQUE constraint failed: audit_records.id")
    commit = FakeCommit(fail=taken, fail_when=lambda rs: "dup" in [r.id for r in rs])
    group = GroupCommit(commit, retry_alone=lambda exc: isinstance(exc, sqlite3.IntegrityError))
    outcomes = submit_all(group, commit, [["a"], ["b"], ["dup"], ["c"]])
    assert isinstance(outcomes[2], sqlite3.IntegrityError)
    assert [[r.id for r in outcomes[i]] for i in (0, 1, 3)] == [["a"], ["b"], ["c"]]


def test_an_observer_hears_each_commit_and_its_failure_never_fails_an_append() -> None:
    heard: list[tuple[int, int]] = []

    def observe(seconds: float, records: int, head: int) -> None:
        heard.append((records, head))
        assert seconds >= 0
        raise RuntimeError("a broken metric")

    commit = FakeCommit()
    outcomes = submit_all(GroupCommit(commit, observe=observe), commit, [["a"], ["b"], ["c"]])
    assert all(isinstance(o, list) for o in outcomes.values())
    assert heard == [(1, 1), (2, 3)]


def entry(thread: int, index: int) -> AuditEntry:
    body = {"kind": "explanation", "thread": thread, "index": index}
    return AuditEntry(body=body, model_name="m", model_version="1", model_sha256="a" * 64)


def test_threads_appending_at_once_keep_one_verified_chain_and_share_commits(url: str) -> None:
    sizes: list[int] = []
    store = AuditStore(url, observe=lambda _s, records, _h: sizes.append(records))
    results: dict[int, list[Any]] = {t: [] for t in range(THREADS)}
    start = threading.Barrier(THREADS)

    def work(thread: int) -> None:
        start.wait()
        for i in range(APPENDS):
            # every other append is a batch of two, which must stay consecutive
            batch = [entry(thread, i)] if i % 2 else [entry(thread, i), entry(thread, i + 100)]
            results[thread].append(store.append(batch))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    try:
        total = THREADS * (APPENDS + APPENDS // 2)
        assert store.count() == total and sum(sizes) == total
        assert store.verify().ok
        assert max(sizes) > 1 and len(sizes) < THREADS * APPENDS  # commits were shared
        for thread, appends in results.items():
            for i, stored in enumerate(appends):
                assert [r.body["thread"] for r in stored] == [thread] * len(stored)
                assert [r.body["index"] for r in stored] == ([i] if i % 2 else [i, i + 100])
                assert [r.seq for r in stored] == list(range(stored[0].seq, stored[0].seq + len(stored)))
                assert store.get(stored[0].id) == stored[0]
    finally:
        store.close()


def test_a_failed_group_flush_stores_nothing_and_every_caller_gets_the_write_error(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = AuditStore(f"sqlite:///{tmp_path}/audit.sqlite3")
    store.append([entry(0, 0)])
    calls: list[int] = []
    held, release = threading.Event(), threading.Event()
    real = store_module.append_sqlite

    def flaky(conn: Any, prepared: list[RawRecord]) -> list[RawRecord]:
        calls.append(len(prepared))
        if len(calls) == 1:  # hold the first commit open so the others queue behind it
            held.set()
            assert release.wait(10)
            return real(conn, prepared)
        conn.close()
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(store_module, "append_sqlite", flaky)
    outcomes: dict[int, Any] = {}

    def run(t: int) -> None:
        try:
            outcomes[t] = store.append([entry(t, 1)])
        except AuditWriteError as exc:
            outcomes[t] = exc

    first = threading.Thread(target=run, args=(0,))
    first.start()
    assert held.wait(10)
    others = [threading.Thread(target=run, args=(t,)) for t in range(1, 5)]
    for t in others:
        t.start()
    while len(store._group._queue) < 4:
        time.sleep(0.005)
    release.set()
    for t in [first, *others]:
        t.join(10)
    assert calls == [1, 4]
    assert isinstance(outcomes[0], list)
    assert all(isinstance(outcomes[t], AuditWriteError) for t in range(1, 5))
    assert store.count() == 2 and store.verify().ok
    store.close()


# -- turns between the processes of a host ---------------------------------------------------------------


def test_batches_queued_while_another_process_has_the_turn_commit_as_one_group(tmp_path) -> None:
    """The leader takes its queue only once it has the turn: what queued meanwhile is one group."""
    sizes: list[int] = []
    store = AuditStore(f"sqlite:///{tmp_path}/audit.sqlite3", observe=lambda _s, n, _h: sizes.append(n))
    store.append([entry(0, 0)])
    sizes.clear()
    other = os.open(f"{tmp_path}/audit.sqlite3-append.lock", os.O_RDWR)  # another process's turn
    fcntl.flock(other, fcntl.LOCK_EX)
    outcomes: dict[int, Any] = {}

    def run(t: int) -> None:
        outcomes[t] = store.append([entry(t, 1)])

    threads = [threading.Thread(target=run, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while len(store._group._queue) < 4 and time.monotonic() < deadline:  # the leader's batch is queued too
        time.sleep(0.005)
    time.sleep(0.05)
    assert outcomes == {}  # nobody answered while the turn was another's
    fcntl.flock(other, fcntl.LOCK_UN)
    os.close(other)
    for t in threads:
        t.join(10)
    try:
        assert sizes == [4]
        assert sorted(r.seq for o in outcomes.values() for r in o) == [2, 3, 4, 5]
        assert store.verify().ok
    finally:
        store.close()


def test_a_lock_file_that_cannot_be_made_means_appending_without_turns(
    tmp_path, caplog: pytest.LogCaptureFixture
) -> None:
    turn = HostTurn(str(tmp_path / "missing" / "x.lock"))
    with caplog.at_level("WARNING", logger="explain_service.audit.turn"):
        for _ in range(3):
            with turn():
                pass
    assert [r.getMessage().startswith("audit appends without turns") for r in caplog.records] == [True]


def test_a_postgresql_turn_is_per_database_and_private(tmp_path) -> None:
    a = HostTurn.for_database(None, "postgresql+psycopg://u@h/db1")
    b = HostTurn.for_database(None, "postgresql+psycopg://u@h/db2")
    assert a.path != b.path and os.path.dirname(a.path) == tempfile.gettempdir()
    assert HostTurn.for_database(str(tmp_path / "a.sqlite3"), "").path == str(
        tmp_path / "a.sqlite3-append.lock"
    )
    with a():
        assert oct(os.stat(a.path).st_mode & 0o777) == oct(0o600)
