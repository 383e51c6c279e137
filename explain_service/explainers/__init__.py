"""Explanation methods. Adding one is a new module plus one line in :data:`EXPLAINERS`."""

from __future__ import annotations

from explain_service.explainers.base import Explainer
from explain_service.explainers.shap import ShapExplainer

EXPLAINERS: dict[str, Explainer] = {
    "shap": ShapExplainer(),
}

__all__ = ["EXPLAINERS", "Explainer"]
