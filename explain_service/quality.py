"""Quality flags of one explanation: the one place that says when an explanation needs a second look.

The explanation service routes a flagged explanation to a human (:mod:`explain_service.registry.review_rules`)
and the trail index (:mod:`explain_service.audit.projections`) stores the same flags for the reviewers'
filters; both call :func:`quality_flags`, so the two cannot disagree::

    additivity_residual    |shap.additivity_residual| > 1e-5 * max(1, |output|)  (the local-accuracy bar)
    low_lime_r2            lime.score < 0.5  (the surrogate explains less than half the local variance)
    counterfactual_budget  the counterfactual search stopped because its time budget ran out
    out_of_range           an input outside the [min, max] seen at registration (``flags.out_of_range``)

Unseen categories never reach an explanation: validation refuses them with a 422, so no flag is needed.
It reads the explanation's JSON form; the counterfactual budget's words are the metrics module's
:data:`~explain_service.metrics.BUDGET_REASON`, which the search writes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from explain_service.metrics import BUDGET_REASON  # the search's own words when its budget cut it short

ADDITIVITY_RTOL = 1e-5
LOW_LIME_SCORE = 0.5

QUALITY_FLAGS = ("additivity_residual", "low_lime_r2", "counterfactual_budget", "out_of_range")
EXPLANATION_QUALITY = QUALITY_FLAGS[:3]
"""The flags about the explanation itself (the others are about the input)."""


def additivity_exceeded(shap: Mapping[str, Any]) -> bool:
    """Whether a SHAP result misses local accuracy: residual over ``1e-5 * max(1, |output|)``."""
    residual = shap.get("additivity_residual")
    if not isinstance(residual, int | float) or not math.isfinite(residual):
        return False
    values = shap.get("values") or {}
    output = float(shap.get("base_value") or 0.0) + sum(float(v) for v in values.values()) + residual
    return abs(residual) > ADDITIVITY_RTOL * max(1.0, abs(output))


def quality_flags(explanation: Mapping[str, Any]) -> list[str]:
    """The :data:`QUALITY_FLAGS` an explanation (as answered or stored) raises, in that order."""
    found: list[str] = []
    shap = explanation.get("shap")
    if isinstance(shap, Mapping) and additivity_exceeded(shap):
        found.append("additivity_residual")
    lime = explanation.get("lime")
    if isinstance(lime, Mapping):
        score = lime.get("score")
        if isinstance(score, int | float) and score < LOW_LIME_SCORE:
            found.append("low_lime_r2")
    counterfactual = explanation.get("counterfactual")
    if isinstance(counterfactual, Mapping) and BUDGET_REASON in str(counterfactual.get("message") or ""):
        found.append("counterfactual_budget")
    flags = explanation.get("flags")
    if isinstance(flags, Mapping) and flags.get("out_of_range"):
        found.append("out_of_range")
    return found
