"""SHAP bar chart: each feature's SHAP value as a bar from zero."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from matplotlib.figure import Figure

from explain_service.plots._frame import signed_bars
from explain_service.plots._style import (
    DOWN,
    UP,
    count,
    feature_label,
    format_number,
    model_text,
    output_space,
    prediction_text,
    rank,
    target_text,
)


def bar(
    explanation: Mapping[str, Any],
    instance: Mapping[str, Any],
    model: Mapping[str, Any],
    *,
    max_display: int = 10,
) -> Figure:
    """Draw the SHAP values of one explanation as horizontal bars, largest |value| on top.

    Parameters
    ----------
    explanation : mapping
        One explanation of an ``:explain`` answer; its ``shap`` part is drawn.
    instance : mapping
        The raw input row, used to print each feature's value next to its name.
    model : mapping
        ``{"name", "version", "sha256"}`` of the explained model.
    max_display : int
        Rows at most; beyond it, the smallest features are summed into one "N other features" row.

    Returns
    -------
    matplotlib.figure.Figure
    """
    shap = explanation["shap"]
    prediction = explanation.get("prediction", {})
    space = output_space(shap.get("output"))
    target = target_text(shap.get("target"), prediction)
    ranked = rank(shap["values"], max_display)
    rows = [(feature_label(name, instance), value) for name, value in ranked.items]
    if ranked.other_count:
        rows.append((f"sum of {ranked.other_count} other features", ranked.other_sum))
    lines = [
        f"{target.capitalize()} \u00b7 output space: {space} \u00b7 base value E[f(X)] = "
        f"{format_number(float(shap['base_value']))}",
        f"Prediction: {prediction_text(prediction, shap.get('target'))} \u00b7 {count(len(shap['values']), 'feature')}",
    ]
    return signed_bars(
        f"SHAP values \u2014 {model_text(model)}",
        lines,
        rows,
        xlabel=f"SHAP value, {space} of {target}" if "value" not in prediction else "SHAP value",
        legend=[("raises f(x)", UP), ("lowers f(x)", DOWN)],
    )
