"""The service with every audit commit noted (seconds, records) in ``$BENCH_AUDIT_OBSERVATIONS``.

Only for bench_audit.py: it reports how many records a commit held (the group size) and how long it took.
"""

from __future__ import annotations

import os

from flask import Flask

from explain_service.app import create_app as _create_app


def create_app() -> Flask:
    app = _create_app()
    path = os.environ["BENCH_AUDIT_OBSERVATIONS"]

    def note(seconds: float, records: int, _head: int) -> None:
        with open(path, "a") as out:  # one short line per commit; appends of a line are atomic
            out.write(f"{seconds:.6f} {records}\n")

    app.extensions["explain"].audit._group._observe = note
    return app
