"""The service with its audit commit replaced by one that stores nothing: only for bench_audit.py.

Everything of the audit path runs as in the service (the record built and prepared, the group commit
with its leader and waiters, the host's turn, every record sealed onto an in-memory head) except the
database. So the server's throughput against the one without the audit is the most group commit in
worker threads can give, whatever the store. ``BENCH_AUDIT_NO_TURN=1`` also drops the host's turn.
"""

from __future__ import annotations

import itertools
import os
import threading
from contextlib import nullcontext
from dataclasses import replace
from datetime import UTC, datetime

from flask import Flask

from bench.observed_app import create_app as _create_app
from explain_service.audit.chain import RawRecord, utc_text


def create_app() -> Flask:
    app = _create_app()
    group = app.extensions["explain"].audit._group
    seqs = itertools.count(1)
    head = {"hash": "0" * 64}
    lock = threading.Lock()

    def commit(prepared: list[RawRecord]) -> list[RawRecord]:
        created_at = utc_text(datetime.now(UTC))
        sealed = []
        with lock:
            for raw in prepared:
                placed = replace(raw, seq=next(seqs), created_at=created_at, prev_hash=head["hash"])
                sealed.append(replace(placed, hash=placed.text_hash()))
                head["hash"] = sealed[-1].hash
        return sealed

    group._commit = commit
    if os.environ.get("BENCH_AUDIT_NO_TURN"):
        group._turn = nullcontext
    return app
