"""Per-key rate limits and the daily counterfactual quota, with flask-limiter.

``EXPLAIN_RATELIMIT_DEFAULT`` (flask-limiter syntax, ``600/minute`` by default, several separated by
``;``, empty to disable) is one budget per key across every route but ``/healthz`` and ``/readyz``,
counted in the cost units of :mod:`.costs` over a moving window (so a limit of N per minute admits N
units in any 60 seconds, not 2N across a window edge). Without authentication the client address
stands in for the key. ``EXPLAIN_COUNTERFACTUAL_DAILY_QUOTA`` (default 1000, 0 disables) caps the
counterfactual instances a key may ask for in any 24 hours.

Both live in ``EXPLAIN_RATELIMIT_STORAGE_URI``: ``memory://`` counts per worker process (in
:mod:`.memory`'s store, not limits' own, which starts a thread per request), ``redis://...`` one
budget for every worker and host. A breach answers 429 in the JSON error shape with
``Retry-After``. With no rate limit set, flask-limiter is not installed (its hooks would search every
request for a limit and find none) and the quota counts in the storage by itself.
"""

from __future__ import annotations

import math
import time

from flask import Flask, current_app, g, request
from flask_limiter import Limiter, RequestLimit
from flask_limiter.util import get_remote_address
from limits import parse
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter, RateLimiter

from explain_service import metrics
from explain_service.access import memory
from explain_service.access.costs import FLAT, Work
from explain_service.access.guard import current_principal
from explain_service.access.rules import rule_for
from explain_service.config import Settings
from explain_service.errors import TooManyRequests

QUOTA_SCOPE = "counterfactual-quota"


def rate_key() -> str:
    """Whose budget a request spends: the key's name, else the client address."""
    name = current_principal().name
    return f"key:{name}" if name is not None else f"addr:{get_remote_address()}"


def request_units() -> int:
    work = g.get("work")
    return work.units if isinstance(work, Work) else FLAT.units


def exempt() -> bool:
    return request.endpoint is not None and rule_for(request.endpoint).role == "public"


def init_app(app: Flask, settings: Settings) -> Limiter | None:
    """The limiter (in ``app.extensions["explain_limiter"]``, None without a rate limit) and the quota
    check after it (counting in ``app.extensions["explain_quota"]``)."""
    limits = [part.strip() for part in settings.ratelimit_default.split(";") if part.strip()]
    storage_uri = settings.ratelimit_storage_uri
    if storage_uri.split("://", 1)[0] == "memory":
        storage_uri = f"{memory.SCHEME}://"
    limiter: Limiter | None = None
    counter: RateLimiter
    if limits:
        limiter = Limiter(
            rate_key,
            app=app,
            application_limits=limits,  # type: ignore[arg-type]
            application_limits_cost=request_units,
            application_limits_exempt_when=exempt,
            storage_uri=storage_uri,
            strategy="moving-window",
            headers_enabled=True,
            key_prefix=settings.ratelimit_key_prefix,
            on_breach=_breached,
        )
        counter = limiter.limiter
    else:
        # No limit applies to any route: flask-limiter's hooks would look for one on every request
        # (about 0.1 ms) and find none. The quota counts in the same storage, on its own.
        counter = MovingWindowRateLimiter(storage_from_string(storage_uri))
    app.extensions["explain_limiter"] = limiter
    app.extensions["explain_quota"] = counter
    app.before_request(charge_counterfactual_quota)
    return limiter


def _breached(_limit: RequestLimit) -> None:
    metrics.rate_limited("rate")


def charge_counterfactual_quota() -> None:
    """Spend the key's daily counterfactual quota; 429 once it is used up."""
    work = g.get("work")
    settings: Settings = current_app.extensions["explain"].settings
    quota = settings.counterfactual_daily_quota
    if not isinstance(work, Work) or work.counterfactual_instances == 0 or quota <= 0:
        return
    counter: RateLimiter = current_app.extensions["explain_quota"]
    item = parse(f"{quota}/day")
    # Prefixed as the rate limits are, so that deployments sharing one Redis keep their own quotas.
    key = (settings.ratelimit_key_prefix, QUOTA_SCOPE, rate_key())
    if counter.hit(item, *key, cost=work.counterfactual_instances):
        return
    stats = counter.get_window_stats(item, *key)
    retry = max(1, math.ceil(stats.reset_time - time.time()))
    metrics.rate_limited("quota")
    raise TooManyRequests(
        f"This key's daily quota of {quota} counterfactual instances is used up "
        f"({stats.remaining} left, {work.counterfactual_instances} asked)",
        retry_after=retry,
    )
