"""Where a transparency report's sources meet: the app's registry, chain, derived tables and settings.

The API view, the review page and the ``report`` command all call :func:`report_for`, so the three show
the same figures. Global importance is computed once per loaded model version
(:func:`explain_service.fairness.importance.global_importance`, cached on the model as its HTTP view does).
"""

from __future__ import annotations

from typing import Any

from explain_service.errors import ServiceError
from explain_service.fairness.report import build_report
from explain_service.registry.model import LoadedModel


def importance_of(model: LoadedModel) -> Any:
    """The model's global importance over its background, computed once per loaded version."""
    from explain_service.fairness.importance import global_importance

    return model.cached("global_importance", lambda: global_importance(model))


def mean_abs_importance(model: LoadedModel) -> dict[str, float]:
    """Mean |SHAP| per feature over the model's background."""
    result: dict[str, float] = importance_of(model).mean_abs()
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
