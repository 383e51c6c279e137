"""Prometheus gauges of live disparity, computed at scrape time from the disparity counts.

::

    explain_disparity_ratio{model, version, feature}                 demographic parity ratio (NaN: undefined)
    explain_disparity_alert{model, version, feature}                 1 when the ratio is under the threshold
    explain_disparity_selection_rate{model, version, feature, group}  favourable / decisions in the window
    explain_disparity_decisions{model, version, feature, group}       decisions in the window

Labels are bounded: models and versions come from the registry (a version is counted only when its
manifest is read), features and groups from each manifest's sensitive grouping.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.exc import SQLAlchemyError

from explain_service.audit.errors import AuditError
from explain_service.fairness.monitor import DisparitySettings, disparity, monitored_versions

log = logging.getLogger(__name__)


def disparity_metrics(tally: Any, settings: DisparitySettings) -> bytes:
    """The gauges above in Prometheus text format, after folding in the newest records."""
    # Metric families, not Gauge objects: under gunicorn (PROMETHEUS_MULTIPROC_DIR) a Gauge keeps its
    # value in a per-process file that the multiprocess collector also exposes, so every family would be
    # named twice (a scrape Prometheus refuses whole) with a stale copy labelled by pid.
    labels = ["model", "version", "feature"]
    ratio = GaugeMetricFamily(
        "explain_disparity_ratio", "Demographic parity ratio over the window", labels=labels
    )
    alert = GaugeMetricFamily(
        "explain_disparity_alert", "1 when the parity ratio is under the threshold", labels=labels
    )
    rate = GaugeMetricFamily(
        "explain_disparity_selection_rate",
        "Favourable decisions over decisions in the window, per sensitive group",
        labels=[*labels, "group"],
    )
    decisions = GaugeMetricFamily(
        "explain_disparity_decisions",
        "Decisions in the window, per sensitive group",
        labels=[*labels, "group"],
    )
    try:
        tally.catch_up()
        with tally.connect() as conn:
            for name, version in monitored_versions(conn):
                report = disparity(conn, name, version, settings)
                for feature, figures in report["by_feature"].items():
                    value = figures["demographic_parity_ratio"]
                    key = [name, version, feature]
                    ratio.add_metric(key, math.nan if value is None else value)
                    alert.add_metric(key, 1 if figures["alert"] else 0)
                    for group, counts in figures["groups"].items():
                        rate.add_metric([*key, group], counts["selection_rate"])
                        decisions.add_metric([*key, group], counts["decisions"])
    except (AuditError, SQLAlchemyError):
        # The request metrics still matter when the audit database does not answer; /readyz says why.
        log.warning("metrics: live disparity could not be read", exc_info=True)
        return b""
    registry = CollectorRegistry()
    registry.register(_Families([ratio, alert, rate, decisions]))
    return generate_latest(registry)


class _Families(Collector):
    """A collector answering metric families already filled in."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families
