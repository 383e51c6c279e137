"""Access control: API keys, the route -> role table, per-key limits, compute deadlines, headers.

::

    keys.py      API keys in the audit database (hash only, on the audit store's engine), one-second cache
    rules.py     endpoint -> least role; routes that show one record are owner-checked
    guard.py     the one before_request: 401 / 403, ``g.principal``; the owner check for records
    costs.py     what a request declares it will cost; the per-request evaluation budget
    limits.py    per-key rate limits and the daily counterfactual quota (on ``limits``' storage)
    memory.py    the per-process moving-window store behind ``memory://`` limits
    headers.py   security headers; no gunicorn banner

Per request, in order: the deadline starts, the guard authenticates and authorises, an ``:explain``
body is measured (and refused over budget), the key's rate limit and quota are spent, the view runs,
and the headers are added. Nothing here imports the API or the pages; they import it.
"""

from __future__ import annotations

import contextlib

from flask import Flask, current_app, g, request

from explain_service import deadline
from explain_service.access import costs, guard, headers, limits
from explain_service.access.guard import (
    Access,
    Principal,
    caller_name,
    current_principal,
    has_role,
    require_owner,
)
from explain_service.access.keys import ApiKey, KeyAdminError, KeyStore
from explain_service.audit.store import AuditStore
from explain_service.config import Settings
from explain_service.errors import ServiceError
from explain_service.registry.model import LoadedModel

__all__ = [
    "Access",
    "ApiKey",
    "KeyAdminError",
    "KeyStore",
    "Principal",
    "caller_name",
    "current_principal",
    "has_role",
    "init_app",
    "requested_model",
    "require_owner",
]


def init_app(app: Flask, settings: Settings, audit: AuditStore) -> Access:
    """Install the access layer on ``app``; call before the API's blueprints are registered."""
    state = Access(keys=KeyStore(audit), required=settings.auth != "off")
    app.extensions["explain_access"] = state

    if settings.request_deadline_seconds > 0:

        @app.before_request
        def _start_deadline() -> None:
            g.deadline_token = deadline.start(settings.request_deadline_seconds)

        @app.teardown_request
        def _end_deadline(_exc: BaseException | None) -> None:
            token = g.pop("deadline_token", None)
            if token is not None:
                # Torn down in another context, the variable dies with that context.
                with contextlib.suppress(ValueError):
                    deadline.finish(token)

    app.before_request(guard.guard)
    app.before_request(_measure)
    headers.init_app(app)
    limits.init_app(app, settings)
    return state


def requested_model(name: str, version: str | None) -> LoadedModel:
    """The registry's model ``name`` (``version``, else the newest healthy one), looked up once per
    request: the cost measure and the view that answers read the same loaded version."""
    found = g.get("requested_model")
    if found is not None and found[0] == (name, version):
        return found[1]  # type: ignore[no-any-return]
    model: LoadedModel = current_app.extensions["explain"].registry.get(name, version)
    g.requested_model = ((name, version), model)
    return model


def _measure() -> None:
    """Measure an ``:explain`` body's declared work (for the limits) and refuse it over budget."""
    if request.endpoint not in costs.EXPLAIN_ENDPOINTS:
        return
    services = current_app.extensions["explain"]
    view_args = request.view_args or {}
    try:
        model = requested_model(view_args["name"], view_args.get("version"))
        agnostic: bool | None = model.family == "agnostic"
    except ServiceError:
        agnostic = None  # the view answers 404
    work = costs.measure(request.get_json(silent=True), agnostic, services.settings.max_instances)
    g.work = work
    costs.check_budget(work, services.settings.request_max_evaluations)
