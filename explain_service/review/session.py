"""The reviewers' session: a signed cookie naming a key, and a CSRF token for every form.

::

    POST /review/login  key ─► KeyStore.authenticate ─► review or admin? ─► session = {key name, csrf}
    later requests      cookie ─► signature + age ok? ─► key still active, same role? ─► Principal

The cookie holds the key's *name*, never the key, and is signed with :mod:`.secret`'s key (the same in
every worker). It is ``HttpOnly``, ``SameSite=Strict`` and ``Secure`` when the request came over TLS; it
expires :data:`LIFETIME` after login. A revoked key's session ends on its next request, like a revoked
bearer key. The session is honoured only for the pages themselves and for the plot images they embed
(:data:`SESSION_ENDPOINTS`): the JSON API still wants ``Authorization: Bearer``.

Every POST to a page carries ``csrf_token``, a random value kept in the session, compared in constant
time; a POST without it (or with another) is refused with 400 before the view runs.
"""

from __future__ import annotations

import hmac
import logging
import re
import secrets
import threading
from datetime import timedelta

from flask import Flask, Request, current_app, request, session
from flask.sessions import NullSession, SecureCookieSession, SecureCookieSessionInterface
from itsdangerous import URLSafeTimedSerializer
from sqlalchemy.exc import SQLAlchemyError

from explain_service.access import Principal
from explain_service.access.guard import access_state
from explain_service.access.rules import at_least
from explain_service.errors import BadRequest, Unavailable
from explain_service.review.secret import check_configured, session_secret

log = logging.getLogger(__name__)

COOKIE_NAME = "explain_review"
LIFETIME = timedelta(hours=8)
CSRF_FIELD = "csrf_token"
PAGE_ROLES = ("review", "admin")
# Endpoints a session cookie may open besides the pages: the images the pages embed.
SESSION_ENDPOINTS = frozenset({"explanations.PlotView"})
# Where a session is opened at all (before routing, so by path; the endpoint check above is the rule).
SESSION_PATHS = re.compile(r"/review(/|$)|/v1/explanations/[^/]+/plots/")


class ReviewSessionInterface(SecureCookieSessionInterface):
    """Flask's signed-cookie session, opened only where it is used, with the secret fetched once per process.

    Every other request (the JSON API, health probes) gets an empty session that is never signed or
    sent, so it never waits for the secret, and works while the database does not answer. A page
    request whose secret cannot be read gets Flask's null session, and its form answers 503.
    """

    _lock = threading.Lock()

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        if not SESSION_PATHS.match(request.path):
            return self.session_class()
        return super().open_session(app, request)

    def get_signing_serializer(self, app: Flask) -> URLSafeTimedSerializer | None:
        if not app.secret_key:
            with self._lock:
                if not app.secret_key:
                    settings = app.extensions["explain"].settings
                    try:
                        app.secret_key = session_secret(settings.secret_key, settings.database_url)
                    except SQLAlchemyError as exc:
                        log.error("the session secret cannot be read from the audit database: %s", exc)
                        return None
        return super().get_signing_serializer(app)

    def get_cookie_secure(self, app: Flask) -> bool:
        return bool(request.is_secure) or super().get_cookie_secure(app)


def configure(app: Flask) -> None:
    """Install the session on ``app`` (cookie flags, lifetime, the interface)."""
    check_configured(app.extensions["explain"].settings.secret_key)
    app.config.update(
        SESSION_COOKIE_NAME=COOKIE_NAME,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        PERMANENT_SESSION_LIFETIME=LIFETIME,
    )
    app.session_interface = ReviewSessionInterface()
    app.extensions["explain_access"].session_loaders.append(session_principal)


def _session_allowed(req: Request) -> bool:
    if req.blueprint == "review":
        return True
    return req.endpoint in SESSION_ENDPOINTS and req.method in ("GET", "HEAD")


def session_principal() -> Principal | None:
    """The principal the session cookie names, if it may be used here and its key is still good."""
    if not _session_allowed(request) or not session.get("key"):
        return None
    key = access_state().keys.get(str(session["key"]))
    if key is None or not key.active or key.role != session.get("role") or key.role not in PAGE_ROLES:
        session.clear()
        return None
    return Principal(key.name, key.role)


def _require_session() -> None:
    if isinstance(session, NullSession):
        raise Unavailable("Sign-in is unavailable: the audit database does not answer; retry shortly")


def log_in(name: str, role: str) -> None:
    """Start a fresh session for key ``name`` (a new CSRF token: nothing from before login survives)."""
    _require_session()
    session.clear()
    session.permanent = True
    session["key"] = name
    session["role"] = role
    session[CSRF_FIELD] = secrets.token_urlsafe(32)


def log_out() -> None:
    session.clear()


def csrf_token() -> str:
    """This session's CSRF token (created on first use, so the login form has one too)."""
    _require_session()
    token = session.get(CSRF_FIELD)
    if not token:
        token = secrets.token_urlsafe(32)
        session[CSRF_FIELD] = token
    return str(token)


def check_csrf() -> None:
    """Refuse a state-changing request to a page whose form token is missing or wrong (400)."""
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return
    _require_session()
    expected = session.get(CSRF_FIELD)
    sent = request.form.get(CSRF_FIELD, "")
    if not expected or not sent or not hmac.compare_digest(str(expected), sent):
        raise BadRequest("The form's security token is missing or out of date; reload the page and retry.")


def page_role_ok(role: str) -> bool:
    """Whether a key of ``role`` may log in to the pages."""
    return at_least(role, "review")


def auth_required() -> bool:
    return bool(current_app.extensions["explain_access"].required)
