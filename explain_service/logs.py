"""Log lines with ISO-8601 timestamps, for the app and for gunicorn alike.

Every line reads ``2025-01-31T12:00:00.123+00:00 [pid] LEVEL logger: message``
(UTC, milliseconds), whether it comes from gunicorn's master, a worker, the
access log or the service's own loggers. Under gunicorn the configuration is
``gunicorn_logconfig`` (applied by gunicorn before workers fork); any other
host of the WSGI app gets the same format from ``configure_app_logging`` unless
it set up logging itself.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any

LINE_FORMAT = "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"
# gunicorn's access line without its own Apache-style ``[%(t)s]``: the formatter stamps the time.
ACCESS_LOG_FORMAT = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms "%(a)s"'


class IsoFormatter(logging.Formatter):
    """A formatter whose ``asctime`` is ISO-8601 in UTC with milliseconds."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds")


def gunicorn_logconfig(access_log: bool) -> dict[str, Any]:
    """The ``logconfig_dict`` for gunicorn: one ISO-stamped format for every logger.

    Error and application lines go to stderr, access lines (only when ``access_log``) to stdout.
    """
    formatter = {"()": f"{__name__}.IsoFormatter", "format": LINE_FORMAT}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"iso": formatter},
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "formatter": "iso", "stream": "ext://sys.stderr"},
            "stdout": {"class": "logging.StreamHandler", "formatter": "iso", "stream": "ext://sys.stdout"},
        },
        "root": {"level": "INFO", "handlers": ["stderr"]},
        "loggers": {
            # No level here: gunicorn has set the one `--log-level` asks for.
            "gunicorn.error": {"handlers": [], "propagate": True},
            # A log config turns gunicorn's access log on; its level keeps it quiet unless asked for.
            "gunicorn.access": {
                "level": "INFO" if access_log else "WARNING",
                "handlers": ["stdout"],
                "propagate": False,
            },
        },
    }


def configure_app_logging() -> None:
    """Give the service's loggers the ISO format when nothing configured logging before.

    Leaves any existing configuration alone (gunicorn's, a test runner's, an embedding app's).
    """
    ours = logging.getLogger("explain_service")
    if logging.getLogger().handlers or ours.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(IsoFormatter(LINE_FORMAT))
    ours.addHandler(handler)
    ours.setLevel(logging.INFO)
