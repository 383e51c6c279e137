"""Explanation methods. Adding one is a new module plus one line in :data:`EXPLAINERS`."""

from __future__ import annotations

from explain_service.explainers.base import Explainer
from explain_service.explainers.counterfactual import CounterfactualExplainer
from explain_service.explainers.lime import LimeExplainer
from explain_service.explainers.shap import ShapExplainer

EXPLAINERS: dict[str, Explainer] = {
    "shap": ShapExplainer(),
    "lime": LimeExplainer(),
    "counterfactual": CounterfactualExplainer(),
}

__all__ = ["EXPLAINERS", "Explainer"]
