"""Per-key rate limits and the daily counterfactual quota, counted with ``limits`` directly.

``EXPLAIN_RATELIMIT_DEFAULT`` (``limits`` syntax, ``600/minute`` by default, several separated by
``;``, empty to disable) is one budget per key across every route but the public ones (``/healthz``,
``/readyz``), counted in the cost units of :mod:`.costs` over a moving window (so a limit of N per
minute admits N units in any 60 seconds, not 2N across a window edge). Without authentication the
client address stands in for the key. ``EXPLAIN_COUNTERFACTUAL_DAILY_QUOTA`` (default 1000, 0
disables) caps the counterfactual instances a key may ask for in any 24 hours.

Both live in ``EXPLAIN_RATELIMIT_STORAGE_URI``: ``memory://`` counts per worker process (in
:mod:`.memory`'s store, not limits' own, which starts a thread per request), ``redis://...`` one
budget for every worker and host. Keys carry ``EXPLAIN_RATELIMIT_KEY_PREFIX``, so deployments sharing
one Redis keep their own budgets.

Per request, :func:`check_rate_limits` spends the request's units on every limit, shortest window
first, and stops at the first that refuses: 429 in the JSON error shape with ``Retry-After``. With
several limits it first reads each window, so that a request one of them refuses spends nothing on
the others (two requests racing between the read and the spending may still charge a shorter window
for a refusal). It then reads the window of one limit, the refusing one or else the shortest, and
:func:`write_rate_limit_headers` reports that one (``X-RateLimit-Limit``, ``-Remaining`` after this
request, ``-Reset`` as a Unix time): with one limit, one hit and one window read per request. These
are the names, keys and choice of limit flask-limiter used before, so counts already in Redis carry
over. With no rate limit set neither hook is installed and the quota counts in the storage by itself.

A request that costs more than a limit (or the daily quota) holds in all is answered 413, naming the
field that makes it that large: no wait would ever admit it, so a 429 with ``Retry-After`` would send
a client into retrying forever.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import NoReturn

from flask import Flask, Response, current_app, g, request
from limits import RateLimitItem, parse, parse_many
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter, RateLimiter
from limits.util import WindowStats

from explain_service import metrics
from explain_service.access import memory
from explain_service.access.costs import FLAT, Work
from explain_service.access.guard import current_principal
from explain_service.access.rules import rule_for
from explain_service.config import Settings
from explain_service.errors import PayloadTooLarge, TooManyRequests

QUOTA_SCOPE = "counterfactual-quota"
LOGIN_SCOPE = "login-failures"
# The scope flask-limiter gave application-wide limits: part of every rate-limit key in the storage.
RATE_SCOPE = "global"


@dataclass(frozen=True)
class Limits:
    """One app's rate limits (shortest window first, empty when off) and the counter they and the
    quota spend in."""

    rates: tuple[RateLimitItem, ...]
    counter: RateLimiter
    key_prefix: str
    login_failures: tuple[RateLimitItem, ...] = ()


def rate_key() -> str:
    """Whose budget a request spends: the key's name, else the client address."""
    name = current_principal().name
    return f"key:{name}" if name is not None else f"addr:{client_address()}"


def client_address() -> str:
    return request.remote_addr or "127.0.0.1"


def seconds_until(stats: WindowStats) -> int:
    """Whole seconds (at least 1) until the window ``stats`` describes admits again: a Retry-After."""
    return max(1, math.ceil(stats.reset_time - time.time()))


def request_units() -> int:
    work = g.get("work")
    return work.units if isinstance(work, Work) else FLAT.units


def exempt() -> bool:
    """Requests no limit counts: public routes, static files, and URLs that match no route."""
    endpoint = request.endpoint
    return endpoint is None or endpoint.rsplit(".", 1)[-1] == "static" or rule_for(endpoint).role == "public"


def parse_rates(text: str) -> tuple[RateLimitItem, ...]:
    """``"100/hour; 5/minute"`` as limit items, shortest window first; empty pieces are ignored."""
    pieces = [piece.strip() for piece in text.split(";") if piece.strip()]
    return tuple(sorted(parse_many(";".join(pieces)))) if pieces else ()


def init_app(app: Flask, settings: Settings) -> Limits:
    """Count the limits (``app.extensions["explain_limits"]``); install the rate-limit check and its
    headers when a rate limit is set, and the quota check after it."""
    storage_uri = settings.ratelimit_storage_uri
    if storage_uri.split("://", 1)[0] == "memory":
        storage_uri = f"{memory.SCHEME}://"
    state = Limits(
        rates=parse_rates(settings.ratelimit_default),
        counter=MovingWindowRateLimiter(storage_from_string(storage_uri)),
        key_prefix=settings.ratelimit_key_prefix,
        login_failures=parse_rates(settings.login_failure_limit),
    )
    app.extensions["explain_limits"] = state
    if state.rates:
        app.before_request(check_rate_limits)
        app.after_request(write_rate_limit_headers)
    app.before_request(charge_counterfactual_quota)
    return state


def check_rate_limits() -> None:
    """Spend the request's units on each rate limit; 429 at the first that has too few left."""
    if exempt():
        return
    state: Limits = current_app.extensions["explain_limits"]
    key = (state.key_prefix, rate_key(), RATE_SCOPE)
    units = request_units()
    for rate in state.rates:
        if units > rate.amount:
            g.rate_limit = (rate, state.counter.get_window_stats(rate, *key))
            work = g.get("work")
            field = work.largest if isinstance(work, Work) and work.largest is not None else "instances"
            raise _never_admitted(f"this key's rate limit of {rate}", units, "cost units", field)
    if len(state.rates) > 1:  # refused by any, charged on none
        for rate in state.rates:
            if not state.counter.test(rate, *key, cost=units):
                _refuse(state, rate, key, units)
    for rate in state.rates:
        if not state.counter.hit(rate, *key, cost=units):
            _refuse(state, rate, key, units)
    shortest = state.rates[0]
    g.rate_limit = (shortest, state.counter.get_window_stats(shortest, *key))


def _refuse(state: Limits, rate: RateLimitItem, key: tuple[str, str, str], units: int) -> NoReturn:
    stats = state.counter.get_window_stats(rate, *key)
    g.rate_limit = (rate, stats)
    metrics.rate_limited("rate")
    raise TooManyRequests(
        f"This key's rate limit of {rate} (in cost units) is reached ({stats.remaining} left, {units} asked)",
        retry_after=seconds_until(stats),
    )


def _never_admitted(limit: str, asked: int, what: str, field: str) -> PayloadTooLarge:
    """The 413 for a request larger than a whole limit; ``field`` names what makes it that large."""
    message = (
        f"This request asks for {asked} {what}; {limit} can never admit it. "
        "Split it into smaller requests, or use the batch job"
    )
    return PayloadTooLarge(message, {field: [f"Asks for {asked} {what}, more than the limit holds."]})


def write_rate_limit_headers(response: Response) -> Response:
    """Report the limit the check read (see the module docstring); nothing when no limit counted."""
    seen = g.get("rate_limit")
    if seen is not None:
        rate, stats = seen
        response.headers["X-RateLimit-Limit"] = str(rate.amount)
        response.headers["X-RateLimit-Remaining"] = str(stats.remaining)
        response.headers["X-RateLimit-Reset"] = str(int(stats.reset_time + 1))
    return response


def login_blocked() -> int | None:
    """Seconds until this client address may try to sign in again, or None if it may now.

    Only failed sign-ins count (:func:`count_failed_login`), per address, in the same storage as the rate
    limits (so across workers and hosts with Redis): a guesser is slowed, a reviewer who signs in is not.
    """
    state, key = _login_key()
    for rate in state.login_failures:
        if not state.counter.test(rate, *key):
            metrics.rate_limited("login")
            return seconds_until(state.counter.get_window_stats(rate, *key))
    return None


def count_failed_login() -> None:
    """Count a failed sign-in against this client address (see :func:`login_blocked`)."""
    state, key = _login_key()
    for rate in state.login_failures:
        state.counter.hit(rate, *key)


def _login_key() -> tuple[Limits, tuple[str, str, str]]:
    state: Limits = current_app.extensions["explain_limits"]
    return state, (state.key_prefix, LOGIN_SCOPE, client_address())


def charge_counterfactual_quota() -> None:
    """Spend the key's daily counterfactual quota; 429 once it is used up."""
    work = g.get("work")
    quota = current_app.extensions["explain"].settings.counterfactual_daily_quota
    if not isinstance(work, Work) or work.counterfactual_instances == 0 or quota <= 0:
        return
    state: Limits = current_app.extensions["explain_limits"]
    if work.counterfactual_instances > quota:
        raise _never_admitted(
            f"this key's daily quota of {quota} counterfactual instances",
            work.counterfactual_instances,
            "counterfactual instances",
            "instances",
        )
    item = parse(f"{quota}/day")
    # Prefixed as the rate limits are, so that deployments sharing one Redis keep their own quotas.
    key = (state.key_prefix, QUOTA_SCOPE, rate_key())
    if state.counter.hit(item, *key, cost=work.counterfactual_instances):
        return
    stats = state.counter.get_window_stats(item, *key)
    metrics.rate_limited("quota")
    raise TooManyRequests(
        f"This key's daily quota of {quota} counterfactual instances is used up "
        f"({stats.remaining} left, {work.counterfactual_instances} asked)",
        retry_after=seconds_until(stats),
    )
