"""Selection rate per sensitive group of a bias audit, one panel per feature.

Each panel draws every group's selection rate as a bar, with its row count, and a dashed
line at four fifths of the highest rate: a bar left of that line is what the four-fifths
rule flags.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from matplotlib.figure import Figure

from explain_service.plots._style import DOWN, INK, MUTED, RULE, UP, font, new_figure, truncate

ROW_HEIGHT = 0.3
TITLE = 0.42
AXIS = 0.45


def selection_rates(audit: Mapping[str, Any], *, max_groups: int = 16) -> Figure:
    """Draw the selection rate of each group of each audited feature.

    Parameters
    ----------
    audit : mapping
        A bias audit answer (``by_feature`` and ``positive`` are read).
    max_groups : int
        Groups drawn per feature at most (the largest ones).

    Returns
    -------
    matplotlib.figure.Figure
    """
    panels = []
    for feature, figures in audit["by_feature"].items():
        groups = list(figures["groups"].items())
        if len(groups) > max_groups:
            groups = sorted(groups, key=lambda item: -item[1]["count"])[:max_groups]
        panels.append((feature, figures, groups))
    # Each panel: a title line, one row per group, the x axis; laid out in inches from the top.
    heights = [TITLE + ROW_HEIGHT * max(len(g), 1) + AXIS for _, _, g in panels]
    total = sum(heights) + 0.1
    fig = new_figure(total, width=8.0)
    axes = []
    top = total - 0.05
    for h in heights:
        bottom = top - h + AXIS
        axes.append(fig.add_axes((0.26, bottom / total, 0.71, (h - TITLE - AXIS) / total)))
        top -= h
    for ax, (feature, figures, groups) in zip(axes, panels, strict=True):
        labels = [truncate(label, 30) for label, _ in groups]
        rates = [stats["selection_rate"] or 0.0 for _, stats in groups]
        top = max(rates, default=0.0)
        flagged = figures["four_fifths_rule"]["flagged"]
        colours = [UP if flagged and r < 0.8 * top else DOWN for r in rates]
        ax.barh(range(len(groups)), rates, color=colours, height=0.6)
        ax.set_yticks(range(len(groups)), labels, fontproperties=font(9.0))
        ax.invert_yaxis()
        ax.set_xlim(0, 1.12)
        if top > 0:
            ax.axvline(0.8 * top, color=MUTED, linestyle="--", linewidth=1.0)
        for i, (r, (_, stats)) in enumerate(zip(rates, groups, strict=True)):
            ax.text(
                r + 0.01,
                i,
                f"{r:.3f}  (n={stats['count']})",
                va="center",
                fontproperties=font(8.5),
                color=INK,
            )
        ratio = figures["demographic_parity_ratio"]
        title = f"{feature}: selection rate of '{audit['positive']}'"
        if ratio is not None:
            title += f" \u00b7 parity ratio {ratio:.3f}" + (" \u2014 below 0.8" if flagged else "")
        ax.set_title(title, loc="left", fontproperties=font(10.0, "bold"), color=INK)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        ax.spines["left"].set_color(RULE)
        ax.spines["bottom"].set_color(RULE)
        ax.tick_params(axis="x", labelsize=8.5, colors=MUTED)
    return fig
