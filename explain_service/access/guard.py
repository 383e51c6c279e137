"""The one ``before_request`` that authenticates every request and checks its role.

::

    request ─► endpoint ─► rules.RULES ─► public?  ──────────────────────────────► view
                                          └ key (Bearer, or a session loader) ─► role >= rule? ─► view
                                              │ none or bad: 401 + WWW-Authenticate   │ no: 403
                                              ▼
                                          g.principal  (its name is the audit records' caller)

Records are checked where they are loaded: :func:`require_owner` answers 404 when an ``explain`` key asks
for a record another key created. With ``EXPLAIN_AUTH=off`` every request acts as an unnamed admin (the
records' caller is then null); ``serve`` refuses that unless bound to a loopback address.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from flask import current_app, g, has_request_context, request
from sqlalchemy.exc import SQLAlchemyError

from explain_service.access.keys import KeyStore
from explain_service.access.rules import at_least, rule_for
from explain_service.audit.errors import AuditError
from explain_service.errors import ExplanationNotFound, Forbidden, Unauthorized, Unavailable


@dataclass(frozen=True)
class Principal:
    """Who is calling: a key's name and role (name None when authentication is off)."""

    name: str | None
    role: str


OPEN = Principal(None, "admin")
NOBODY = Principal(None, "public")

SessionLoader = Callable[[], Principal | None]


@dataclass
class Access:
    """Per-app access state, kept in ``app.extensions["explain_access"]``.

    ``session_loaders`` is the hook for credentials other than a bearer key (the reviewers' pages add a
    session cookie there): each returns a principal or None, and is asked only when no Authorization
    header came.
    """

    keys: KeyStore
    required: bool = True
    session_loaders: list[SessionLoader] = field(default_factory=list)


def access_state() -> Access:
    return current_app.extensions["explain_access"]  # type: ignore[no-any-return]


def current_principal() -> Principal:
    """The caller of the current request (nobody outside a request or before the guard ran)."""
    if not has_request_context():
        return NOBODY
    principal = g.get("principal")
    return principal if isinstance(principal, Principal) else NOBODY


def caller_name() -> str | None:
    """The key name audit records carry in ``caller``."""
    return current_principal().name


def has_role(role: str) -> bool:
    return at_least(current_principal().role, role)


def require_owner(record_caller: str | None, record_id: str) -> None:
    """404 unless the caller may see a record created by ``record_caller``."""
    principal = current_principal()
    if at_least(principal.role, "review"):
        return
    if principal.name is None or record_caller != principal.name:
        raise ExplanationNotFound(record_id)


def _bearer(header: str) -> str | None:
    scheme, _, token = header.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def authenticate(access: Access) -> Principal | None:
    """The principal the request's credentials name, or None; raises 401 for a bad bearer key."""
    header = request.headers.get("Authorization")
    if header is None:
        for loader in access.session_loaders:
            principal = loader()
            if principal is not None:
                return principal
        return None
    token = _bearer(header)
    if token is None:
        raise Unauthorized("Use 'Authorization: Bearer <key>'", invalid=True)
    try:
        key = access.keys.authenticate(token)
    except (SQLAlchemyError, AuditError):
        raise Unavailable("The key store does not answer; retry shortly") from None
    if key is None:
        raise Unauthorized("The key is not valid (unknown or revoked)", invalid=True)
    return Principal(key.name, key.role)


def guard() -> None:
    """Authenticate and authorise the request against :data:`.rules.RULES` (before every request)."""
    access = access_state()
    # Unrouted requests (404, 405) need a key too, so the route list cannot be probed anonymously.
    rule = rule_for(request.endpoint) if request.endpoint is not None else rule_for("models.ModelsView")
    if not access.required:
        g.principal = OPEN
        return
    if rule.role == "public":
        g.principal = NOBODY
        return
    principal = authenticate(access)
    if principal is None:
        raise Unauthorized("This route needs 'Authorization: Bearer <key>'")
    g.principal = principal
    if not at_least(principal.role, rule.role):
        raise Forbidden(f"This route needs the {rule.role} role; this key has the {principal.role} role")
