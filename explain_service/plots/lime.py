"""LIME contributions: what each feature's value adds to the local surrogate's prediction.

The surrogate's raw weights are slopes (per background standard deviation, or for keeping the
instance's category); their sign says nothing about whether *this* value raised or lowered the
prediction. The plot draws the per-feature contributions instead (``weight * (x - mean) / std``
for numbers, ``weight * (1 - share)`` for categories), which read like SHAP values. Records made
before contributions existed are drawn from their weights, titled as slopes.
"""

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
    prediction_text,
    rank,
    target_text,
    truncate,
)


def lime_weights(
    explanation: Mapping[str, Any],
    instance: Mapping[str, Any],
    model: Mapping[str, Any],
    *,
    max_display: int = 10,
) -> Figure:
    """Draw the LIME contributions of one explanation as horizontal bars, largest on top.

    Parameters
    ----------
    explanation : mapping
        One explanation of an ``:explain`` answer; its ``lime`` part is drawn.
    instance : mapping
        The raw input row, used to print each feature's value next to its name.
    model : mapping
        ``{"name", "version", "sha256"}`` of the explained model.
    max_display : int
        Rows at most; beyond it, the smallest contributions are summed into one "N other features" row.

    Returns
    -------
    matplotlib.figure.Figure
        The subtitle gives the surrogate's fit (local R²), its seed and its number of samples, which
        a reviewer needs to judge how far the contributions can be trusted and to reproduce them.
    """
    lime = explanation["lime"]
    prediction = explanation.get("prediction", {})
    target = target_text(lime.get("target"), prediction)
    values = lime.get("contributions")
    what = "contribution"
    if values is None:
        values, what = lime["weights"], "slope"
    ranked = rank(values, max_display)
    rows = [(feature_label(name, instance), value) for name, value in ranked.items]
    if ranked.other_count:
        rows.append((f"sum of {ranked.other_count} other features", ranked.other_sum))
    score = lime.get("score")
    quantity = "the value" if "value" in prediction else f"P({truncate(str(lime.get('target')), 20)})"
    lines = [
        f"Local surrogate for {target} \u00b7 "
        + (f"local R\u00b2 = {float(score):.2f}" if score is not None else "local R\u00b2 not reported")
        + f" \u00b7 seed {lime.get('seed', '?')} \u00b7 {_samples(lime.get('num_samples'))}",
        f"Prediction: {prediction_text(prediction, lime.get('target'))} \u00b7 intercept "
        f"{format_number(float(lime.get('intercept') or 0.0))} \u00b7 {count(len(lime['weights']), 'feature')}",
    ]
    return signed_bars(
        f"LIME {what}s \u2014 {model_text(model)}",
        lines,
        rows,
        xlabel=f"LIME {what} toward {target}",
        legend=[(f"raises {quantity}", UP), (f"lowers {quantity}", DOWN)],
    )


def _samples(n: Any) -> str:
    return count(int(n), "sample") if isinstance(n, int | float) else "samples not reported"
