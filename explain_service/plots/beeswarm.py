"""Beeswarm summary: every row's SHAP value per feature, one row of dots per feature.

Features are ranked by mean |SHAP| (largest on top). Dots that would overlap are stacked
up and down from the feature's line, so the width of a swarm shows how many rows have that
value; a dot's colour is the row's value of the feature, from low (blue) to high (orange),
as its percentile within the reference set (categorical and boolean features are grey:
their values have no order). The waterfall and bar charts use the same two colours for
"raised" and "lowered", so the colour bar and a line under the title say that here they mean
the feature's value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.colors import LinearSegmentedColormap
from matplotlib.figure import Figure

from explain_service.plots._style import (
    DOWN,
    INK,
    MUTED,
    NEUTRAL,
    RULE,
    UP,
    count,
    font,
    new_figure,
    truncate,
)

ROW_HEIGHT = 0.42
TOP = 0.75  # inches above the axes: the title and the line that says what colour means
COLOUR_MEANING = (
    "Colour: the row's value of the feature (grey: categories, which have no order), "
    "not whether it raised or lowered the output."
)
COLOUR_BAR_LABEL = "feature value: low \u2192 high"
BINS = 80
COLOURS = LinearSegmentedColormap.from_list("low-high", [DOWN, "#b0b0b0", UP])


def _swarm_offsets(x: np.ndarray, bins: int = BINS, step: float = 0.07, limit: float = 0.4) -> np.ndarray:
    """Vertical offsets that stack dots falling into the same x bin: 0, +s, -s, +2s, ..."""
    offsets = np.zeros(len(x))
    if len(x) == 0:
        return offsets
    lo, hi = float(x.min()), float(x.max())
    width = (hi - lo) / bins or 1.0
    slots = np.floor((x - lo) / width).astype(int)
    for slot in np.unique(slots):
        members = np.flatnonzero(slots == slot)
        k = np.arange(len(members))
        raw = ((k + 1) // 2) * np.where(k % 2 == 1, 1.0, -1.0) * step
        scale = min(1.0, limit / max(float(np.abs(raw).max()), 1e-12))
        offsets[members] = raw * scale
    return offsets


def _colour_values(column: pd.Series, numeric: bool) -> np.ndarray | None:
    if not numeric:
        return None
    values = pd.to_numeric(column, errors="coerce")
    return values.rank(pct=True).to_numpy(dtype=float)


def beeswarm(
    values: np.ndarray,
    rows: pd.DataFrame,
    model: Mapping[str, Any],
    *,
    numeric: Sequence[str] = (),
    output: str = "",
    target: str | None = None,
    max_display: int = 12,
    seed: int = 0,
) -> Figure:
    """Draw SHAP values of many rows as a beeswarm.

    Parameters
    ----------
    values : ndarray
        SHAP values, ``(rows, features)``, one column per column of ``rows``.
    rows : DataFrame
        The explained rows (their values colour the dots).
    model : mapping
        ``{"name", "version", "sha256"}`` of the model.
    numeric : sequence of str
        Features whose values are ordered (coloured low to high); the others are grey.
    output, target : str
        The output space and the class the values explain, for the axis label.
    max_display : int
        Features drawn at most (those with the largest mean |SHAP|).
    seed : int
        Seed of the draw order of dots (which dot lands on top).

    Returns
    -------
    matplotlib.figure.Figure
    """
    names = list(rows.columns)
    mean_abs = np.abs(values).mean(axis=0) if len(values) else np.zeros(len(names))
    order = sorted(range(len(names)), key=lambda j: (-float(mean_abs[j]), names[j]))[:max_display]
    fig = new_figure(0.8 + TOP + ROW_HEIGHT * len(order), width=8.0)
    height = fig.get_figheight()
    ax = fig.add_axes((0.25, 0.75 / height, 0.62, 1 - (0.75 + TOP) / height))
    rng = np.random.default_rng(seed)
    for pos, j in enumerate(order):
        x = values[:, j]
        y = pos + _swarm_offsets(x)
        shade = _colour_values(rows.iloc[:, j], names[j] in numeric)
        draw = rng.permutation(len(x))
        if shade is None:
            ax.scatter(x[draw], y[draw], s=9, color=NEUTRAL, linewidths=0, alpha=0.8)
        else:
            ax.scatter(
                x[draw], y[draw], s=9, c=shade[draw], cmap=COLOURS, vmin=0, vmax=1, linewidths=0, alpha=0.85
            )
    ax.axvline(0.0, color=RULE, linewidth=1.0, zorder=0)
    ax.set_yticks(range(len(order)), [truncate(names[j], 28) for j in order], fontproperties=font(9.5))
    ax.set_ylim(len(order) - 0.5, -0.5)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    ax.spines["bottom"].set_color(RULE)
    ax.tick_params(axis="y", length=0)
    ax.tick_params(axis="x", labelsize=8.5, colors=MUTED)
    space = output.replace("_", "-") if output else "output"
    ax.set_xlabel(
        f"SHAP value ({space}{f' of {target}' if target else ''}) \u2014 impact on the model's output",
        fontproperties=font(9.0),
        color=INK,
    )
    fig.text(
        0.02,
        1 - 0.28 / height,
        f"SHAP summary \u2014 {model.get('name', '')} v{model.get('version', '')} ({count(len(values), 'row')})",
        fontproperties=font(12.0, "bold"),
        color=INK,
    )
    fig.text(0.02, 1 - 0.52 / height, COLOUR_MEANING, fontproperties=font(8.5), color=MUTED)
    bar = fig.add_axes((0.89, 0.75 / height, 0.015, 1 - (0.75 + TOP) / height))
    bar.imshow(np.linspace(1, 0, 100)[:, None], aspect="auto", cmap=COLOURS, extent=(0, 1, 0, 1))
    bar.set_xticks([])
    bar.set_yticks([0, 1], ["low", "high"], fontproperties=font(8.5))
    bar.yaxis.tick_right()
    bar.yaxis.set_label_position("right")
    bar.set_ylabel(COLOUR_BAR_LABEL, fontproperties=font(8.5), color=INK, rotation=90, labelpad=2)
    return fig
