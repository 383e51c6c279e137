"""What each request leaves behind: its request line (see :mod:`explain_service.logs`) and its metrics.

::

    before_request   timer starts; the request's log fields open with its request id
    (view)           api/models notes model + version + methods; the audit recorder notes audit_seq
    after_request    route, status, duration, caller added; metrics observed; the fields left in the
                     WSGI environ for gunicorn's access line, or written on the request logger
    teardown         the fields close

The hooks are registered before the access layer's, so the timer and the request id cover the
authentication and the limits too.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

from flask import Flask, Response, current_app, g, request

from explain_service import logs, metrics
from explain_service.access.guard import current_principal
from explain_service.api.errors import request_id

KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
request_log = logging.getLogger(logs.REQUEST_LOGGER)


def init_app(app: Flask) -> None:
    """Install the request hooks on ``app`` (before any other before_request)."""
    app.before_request_funcs.setdefault(None, []).insert(0, _start)
    app.after_request(_finish)
    app.teardown_request(_close)


def _start() -> None:
    g.started = time.perf_counter()
    g.log_token = logs.begin_request(request_id())


def _close(_exc: BaseException | None) -> None:
    token = g.pop("log_token", None)
    if token is not None:
        # Torn down in another context, the variable dies with that context.
        with contextlib.suppress(ValueError):
            logs.end_request(token)


def metric_labels(status: int) -> tuple[str, str, str]:
    """``(endpoint, method, status)`` labels drawn from fixed sets, never from raw client input.

    The endpoint is the matched rule's pattern (``/v1/models/<name>``) or ``unmatched``; a method
    outside ``KNOWN_METHODS`` is ``other``; statuses are the ones the service itself answers with.
    """
    endpoint = request.url_rule.rule if request.url_rule is not None else "unmatched"
    method = request.method if request.method in KNOWN_METHODS else "other"
    return endpoint, method, str(status)


def _model_label(fields: dict[str, Any]) -> str:
    """A registered model's name, ``other`` for a name the registry does not hold, ``-`` for none."""
    if fields.get("model"):
        return str(fields["model"])
    asked = (request.view_args or {}).get("name")
    if asked is None:
        return "-"
    registry = current_app.extensions["explain"].registry
    return str(asked) if asked in registry.names() else "other"


def _finish(response: Response) -> Response:
    endpoint, method, status = metric_labels(response.status_code)
    started = g.get("started")
    elapsed = time.perf_counter() - started if started is not None else 0.0
    fields = dict(logs.request_fields() or {"request_id": request_id()})
    known = current_app.extensions["explain"].service.method_names()
    methods = fields.get("methods")
    metrics.observe_request(
        endpoint, method, status, _model_label(fields), metrics.methods_label(methods, known), elapsed
    )
    fields.update(
        route=request.url_rule.rule if request.url_rule is not None else None,
        http_method=method,
        status=response.status_code,
        duration_ms=round(elapsed * 1000, 3),
        caller=current_principal().name,
    )
    line = {name: fields.get(name) for name in logs.REQUEST_FIELDS}
    if "gunicorn.socket" in request.environ:
        request.environ[logs.ENVIRON_KEY] = line  # gunicorn's access line writes it, with its own timing
    elif request_log.isEnabledFor(logging.INFO):
        request_log.info("%s %s %s", method, line["route"] or "unmatched", response.status_code, extra=line)
    return response
