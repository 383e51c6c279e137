"""gunicorn's access log as JSON lines with the service's request fields (``logger_class``).

gunicorn writes the access line after the response is sent, with its own timing. The app leaves the
request's fields (:data:`explain_service.logs.REQUEST_FIELDS`) in the WSGI environ; this logger writes
them as one JSON object, the same shape as the app's request line elsewhere. A request the app never
saw (gunicorn refused its head, or the worker was stopped mid-request) still gets a line, with the
method, status and duration gunicorn knows and the other fields null.

Apache's combined format is not written: it holds the raw request line (query strings), the client
address and the user agent, none of which belong in this service's logs.
"""

from __future__ import annotations

import datetime
from typing import Any

from gunicorn.glogging import Logger

from explain_service.logs import ENVIRON_KEY, REQUEST_FIELDS

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class JsonAccessLogger(Logger):
    """gunicorn's logger, whose access lines carry the request fields instead of Apache's format."""

    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: datetime.timedelta) -> None:
        if not self.access_log_enabled:
            return
        fields: dict[str, Any] = dict.fromkeys(REQUEST_FIELDS)
        fields.update(environ.get(ENVIRON_KEY) or {})
        status = resp.status.split(None, 1)[0] if isinstance(resp.status, str) else resp.status
        method = environ.get("REQUEST_METHOD")
        fields.update(
            status=int(status) if str(status).isdigit() else None,
            duration_ms=round(request_time.total_seconds() * 1000, 3),
            http_method=fields.get("http_method") or (method if method in _METHODS else "other"),
            bytes_sent=getattr(resp, "sent", None),
        )
        route = fields.get("route") or "unmatched"
        try:
            self.access_log.info("%s %s %s", fields["http_method"], route, fields["status"], extra=fields)
        except Exception:
            self.exception("could not write the access line")
