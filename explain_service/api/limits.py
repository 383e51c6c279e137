"""Rate limits per client address, shared across workers and hosts through Redis when configured.

``EXPLAIN_RATELIMIT_DEFAULT`` (e.g. ``"6000 per minute"``; empty, the default, disables) applies to every route but
the health and metrics probes; ``EXPLAIN_RATELIMIT_STORAGE_URI`` is ``memory://`` (per worker) or
``redis://host:6379/0`` (one budget for all workers and hosts). A breach answers 429 in the usual JSON
error shape with a ``Retry-After`` header.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, request
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address

from explain_service.config import Settings

EXEMPT = ("/healthz", "/readyz", "/metrics")


def init_app(app: Flask, settings: Settings) -> None:
    limits: list[Any] = [part.strip() for part in settings.ratelimit_default.split(";") if part.strip()]
    limiter = Limiter(
        get_remote_address,
        app=app,
        default_limits=limits,
        storage_uri=settings.ratelimit_storage_uri,
        headers_enabled=True,
        enabled=bool(limits),
        default_limits_exempt_when=lambda: request.path in EXEMPT,
        key_prefix="explain-service",
    )
    app.extensions["explain_limiter"] = limiter
