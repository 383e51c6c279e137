"""Security headers on every response, and no ``Server`` banner from gunicorn.

A dozen lines rather than flask-talisman: the service needs four fixed headers and HSTS over TLS,
while talisman also rewrites URLs to HTTPS, manages CSP nonces and session-cookie flags, none of which
this JSON API uses; one more dependency for that is more to audit than this module.

A view may set its own ``Content-Security-Policy`` (the ``/docs`` page allows its one stylesheet by
hash); every other response gets :data:`CSP`, which forbids inline scripts and framing.
"""

from __future__ import annotations

from flask import Flask, Response, request

CSP = "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
HSTS = "max-age=31536000; includeSubDomains"


def secure_headers(response: Response) -> Response:
    headers = response.headers
    headers.setdefault("Content-Security-Policy", CSP)
    headers["X-Content-Type-Options"] = "nosniff"
    headers["Referrer-Policy"] = "no-referrer"
    headers["X-Frame-Options"] = "DENY"
    if request.is_secure:
        headers["Strict-Transport-Security"] = HSTS
    return response


def init_app(app: Flask) -> None:
    app.after_request(secure_headers)


def drop_server_banner() -> None:
    """Make gunicorn's workers stop sending ``Server: gunicorn`` (it names the software to attack).

    gunicorn writes that header itself, after the application; it has no setting for it, so its
    response class is wrapped to leave the line out. Called from gunicorn's ``post_fork`` hook.
    """
    from gunicorn.http import wsgi

    original = wsgi.Response.default_headers
    if getattr(original, "_without_server", False):
        return

    def default_headers(self: wsgi.Response) -> list[str]:
        return [h for h in original(self) if not h.lower().startswith("server:")]

    default_headers._without_server = True  # type: ignore[attr-defined]
    wsgi.Response.default_headers = default_headers  # type: ignore[method-assign]
