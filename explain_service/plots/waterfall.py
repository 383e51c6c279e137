"""SHAP waterfall: how each feature moves the model output from the base value to f(x)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.patches import Polygon

from explain_service.plots._frame import GAP, RowChart
from explain_service.plots._style import (
    DOWN,
    INK,
    MUTED,
    NEUTRAL,
    RULE,
    UP,
    VALUE_SIZE,
    colour_of,
    count,
    decimals_for,
    feature_label,
    format_fixed,
    model_text,
    output_space,
    prediction_text,
    rank,
    target_text,
    text_width,
)

HALF_HEIGHT = 0.3  # of an arrow, in rows
TIP = 0.1  # inches of arrow head

CONTRIBUTION = "contribution"
"""The ``gid`` of every contribution arrow, so that its geometry can be found on the figure."""


def waterfall(
    explanation: Mapping[str, Any],
    instance: Mapping[str, Any],
    model: Mapping[str, Any],
    *,
    max_display: int = 10,
) -> Figure:
    """Draw the SHAP values of one explanation as a waterfall.

    Parameters
    ----------
    explanation : mapping
        One explanation of an ``:explain`` answer; its ``shap`` part is drawn.
    instance : mapping
        The raw input row, used to print each feature's value next to its name.
    model : mapping
        ``{"name", "version", "sha256"}`` of the explained model.
    max_display : int
        Rows of features at most; beyond it, the smallest are folded into "N other features".

    Returns
    -------
    matplotlib.figure.Figure
        Top to bottom: the base value E[f(X)], one arrow per feature in decreasing |SHAP value|, each
        starting where the previous one ended, and the model output f(x). The title names the model,
        the explained class and the output space.
    """
    shap = explanation["shap"]
    prediction = explanation.get("prediction", {})
    values = shap["values"]
    base = float(shap["base_value"])
    residual = float(shap.get("additivity_residual") or 0.0)
    space = output_space(shap.get("output"))
    target = target_text(shap.get("target"), prediction)

    ranked = rank(values, max_display)
    rows = list(ranked.items)
    labels = [feature_label(name, instance) for name, _ in rows]
    if ranked.other_count:
        rows.append(("", ranked.other_sum))
        labels.append(f"{ranked.other_count} other features")
    starts = [base]
    for _, value in rows:
        starts.append(starts[-1] + value)
    end = starts[-1]
    fx = base + math.fsum(float(v) for v in values.values()) + residual
    digits = decimals_for([v for _, v in rows] or [base])
    numbers = [format_fixed(v, digits, signed=True) for _, v in rows]
    base_text, fx_text = format_fixed(base, digits), format_fixed(fx, digits)

    lines = [
        f"{target[0].upper()}{target[1:]} \u00b7 output space: {space} \u00b7 f(x) = {fx_text}"
        f" \u00b7 base value E[f(X)] = {base_text}",
        f"Prediction: {prediction_text(prediction, shap.get('target'))} \u00b7 {count(len(values), 'feature')}"
        + (f", {len(ranked.items)} largest shown" if ranked.other_count else ""),
    ]
    pad = max(text_width(t, VALUE_SIZE, "bold") for t in [*numbers, base_text, fx_text]) + GAP + 0.08
    chart = RowChart(
        f"SHAP waterfall \u2014 {model_text(model)}",
        lines,
        ["base value E[f(X)]", *labels, "model output f(x)"],
        lo=min(starts),
        hi=max(starts),
        pad=pad,
        weights=["normal"] * (len(labels) + 1) + ["bold"],
        legend=[("raises f(x)", UP), ("lowers f(x)", DOWN)],
    )
    chart.axis(
        f"model output f(x), {space} of {target}" if "value" not in prediction else "model output f(x)"
    )
    last = len(rows) + 1

    chart.vline(base, RULE, 0.8, -0.5, last + 0.5, zorder=0)
    connectors = []
    for row, ((name, value), start, number) in enumerate(
        zip(rows, starts[:-1], numbers, strict=True), start=1
    ):
        stop = start + value
        chart.add(_arrow(start, stop, row, chart.inches(TIP), label=name or "other"))
        chart.text(
            stop + chart.inches(-GAP if value < 0 else GAP),
            row,
            number,
            colour=colour_of(value),
            ha="right" if value < 0 else "left",
        )
        connectors.append([(start, row - 1 + HALF_HEIGHT), (start, row - HALF_HEIGHT)])
    connectors.append([(end, last - 1 + HALF_HEIGHT), (end, last - HALF_HEIGHT)])
    chart.add(LineCollection(connectors, colors=NEUTRAL, linewidths=0.8, linestyles=(0, (2, 2))))

    for row, x, text, weight in ((0, base, base_text, "normal"), (last, end, fx_text, "bold")):
        chart.vline(x, INK, 2.2, row - HALF_HEIGHT, row + HALF_HEIGHT, zorder=2)
        chart.text(x + chart.inches(GAP), row, text, colour=INK if weight == "bold" else MUTED, weight=weight)
    return chart.fig


def _arrow(start: float, stop: float, row: int, tip: float, *, label: str) -> Polygon:
    """A horizontal arrow from ``start`` to ``stop`` on ``row``; a zero-length one is a thin tick."""
    width = stop - start
    if width == 0:
        points = [(start, row - HALF_HEIGHT), (start, row + HALF_HEIGHT)]
    else:
        head = math.copysign(min(abs(width), tip), width)
        neck = stop - head
        points = [
            (start, row - HALF_HEIGHT),
            (neck, row - HALF_HEIGHT),
            (stop, row),
            (neck, row + HALF_HEIGHT),
            (start, row + HALF_HEIGHT),
        ]
    colour = colour_of(width)
    patch = Polygon(
        points,
        closed=True,
        facecolor=colour,
        edgecolor=colour,
        linewidth=0.8 if width else 1.5,
        joinstyle="miter",
    )
    patch.set_gid(CONTRIBUTION)
    patch.set_label(label)
    return patch
