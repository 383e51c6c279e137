"""Structured logs: one JSON object per line, for the app and for gunicorn alike.

Every line is a JSON object (python-json-logger's orjson formatter) with at least::

    timestamp   ISO-8601 in UTC with milliseconds ("2026-12-02T17:00:00.123+00:00")
    level       INFO, WARNING, ERROR...
    logger      the logger's name ("explain_service.audit.store", "gunicorn.error"...)
    pid         the process
    message     the text

A line logged while a request is served also carries its ``request_id``. The request line (one per
request) adds the fields of :data:`REQUEST_FIELDS`::

    request_id  X-Request-ID as the client sent it (a plain token), else a new one; also answered
    route       the matched URL rule ("/v1/models/<name>:explain"), null when none matched
    http_method, status, duration_ms
    model, version   the model version that answered (null when none did)
    methods     the explanation methods asked (null for other routes)
    caller      the key's name (null without a key)
    audit_seq   the seq of the newest audit record the request wrote (null when none)

Under gunicorn the request line is gunicorn's access log (``serve --access-log``, on stdout): its
logger class (:class:`explain_service.gunicorn_log.JsonAccessLogger`) writes the fields the app left in the WSGI environ, so a
request gunicorn refused itself (a malformed head, a worker timeout) gets a line too. Elsewhere (the
Flask test client, another WSGI server) the app writes it on the ``explain_service.request`` logger.

No line holds a feature value, a request body, a query string, a client address or a key: only the
fields above and messages written by the service, which name models, versions and record ids.
"""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from typing import Any

from pythonjsonlogger.orjson import OrjsonFormatter

REQUEST_LOGGER = "explain_service.request"
ENVIRON_KEY = "explain.request_log"
"""The WSGI environ key under which the app leaves a request's fields for gunicorn's access log."""
REQUEST_FIELDS = (
    "request_id",
    "route",
    "http_method",
    "status",
    "duration_ms",
    "model",
    "version",
    "methods",
    "caller",
    "audit_seq",
)
_FORMATTER = {
    "()": f"{__name__}.JsonFormatter",
    "fmt": "%(levelname)s %(name)s %(process)d %(message)s",
    "rename_fields": {"levelname": "level", "name": "logger", "process": "pid"},
}

_fields: ContextVar[dict[str, Any] | None] = ContextVar("explain_request_log", default=None)


def begin_request(request_id: str) -> Token[dict[str, Any] | None]:
    """Open the log fields of the request being served (close with :func:`end_request`)."""
    return _fields.set({"request_id": request_id})


def end_request(token: Token[dict[str, Any] | None]) -> None:
    _fields.reset(token)


def note(**fields: Any) -> None:
    """Add fields to the current request's line (a no-op outside a request)."""
    current = _fields.get()
    if current is not None:
        current.update(fields)


def request_fields() -> dict[str, Any] | None:
    """The fields noted so far for the current request, or None outside one."""
    return _fields.get()


class RequestIdFilter(logging.Filter):
    """Stamp every line logged while a request is served with its ``request_id``."""

    def filter(self, record: logging.LogRecord) -> bool:
        current = _fields.get()
        if current is not None and not hasattr(record, "request_id"):
            record.request_id = current.get("request_id")
        return True


class JsonFormatter(OrjsonFormatter):
    """python-json-logger's orjson formatter, with the timestamp first and always in one shape."""

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        log_data["timestamp"] = datetime.fromtimestamp(record.created, tz=UTC).isoformat(
            timespec="milliseconds"
        )
        super().add_fields(log_data, record, message_dict)


def json_formatter() -> logging.Formatter:
    """The formatter of every line (see the module docstring)."""
    options = {k: v for k, v in _FORMATTER.items() if k != "()"}
    return JsonFormatter(**options)  # type: ignore[arg-type]


def gunicorn_logconfig(access_log: bool) -> dict[str, Any]:
    """The ``logconfig_dict`` for gunicorn: JSON lines for every logger.

    Error and application lines go to stderr, access lines (only when ``access_log``) to stdout. The
    app's own request logger stays quiet: gunicorn's access log is the request line there.
    """
    filters = {"request_id": {"()": f"{__name__}.RequestIdFilter"}}
    handler = {"class": "logging.StreamHandler", "formatter": "json", "filters": ["request_id"]}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": dict(_FORMATTER)},
        "filters": filters,
        "handlers": {
            "stderr": {**handler, "stream": "ext://sys.stderr"},
            "stdout": {**handler, "stream": "ext://sys.stdout"},
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
            REQUEST_LOGGER: {"level": "WARNING"},
        },
    }


def configure_app_logging() -> None:
    """Give the service's loggers JSON lines on stderr when nothing configured logging before.

    Leaves any existing configuration alone (gunicorn's, a test runner's, an embedding app's).
    """
    ours = logging.getLogger("explain_service")
    if logging.getLogger().handlers or ours.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(json_formatter())
    handler.addFilter(RequestIdFilter())
    ours.addHandler(handler)
    ours.setLevel(logging.INFO)
