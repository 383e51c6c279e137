"""The service's Prometheus metrics, and small functions the layers call to feed them.

Every label takes its value from a fixed, small set, never from raw client input::

    route     the matched URL rule ("/v1/models/<name>:explain"), or "unmatched"
    model     a registered model's name, "other" for a name the registry does not hold, "-" for none
    methods   the explanation methods asked, sorted and joined by "+" ("lime+shap"), or "-"
    method    the HTTP method, "other" outside the standard ones
    status    the status code the service answered
    kind      "rate" (the per-key limit) or "quota" (the daily counterfactual quota)
    outcome   "complete" or "budget_exhausted"
    valid     "true" or "false"

Series (names as exposed):

- ``explain_requests_total{endpoint,method,status}`` and ``explain_request_seconds{endpoint}``: as before
- ``explain_request_duration_seconds{route,model,methods}``: request latency
- ``explain_audit_append_seconds`` and ``explain_audit_append_records``: one observation per audit
  commit (:func:`observe_audit_append`, fed by the audit store's commit groups, ``audit/group.py``:
  one commit may hold the records of several concurrent requests; the recorder only hands them over)
- ``explain_audit_chain_head_seq``: the newest record's seq, read from the store at each scrape (so a
  batch job's or another host's appends count at once) and set by each append in between
- ``explain_shap_additivity_residual{model}`` (absolute value) and ``explain_lime_score{model}``
  (local R²): per recorded explanation
- ``explain_counterfactuals_total{model,valid}``: counterfactuals answered, valid (reaching the goal)
  or not; ``explain_counterfactual_searches_total{model,outcome}``: searches, ``complete`` or
  ``budget_exhausted`` (cut short by their time budget)
- ``explain_rate_limited_total{kind}``: requests refused 429
- ``explain_model_load_failures_total{model}``: versions that failed to load or changed on disk
  (model names are directories of the models directory: bounded by the operator)

Under gunicorn each worker writes its samples to ``PROMETHEUS_MULTIPROC_DIR`` and ``/metrics``
aggregates them; this module only declares and feeds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from functools import cache
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

REQUESTS = Counter("explain_requests_total", "HTTP requests", ["endpoint", "method", "status"])
LATENCY = Histogram("explain_request_seconds", "HTTP request latency", ["endpoint"], buckets=_LATENCY_BUCKETS)
REQUEST_DURATION = Histogram(
    "explain_request_duration_seconds",
    "HTTP request latency by route template, model and explanation methods",
    ["route", "model", "methods"],
    buckets=_LATENCY_BUCKETS,
)
SHAP_RESIDUAL = Histogram(
    "explain_shap_additivity_residual",
    "|output - base_value - sum(values)| of each SHAP explanation",
    ["model"],
    buckets=(1e-12, 1e-10, 1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1),
)
LIME_SCORE = Histogram(
    "explain_lime_score",
    "Local R² of each LIME surrogate",
    ["model"],
    buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0),
)
COUNTERFACTUALS = Counter("explain_counterfactuals_total", "Counterfactuals answered", ["model", "valid"])
CF_SEARCHES = Counter(
    "explain_counterfactual_searches_total",
    "Counterfactual searches, complete or cut short by their time budget",
    ["model", "outcome"],
)
RATE_LIMITED = Counter("explain_rate_limited_total", "Requests refused 429", ["kind"])
MODEL_LOAD_FAILURES = Counter(
    "explain_model_load_failures_total", "Model versions that failed to load or changed on disk", ["model"]
)


@cache
def _audit_metrics() -> tuple[Histogram, Histogram, Gauge]:
    """The label-less audit series, made on first use.

    In multiprocess mode a series without labels opens its file when it is declared; declared at
    import, it would need ``PROMETHEUS_MULTIPROC_DIR`` to exist before ``serve`` has made it.
    """
    seconds = Histogram(
        "explain_audit_append_seconds",
        "Time to append one batch of audit records, durably",
        buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
    )
    records = Histogram(
        "explain_audit_append_records",
        "Audit records per append (batch size)",
        buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
    )
    head = Gauge(
        "explain_audit_chain_head_seq",
        "seq of the newest audit record (read from the store at each scrape)",
        multiprocess_mode="max",
    )
    return seconds, records, head


BUDGET_REASON = "the time budget ran out"
"""What a counterfactual answer's ``message`` ends with when its time budget cut the search short."""


def observe_audit_append(seconds: float, records: int, head_seq: int | None = None) -> None:
    """One commit (one transaction) of ``records`` records that took ``seconds``; ``head_seq`` the new head."""
    append_seconds, append_records, head = _audit_metrics()
    append_seconds.observe(seconds)
    append_records.observe(records)
    if head_seq is not None:
        head.set(head_seq)


def observe_chain_head(head_seq: int) -> None:
    """The chain's head as read from the store (each scrape), whoever appended it."""
    _audit_metrics()[2].set(head_seq)


def observe_explanations(model: str, explanations: Iterable[dict[str, Any]]) -> None:
    """The quality figures of ``model``'s answered explanations (one dict per instance, as answered)."""
    for explanation in explanations:
        shap = explanation.get("shap")
        if isinstance(shap, dict) and _finite(shap.get("additivity_residual")):
            SHAP_RESIDUAL.labels(model).observe(abs(float(shap["additivity_residual"])))
        lime = explanation.get("lime")
        if isinstance(lime, dict) and _finite(lime.get("score")):
            LIME_SCORE.labels(model).observe(float(lime["score"]))
        cf = explanation.get("counterfactual")
        if isinstance(cf, dict):
            found = len(cf.get("counterfactuals") or [])
            validity = (cf.get("metrics") or {}).get("validity")
            valid = (
                round(found * float(validity))
                if isinstance(validity, (int, float)) and _finite(validity)
                else found
            )
            if valid:
                COUNTERFACTUALS.labels(model, "true").inc(valid)
            if found - valid:
                COUNTERFACTUALS.labels(model, "false").inc(found - valid)
            cut = str(cf.get("message", "")).endswith(BUDGET_REASON)
            CF_SEARCHES.labels(model, "budget_exhausted" if cut else "complete").inc()


_REQUEST_SERIES: dict[tuple[str, str, str, str, str], tuple[Any, Any, Any]] = {}


def observe_request(route: str, method: str, status: str, model: str, methods: str, seconds: float) -> None:
    """One answered request in the three request series (labels as the module docstring says).

    The labelled children are looked up once per label set and kept: the labels come from small
    fixed sets, and ``labels()`` costs more than the observations it leads to.
    """
    key = (route, method, status, model, methods)
    series = _REQUEST_SERIES.get(key)
    if series is None:
        series = (
            REQUESTS.labels(route, method, status),
            LATENCY.labels(route),
            REQUEST_DURATION.labels(route, model, methods),
        )
        _REQUEST_SERIES[key] = series
    count, latency, duration = series
    count.inc()
    latency.observe(seconds)
    duration.observe(seconds)


def rate_limited(kind: str) -> None:
    """A request refused 429 by the per-key limit (``"rate"``), the counterfactual quota (``"quota"``) or
    the failed sign-ins of its address (``"login"``)."""
    RATE_LIMITED.labels(kind if kind in ("rate", "quota", "login") else "other").inc()


def model_load_failed(model: str) -> None:
    MODEL_LOAD_FAILURES.labels(model).inc()


def methods_label(methods: Iterable[str] | None, known: Iterable[str]) -> str:
    """``methods`` as a bounded label: the known ones sorted and joined by "+", "-" for none."""
    if not methods:
        return "-"
    allowed = set(known)
    names = sorted({m if m in allowed else "other" for m in methods})
    return "+".join(names)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
