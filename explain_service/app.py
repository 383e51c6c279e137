"""The application factory: the only way an app is made."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask

from explain_service import metrics
from explain_service.api.blueprint import configure_url_map
from explain_service.audit.aggregates import QualityCounts, RecordKinds
from explain_service.audit.incidents import IncidentIndex
from explain_service.audit.projections import TrailIndex
from explain_service.audit.recorder import AuditRecorder
from explain_service.audit.store import AuditStore
from explain_service.audit.suspensions import Suspensions
from explain_service.audit.tally import Projection, Tally
from explain_service.config import Settings
from explain_service.fairness.monitor import DisparityCounts, DisparitySettings, manifest_lookup
from explain_service.jsonio import OrjsonProvider
from explain_service.logs import configure_app_logging
from explain_service.plots.render import PlotCache
from explain_service.registry.store import ModelRegistry
from explain_service.service import ExplainService

log = logging.getLogger(__name__)


def derived_tables(models_dir: str) -> list[Projection]:
    """The projections of the chain kept beside the trail index (see :mod:`explain_service.audit.tally`)."""
    return [IncidentIndex(), DisparityCounts(manifest_lookup(models_dir)), QualityCounts(), RecordKinds()]


class Services:
    """Per-app state, kept in ``app.extensions["explain"]`` and read through ``current_app``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.registry = ModelRegistry(
            settings.models_dir,
            threads=settings.model_threads,
            recheck_seconds=settings.model_recheck_seconds,
        )
        # Each audit commit (a group of concurrent appends, audit/group.py) reports its duration, record
        # count and new head to the metrics.
        self.audit = AuditStore(
            settings.database_url,
            durability=settings.audit_durability,  # type: ignore[arg-type]
            observe=metrics.observe_audit_append,
        )
        self.index = TrailIndex(self.audit)  # the reviewers' list, queue and review events
        self.suspensions = Suspensions(self.audit)  # the stop button
        self.service = ExplainService(recorder=AuditRecorder(self.audit))
        self.plots = PlotCache(settings.plots_dir, max_bytes=settings.plots_cache_mb * 1024 * 1024)
        self.disparity = DisparitySettings(
            settings.disparity_threshold, settings.disparity_window_days, settings.disparity_min_group
        )
        self.tally = Tally(
            self.audit, derived_tables(settings.models_dir)
        )  # incidents, disparity, report counts


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Build the Flask app; ``test_config`` overrides settings (lower-case Settings field names)."""
    configure_app_logging()
    app = Flask(__name__)
    configure_url_map(app)
    app.json = OrjsonProvider(app)
    overrides = dict(test_config or {})
    flask_overrides = {k: overrides.pop(k) for k in list(overrides) if k.isupper()}
    settings = Settings.from_env(**overrides)
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
        API_TITLE="explain-service",
        API_VERSION="v1",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
        **flask_overrides,
    )
    services = Services(settings)
    app.extensions["explain"] = services

    from explain_service import access, api, review

    access.init_app(app, settings, services.audit)
    api.init_app(app)
    review.init_app(app)
    if settings.eager_load:
        # A version that fails is reported by /readyz and answered 503; the others serve.
        services.registry.load_all()
        if not services.audit.ping():
            # Why is logged by the store just before; the app still starts, so /readyz can say so.
            log.error("the audit store cannot be used: requests that need it are answered 503 until it can")
    return app
