"""Where a transparency report's sources meet: the app's registry, chain, derived tables and settings.

The API view, the review page and the ``report`` command all call :func:`report_for`, so the three show
the same figures. Global importance is computed once per model sha256 in a process (a version's files,
and so its importance over its background, never change).
"""

from __future__ import annotations

import threading
from typing import Any

from explain_service.errors import ServiceError
from explain_service.fairness.report import build_report
from explain_service.registry.model import LoadedModel

_cache: dict[str, dict[str, float]] = {}
_cache_lock = threading.Lock()
MAX_CACHED = 64


def mean_abs_importance(model: LoadedModel) -> dict[str, float]:
    """Mean |SHAP| per feature over the model's background (cached by model sha256)."""
    from explain_service.fairness.importance import global_importance

    with _cache_lock:
        found = _cache.get(model.sha256)
    if found is not None:
        return found
    result = global_importance(model).mean_abs()
    with _cache_lock:
        if len(_cache) >= MAX_CACHED:
            _cache.pop(next(iter(_cache)))
        _cache[model.sha256] = result
    return result


def previous_version(services: Any, model: LoadedModel) -> LoadedModel | None:
    """The version registered before ``model``'s, if it loads."""
    versions = services.registry.versions(model.name)
    if model.version not in versions or versions.index(model.version) == 0:
        return None
    try:
        loaded: LoadedModel = services.registry.get(model.name, versions[versions.index(model.version) - 1])
    except ServiceError:
        return None
    return loaded


def report_for(
    services: Any, name: str, version: str | None = None, *, performance: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The transparency report of ``name`` (its newest healthy version unless ``version``).

    Raises ModelNotFound / ModelUnavailable as the registry does.
    """
    model = services.registry.get(name, version)
    services.index.catch_up(services.index.read_catch_up)
    services.tally.catch_up(force=True)
    head_seq, head_hash = services.audit.head()
    with services.tally.connect() as conn:
        return build_report(
            model,
            conn,
            previous=previous_version(services, model),
            importance=mean_abs_importance,
            performance=performance,
            audit=services.audit,
            disparity_settings=services.disparity,
            chain={"records": head_seq, "head_hash": head_hash},
        )
