"""SIGHUP reloads the code: the gunicorn arbiter must not hold the application's modules.

Workers are forked from the arbiter, so a module the arbiter imported (through the config, the worker
class or the logger class) is the arbiter's copy in every new worker, whatever is on disk. A reload after
an upgrade then mixes old and new modules: an exception class of the old ``errors`` module lacked an
attribute the new review pages read, and every page answered 500.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# What the arbiter may hold: the modules it runs itself, and the logging setup it writes with.
ARBITER_MODULES = {
    "explain_service",
    "explain_service.gunicorn_conf",
    "explain_service.gunicorn_worker",
    "explain_service.gunicorn_log",
    "explain_service.logs",
}


@pytest.mark.slow
def test_the_arbiter_imports_no_application_module() -> None:
    code = (
        "import sys, explain_service.gunicorn_conf, explain_service.gunicorn_worker, "
        "explain_service.gunicorn_log; "
        "print('\\n'.join(m for m in sys.modules if m.startswith('explain_service')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    assert set(done.stdout.split()) <= ARBITER_MODULES
