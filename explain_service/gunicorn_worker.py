"""The gunicorn worker of ``explain-service serve``: gunicorn's own answers in the JSON error shape.

gunicorn answers some requests before the app sees them (a malformed request line, a
request line or header over its limits) and answers for the app when a request dies in
the worker (an unexpected error, the worker stopped at its timeout). Its stock worker
writes those answers as HTML; this one writes ``{"code", "status", "message"}`` like
every other error of the service::

    400  malformed request line, method, version, header or chunked framing
    408  the request head had not fully arrived when the worker timed out
    414  request line longer than ``limit_request_line``
    431  too many header fields or one longer than ``limit_request_field_size``
    503  the request was stopped: the worker timed out (SIGABRT from the arbiter) or is shutting down
    500  anything else (logged with its traceback)

A worker timeout is answered only when the stopped code runs Python again before the
arbiter's next pass (about a second later) sends SIGKILL: a request that is blocked in
native code for that long gets its connection closed without an answer.
"""

from __future__ import annotations

import ssl
from datetime import datetime
from typing import Any

import orjson
from gunicorn import util
from gunicorn.http import errors as http_errors
from gunicorn.http.wsgi import Response, default_environ
from gunicorn.workers.sync import SyncWorker

from explain_service.errors import status_phrase

# First match wins: subclasses before their bases.
_REFUSALS: tuple[tuple[type[BaseException], int, str], ...] = (
    (http_errors.InvalidResponseHeader, 500, "Internal error; it has been logged."),
    (http_errors.InvalidResponseHeaderName, 500, "Internal error; it has been logged."),
    (http_errors.LimitRequestLine, 414, "The request line is too long"),
    (http_errors.LimitRequestHeaders, 431, "The request header fields are too large"),
    (http_errors.ExpectationFailed, 417, "Unsupported Expect header"),
    (http_errors.UnsupportedTransferCoding, 501, "Unsupported transfer coding"),
    (http_errors.ForbiddenProxyRequest, 403, "Proxy protocol not allowed from this address"),
    (http_errors.ConfigurationProblem, 500, "Server configuration problem"),
    (http_errors.ParseException, 400, "Malformed HTTP request"),
    (ssl.SSLError, 403, "TLS handshake failed"),
)
_DETAIL_CHARS = 200


def error_response(status: int, message: str) -> bytes:
    """A complete HTTP/1.1 response carrying the JSON error shape; the connection closes after it."""
    body = orjson.dumps({"code": status, "status": status_phrase(status), "message": message})
    head = (
        f"HTTP/1.1 {status} {status_phrase(status)}\r\n"
        "Connection: close\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


class JsonErrorWorker(SyncWorker):
    """gunicorn's sync worker, answering its own errors in the service's JSON error shape."""

    timed_out = False

    def handle_abort(self, sig: int, frame: Any) -> None:
        """SIGABRT is the arbiter's timeout: remember it so the stopped request gets a 503."""
        self.timed_out = True
        super().handle_abort(sig, frame)

    def classify(self, exc: BaseException, req: Any) -> tuple[int, str, bool]:
        """``(status, message, client_fault)`` for an error gunicorn met while serving a request."""
        if isinstance(exc, SystemExit):
            limit = self.cfg.timeout
            if self.timed_out and req is None:
                return 408, f"The request head did not arrive within the worker timeout ({limit} s).", True
            if self.timed_out:
                return 503, f"The request did not finish within the worker timeout ({limit} s).", False
            return 503, "The server is shutting down; retry the request.", False
        for kind, status, summary in _REFUSALS:
            if isinstance(exc, kind):
                if status >= 500:
                    return status, summary, False
                detail = str(exc)[:_DETAIL_CHARS]
                return status, f"{summary}: {detail}" if detail else summary, True
        return 500, "Internal error; it has been logged.", False

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        """Log the failure as gunicorn would and answer it in JSON instead of HTML."""
        started = datetime.now()
        addr = addr or ("", -1)
        status, message, client_fault = self.classify(exc, req)
        where = f"{req.method} {req.uri}" if req is not None else "(request head not read)"
        if isinstance(exc, SystemExit):
            self.log.error("request stopped (%s): %s", "timeout" if self.timed_out else "shutdown", where)
        elif client_fault:
            self.log.warning("refused request from %s: %s", addr[0], exc)
        else:
            self.log.exception("error handling request %s", where)
        data = error_response(status, message)
        if req is not None:
            environ = default_environ(req, client, self.cfg)
            environ["REMOTE_ADDR"], environ["REMOTE_PORT"] = addr[0], str(addr[1])
            resp = Response(req, client, self.cfg)
            resp.status = f"{status} {status_phrase(status)}"
            resp.response_length = len(data)
            self.log.access(resp, req, environ, datetime.now() - started)
        try:
            util.write_nonblock(client, data)
        except Exception:
            self.log.debug("could not send the error answer")
