"""Counterfactual changes: for each counterfactual, which features move from what to what."""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.patches import Rectangle

from explain_service.plots._style import (
    FIG_WIDTH,
    INK,
    LABEL_SIZE,
    MAX_NAME_CHARS,
    MUTED,
    RULE,
    SHADE,
    VALUE_SIZE,
    count,
    draw_header,
    font,
    format_feature_value,
    format_number,
    header_height,
    model_text,
    new_figure,
    place_text,
    prediction_text,
    target_text,
    text_width,
    truncate,
)

ROW = 0.3
BLOCK_GAP = 0.22
LEFT = 0.3
COLUMN_GAP = 0.4


def counterfactual_changes(
    explanation: Mapping[str, Any],
    instance: Mapping[str, Any],
    model: Mapping[str, Any],
) -> Figure:
    """Draw, for each counterfactual, its changed features as a small from -> to table.

    Parameters
    ----------
    explanation : mapping
        One explanation of an ``:explain`` answer; its ``counterfactual`` part is drawn.
    instance : mapping
        The raw input row; only its number of features is used, the changes carry their own values.
    model : mapping
        ``{"name", "version", "sha256"}`` of the explained model.

    Returns
    -------
    matplotlib.figure.Figure
        One block per counterfactual, headed by the prediction it would get; features in a block are
        sorted by name and numeric changes show their difference.
    """
    part = explanation["counterfactual"]
    prediction = explanation.get("prediction", {})
    target = part.get("target")
    found = list(part.get("counterfactuals") or [])
    blocks = [_rows(cf.get("changes") or {}) for cf in found]
    metrics = part.get("metrics") or {}

    lines = [
        f"Current prediction: {prediction_text(prediction)} \u00b7 sought outcome: {_sought(target, prediction)}",
        "Metrics: "
        + (
            " \u00b7 ".join(f"{truncate(str(k), 20)} {_metric(v)}" for k, v in sorted(metrics.items()))
            if metrics
            else "none reported"
        ),
    ]
    top = header_height(len(lines)) + 0.1
    body = sum(ROW * (2 + max(len(rows), 1)) + BLOCK_GAP for rows in blocks) if blocks else ROW * 2
    height = top + body + 0.2
    fig = new_figure(height)
    draw_header(fig, f"Counterfactuals \u2014 {model_text(model)}", lines)
    table = _Table(fig, height)

    if not found:
        table.text(LEFT, top + ROW, "No counterfactual was found within the model's constraints.", MUTED)
        return fig

    cells = [cell for rows in blocks for row in rows for cell in row]
    widths = [max((text_width(c, LABEL_SIZE, "bold") for c in cells[i::4]), default=0.0) for i in range(4)]
    x_name = LEFT + 0.15
    x_from = x_name + max(widths[0], text_width("feature", VALUE_SIZE)) + COLUMN_GAP
    x_arrow = x_from + max(widths[1], text_width("now", VALUE_SIZE)) + 0.2
    x_to = x_arrow + 0.35
    x_delta = x_to + max(widths[2], text_width("counterfactual", VALUE_SIZE)) + COLUMN_GAP

    y = top
    n_features = len(instance)
    for k, (cf, rows) in enumerate(zip(found, blocks, strict=True), start=1):
        cf_prediction = cf.get("prediction") or {}
        reached = target is None or "value" in cf_prediction or cf_prediction.get("label") == target
        table.text(LEFT, y + ROW / 2, f"Counterfactual {k}", INK, font(LABEL_SIZE, "bold"))
        table.text(
            LEFT + text_width(f"Counterfactual {k}", LABEL_SIZE, "bold") + 0.15,
            y + ROW / 2,
            f"\u2192 {prediction_text(cf_prediction, target)}"
            + ("" if reached else "  (does not reach the sought outcome)"),
            INK if reached else MUTED,
        )
        changed = (
            f"{len(rows)} of {count(n_features, 'feature')} changed" if n_features else f"{len(rows)} changed"
        )
        table.text(FIG_WIDTH - 0.3, y + ROW / 2, changed, MUTED, font(VALUE_SIZE), ha="right")
        y += ROW
        for x, head in ((x_name, "feature"), (x_from, "now"), (x_to, "counterfactual"), (x_delta, "change")):
            table.text(x, y + ROW / 2, head, MUTED, font(VALUE_SIZE, style="italic"))
        table.rule(y + ROW)
        y += ROW
        if not rows:
            table.text(x_name, y + ROW / 2, "no feature changed", MUTED)
            y += ROW
        for i, (name, before, after, delta) in enumerate(rows):
            if i % 2 == 1:
                table.shade(y)
            table.text(x_name, y + ROW / 2, name, INK)
            table.text(x_from, y + ROW / 2, before, MUTED)
            table.text(x_arrow, y + ROW / 2, "\u2192", MUTED)
            table.text(x_to, y + ROW / 2, after, INK, font(LABEL_SIZE, "bold"))
            table.text(x_delta, y + ROW / 2, delta, MUTED)
            y += ROW
        y += BLOCK_GAP
    return fig


def _sought(target: Any, prediction: Mapping[str, Any]) -> str:
    """The outcome the counterfactuals were searched for."""
    if target is None:
        return "a different outcome"
    if "value" not in prediction:
        return target_text(target, prediction)
    if isinstance(target, Mapping):
        return "value " + ", ".join(f"{k} {format_feature_value(v)}" for k, v in sorted(target.items()))
    return f"value {format_feature_value(target)}"


def _metric(value: Any) -> str:
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return f"{float(value):.2f}"
    return truncate(str(value), 20)


def _rows(changes: Mapping[str, Any]) -> list[tuple[str, str, str, str]]:
    """``(feature, from, to, difference)`` texts of one counterfactual, sorted by feature name."""
    rows = []
    for name in sorted(changes):
        change = changes[name] or {}
        before, after = change.get("from"), change.get("to")
        rows.append(
            (
                truncate(str(name), MAX_NAME_CHARS),
                format_feature_value(before),
                format_feature_value(after),
                _difference(before, after),
            )
        )
    return rows


def _difference(before: Any, after: Any) -> str:
    """``after - before`` with its sign for numbers; empty for anything else."""
    numeric = (numbers.Real,)
    if isinstance(before, bool) or isinstance(after, bool):
        return ""
    if not (isinstance(before, numeric) and isinstance(after, numeric)):
        return ""
    delta = float(after) - float(before)  # type: ignore[arg-type]
    return ("+" if delta > 0 else "") + format_number(delta)


class _Table:
    """Draws text, rules and shading on a figure in inches measured from its top left corner."""

    def __init__(self, fig: Figure, height: float) -> None:
        self.fig = fig
        self.height = height

    def text(
        self,
        x: float,
        y: float,
        text: str,
        colour: str,
        fontproperties: FontProperties | None = None,
        ha: str = "left",
    ) -> None:
        place_text(self.fig, x, y, text, fontproperties or font(LABEL_SIZE), colour, ha=ha)

    def rule(self, y: float) -> None:
        self._box(y - 0.005, 0.01, RULE)

    def shade(self, y: float) -> None:
        self._box(y, ROW, SHADE)

    def _box(self, y: float, h: float, colour: str) -> None:
        self.fig.add_artist(
            Rectangle(
                (LEFT / FIG_WIDTH, 1 - (y + h) / self.height),
                (FIG_WIDTH - 2 * LEFT) / FIG_WIDTH,
                h / self.height,
                transform=self.fig.transFigure,
                facecolor=colour,
                edgecolor="none",
                zorder=0,
            )
        )
