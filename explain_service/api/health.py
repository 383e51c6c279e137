"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import logging
import os
from typing import Any

from flask import Response, current_app
from flask.views import MethodView
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from explain_service import metrics
from explain_service.api.blueprint import Blueprint
from explain_service.fairness.gauges import disparity_metrics
from explain_service.jsonio import json_response
from explain_service.metrics import LATENCY, REQUESTS

__all__ = ["LATENCY", "REQUESTS", "blp"]

log = logging.getLogger(__name__)

blp = Blueprint("health", __name__, description="Liveness, readiness and metrics.")


@blp.route("/healthz")
class Healthz(MethodView):
    def get(self) -> Any:
        """The process is up."""
        return json_response({"status": "ok"})


@blp.route("/readyz")
class Readyz(MethodView):
    def get(self) -> Any:
        """Every registered version verifies against its files; the audit store accepts writes."""
        services = current_app.extensions["explain"]
        problems: dict[str, list[str]] = {}
        broken = services.registry.check()
        if broken:
            problems["models"] = [b.describe() for b in broken]
        audit = _audit_problems(services)
        if audit:
            problems["audit"] = audit
        if problems:
            body: dict[str, Any] = {"status": "not ready", "errors": problems}
            body["unavailable"] = [{"name": b.name, "version": b.version, "reason": b.reason} for b in broken]
            return json_response(body, 503)
        return json_response({"status": "ready", "models": len(services.registry.load_all())})


def _audit_problems(services: Any) -> list[str]:
    """Why the audit store cannot take records (details go to the log, not the answer)."""
    recorder = services.service.recorder
    if recorder is not None and hasattr(recorder, "ping") and not recorder.ping():
        return ["The audit store does not answer."]
    check_writable = getattr(services.audit, "check_writable", None)
    if check_writable is None:
        return []
    try:
        writable = check_writable()
    except Exception:
        log.exception("readiness: the audit store refused a write check")
        return ["The audit store does not accept writes."]
    if writable is False:
        log.error("readiness: the audit store reports it cannot be written")
        return ["The audit store does not accept writes."]
    return []


@blp.route("/metrics")
class Metrics(MethodView):
    def get(self) -> Any:
        """Prometheus metrics (aggregated across workers when PROMETHEUS_MULTIPROC_DIR is set)."""
        services = current_app.extensions["explain"]
        try:  # the head as stored, so appends by a batch job or another host count at once
            metrics.observe_chain_head(services.audit.head()[0])
        except Exception:  # an unreachable store shows in /readyz; the last head seen stays
            log.warning("metrics: cannot read the audit chain's head", exc_info=True)
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            data = generate_latest(registry)
        else:
            data = generate_latest()
        data += disparity_metrics(services.tally, services.disparity)  # per scrape, from indexed counts
        return Response(data, mimetype=CONTENT_TYPE_LATEST)
