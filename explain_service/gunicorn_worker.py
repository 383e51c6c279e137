"""The gunicorn workers of ``explain-service serve``: gunicorn's own answers in the JSON error shape.

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

Two workers share those answers:

- :class:`JsonErrorThreadWorker` (the default of ``serve``): gunicorn's threaded worker, several
  requests at once per process, HTTP/1.1 keep-alive. Its main thread keeps the arbiter informed
  whatever the request threads do, so the worker timeout cannot stop a request; instead every read
  of a request (head and body) shares one deadline, ``timeout`` seconds after the request's first
  byte was awaited, and a read past it ends the request with 408 (head) or 503 (body). Computing is
  bounded by the service's own request deadline (``EXPLAIN_REQUEST_DEADLINE_SECONDS``, answered 503).
  Over TLS the deadline bounds each read rather than the whole request, and a client stalled past it
  is cut off (or its unfinished body answered 400) rather than answered 408 or 503.
- :class:`JsonErrorWorker`: gunicorn's sync worker, one request at a time, ``Connection: close``.
  A worker timeout is answered only when the stopped code runs Python again before the arbiter's
  next pass (about a second later) sends SIGKILL: a request that is blocked in native code for that
  long gets its connection closed without an answer.
"""

from __future__ import annotations

import errno
import socket
import ssl
import time
from datetime import datetime
from typing import Any

import orjson
from gunicorn import util
from gunicorn.http import errors as http_errors
from gunicorn.http.wsgi import Response, default_environ
from gunicorn.workers.gthread import TConn, ThreadWorker
from gunicorn.workers.sync import SyncWorker

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
    body = orjson.dumps({"code": status, "status": _phrase(status), "message": message})
    head = (
        f"HTTP/1.1 {status} {_phrase(status)}\r\n"
        "Connection: close\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


class RequestTimedOut(BaseException):
    """A request read went past the request's deadline; ``req`` is None while its head was being read."""

    def __init__(self) -> None:
        super().__init__("the request did not arrive within the worker timeout")
        self.req: Any = None


class _JsonErrors:
    """What both workers answer for gunicorn's own errors (see the module docstring)."""

    cfg: Any
    log: Any
    timed_out = False

    def handle_abort(self, sig: int, frame: Any) -> None:
        """SIGABRT is the arbiter's timeout: remember it so the stopped request gets a 503."""
        self.timed_out = True
        super().handle_abort(sig, frame)  # type: ignore[misc]  # a mixin: the worker class has it

    def classify(self, exc: BaseException, req: Any) -> tuple[int, str, bool]:
        """``(status, message, client_fault)`` for an error gunicorn met while serving a request."""
        limit = self.cfg.timeout
        if isinstance(exc, RequestTimedOut):
            if req is None:
                return 408, f"The request head did not arrive within the worker timeout ({limit} s).", True
            return 503, f"The request did not finish within the worker timeout ({limit} s).", False
        if isinstance(exc, SystemExit):
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
        if isinstance(exc, RequestTimedOut):
            self.log.error("request stopped (timeout): %s", where)
        elif isinstance(exc, SystemExit):
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
            resp.status = f"{status} {_phrase(status)}"
            resp.response_length = len(data)
            self.log.access(resp, req, environ, datetime.now() - started)
        try:
            util.write_nonblock(client, data)
        except Exception:
            self.log.debug("could not send the error answer")


class JsonErrorWorker(_JsonErrors, SyncWorker):
    """gunicorn's sync worker, answering its own errors in the service's JSON error shape."""


class _DeadlineSocket(socket.socket):
    """A client socket whose reads share one deadline while a request is being read.

    ``deadline`` (on the monotonic clock) is set when a request thread starts on the connection and
    cleared once the app has answered, so draining and closing read as gunicorn expects.
    """

    deadline: float | None = None

    @classmethod
    def adopt(cls, sock: socket.socket) -> _DeadlineSocket:
        """The accepted ``sock`` as a deadline socket (the same file descriptor)."""
        return cls(sock.family, sock.type, sock.proto, fileno=sock.detach())

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        if self.deadline is None:
            return super().recv(bufsize, flags)
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise RequestTimedOut
        prior = self.gettimeout()
        if prior is not None and prior <= remaining:  # a shorter bound of gunicorn's own applies
            return super().recv(bufsize, flags)
        self.settimeout(remaining)
        try:
            return super().recv(bufsize, flags)
        except TimeoutError:
            raise RequestTimedOut from None
        finally:
            self.settimeout(prior)


class _DeadlineConn(TConn):
    """gunicorn's connection, starting the read deadline each time a request thread takes it."""

    def init(self) -> None:
        super().init()
        if isinstance(self.sock, _DeadlineSocket):
            self.sock.deadline = time.monotonic() + self.cfg.timeout
        else:  # TLS: the wrapped socket is the ssl module's; bound each read instead
            self.sock.settimeout(self.cfg.timeout)


class JsonErrorThreadWorker(_JsonErrors, ThreadWorker):
    """gunicorn's threaded worker (keep-alive), answering its own errors in the JSON error shape."""

    def accept(self, listener: Any) -> None:
        """Take one connection from ``listener`` and hand it to the thread pool with a read deadline."""
        try:
            client, addr = listener.accept()
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                return
            raise
        self.nr_conns += 1
        self.enqueue_req(_DeadlineConn(self.cfg, _DeadlineSocket.adopt(client), addr, listener.getsockname()))

    def _cap_keepalive(self, deadline: float) -> None:
        """A stopping worker closes idle connections by ``deadline``: kept-alive ones, as gunicorn does,
        and also those opened but still silent, which would otherwise hold it for the keep-alive time."""
        super()._cap_keepalive(deadline)
        for conn in self.pending_conns:
            conn.timeout = min(conn.timeout, deadline)

    def handle(self, conn: Any) -> Any:
        """Serve a request in a pool thread; one whose reads went past the deadline gets 408 or 503."""
        try:
            return super().handle(conn)
        except RequestTimedOut as exc:
            self.handle_error(exc.req, conn.sock, conn.client, exc)
            return False
        finally:
            if isinstance(conn.sock, _DeadlineSocket):
                conn.sock.deadline = None

    def handle_request(self, req: Any, conn: Any) -> bool:
        """gunicorn's request handling; the read deadline ends when the app has answered."""
        try:
            return bool(super().handle_request(req, conn))
        except RequestTimedOut as exc:
            exc.req = req
            raise
        finally:
            if isinstance(conn.sock, _DeadlineSocket):
                conn.sock.deadline = None


def _phrase(status: int) -> str:
    """The status's reason phrase, imported in the worker: the arbiter loads this module (the worker
    class), and whatever it imports would stay the arbiter's old code in every worker after a SIGHUP."""
    from explain_service.errors import status_phrase

    return status_phrase(status)
