"""A light chart of labelled horizontal rows over one value axis, drawn straight onto a figure.

The charts here need one linear x axis and a label per row. Drawing them with an affine transform on
the figure instead of an ``Axes`` avoids building and laying out tick objects, which is most of the
cost of a small plot; the artists are ordinary matplotlib ones (``Text``, ``Polygon``, ``Line2D``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from matplotlib.artist import Artist
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator
from matplotlib.transforms import Affine2D, Transform, blended_transform_factory

from explain_service.plots._style import (
    FIG_WIDTH,
    INK,
    LABEL_SIZE,
    MINUS,
    MUTED,
    RULE,
    SHADE,
    TICK_SIZE,
    VALUE_SIZE,
    colour_of,
    decimals_for,
    draw_header,
    draw_legend,
    font,
    format_fixed,
    header_height,
    new_figure,
    text_width,
)
from explain_service.plots._text import GlyphText

ROW_HEIGHT = 0.36
LEFT_MARGIN = 0.25
RIGHT_MARGIN = 0.35
BOTTOM_MARGIN = 0.75
GAP = 0.06  # inches between a bar and its number


class RowChart:
    """Rows ``0 .. n-1`` from top to bottom, each with a label, over a value axis at the bottom.

    Data coordinates are ``(x, row)``; :attr:`transform` maps them to the figure.
    """

    def __init__(
        self,
        title: str,
        lines: Sequence[str],
        labels: Sequence[str],
        *,
        lo: float,
        hi: float,
        pad: float,
        weights: Sequence[str] | None = None,
        legend: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.rows = max(len(labels), 1)
        self.top = header_height(len(lines)) + (0.3 if legend else 0.0) + 0.1
        height = self.top + self.rows * ROW_HEIGHT + BOTTOM_MARGIN
        self.fig: Figure = new_figure(height)
        draw_header(self.fig, title, lines)
        if legend:
            draw_legend(self.fig, header_height(len(lines)), legend)

        weights = list(weights or ["normal"] * len(labels))
        label_width = max(
            (text_width(t, LABEL_SIZE, w) for t, w in zip(labels, weights, strict=True)), default=0.0
        )
        self.left = max(1.2, LEFT_MARGIN + label_width + 0.35)
        width = FIG_WIDTH - self.left - RIGHT_MARGIN
        if hi - lo <= 0:
            half = abs(lo) * 0.1 or 1.0
            lo, hi = lo - half, hi + half
        self.per_inch = (hi - lo) / max(width - 2 * pad, 0.5)
        self.x_min = lo - pad * self.per_inch
        self.x_max = hi + pad * self.per_inch
        self.transform: Transform = (
            Affine2D()
            .translate(-self.x_min, 0)
            .scale(1 / self.per_inch, -ROW_HEIGHT)
            .translate(self.left, height - self.top - 0.5 * ROW_HEIGHT)
            + self.fig.dpi_scale_trans
        )
        self._label_transform = blended_transform_factory(self.fig.dpi_scale_trans, self.transform)
        for row, (label, weight) in enumerate(zip(labels, weights, strict=True)):
            self.fig.add_artist(
                GlyphText(
                    LEFT_MARGIN,
                    row,
                    label,
                    fontproperties=font(LABEL_SIZE, weight),
                    color=INK,
                    ha="left",
                    va="center",
                    transform=self._label_transform,
                    parse_math=False,
                )
            )

    def add(self, artist: Artist) -> Artist:
        """Put ``artist``, given in data coordinates, on the chart."""
        artist.set_transform(self.transform)
        self.fig.add_artist(artist)
        return artist

    def inches(self, inches: float) -> float:
        """``inches`` along the value axis, in data units."""
        return inches * self.per_inch

    def text(
        self,
        x: float,
        row: float,
        text: str,
        *,
        colour: str = INK,
        size: float = VALUE_SIZE,
        weight: str = "normal",
        ha: str = "left",
    ) -> None:
        """Write ``text`` at ``(x, row)``, vertically centred on the row."""
        self.add(
            GlyphText(
                x,
                row,
                text,
                fontproperties=font(size, weight),
                color=colour,
                ha=ha,
                va="center",
                parse_math=False,
            )
        )

    def vline(
        self, x: float, colour: str, linewidth: float, first: float, last: float, zorder: float = 1
    ) -> None:
        """A vertical line at ``x`` from row position ``first`` to ``last``."""
        self.add(Line2D([x, x], [first, last], color=colour, linewidth=linewidth, zorder=zorder))

    def axis(self, label: str) -> None:
        """Grid lines, ticks with their values and ``label`` under the rows."""
        top, bottom = -0.5 - 0.1, self.rows - 0.5 + 0.1
        locator = MaxNLocator(nbins=8, steps=[1, 2, 2.5, 5, 10])
        ticks = [t for t in locator.tick_values(self.x_min, self.x_max) if self.x_min <= t <= self.x_max]
        step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
        exponent = math.floor(math.log10(step) + 1e-9)
        quarter = exponent <= 0 and round(step / 10**exponent, 6) == 2.5
        digits = max(0, -exponent) + (1 if quarter else 0)
        below = bottom + 0.08 / ROW_HEIGHT
        self.add(
            LineCollection([[(t, top), (t, bottom)] for t in ticks], colors=SHADE, linewidths=0.8, zorder=0)
        )
        self.add(LineCollection([[(t, bottom), (t, below)] for t in ticks], colors=RULE, linewidths=0.8))
        self.add(Line2D([self.x_min, self.x_max], [bottom, bottom], color=RULE, linewidth=0.8))
        for t in ticks:
            text = f"{0.0 if abs(t) < step * 1e-9 else t:.{digits}f}".replace("-", MINUS)
            self.add(
                GlyphText(
                    t,
                    below,
                    text,
                    fontproperties=font(TICK_SIZE),
                    color=MUTED,
                    ha="center",
                    va="top",
                    parse_math=False,
                )
            )
        self.add(
            GlyphText(
                (self.x_min + self.x_max) / 2,
                below + 0.28 / ROW_HEIGHT,
                label,
                fontproperties=font(LABEL_SIZE),
                color=MUTED,
                ha="center",
                va="top",
                parse_math=False,
            )
        )


def signed_bars(
    title: str,
    lines: Sequence[str],
    rows: Sequence[tuple[str, float]],
    *,
    xlabel: str,
    legend: Sequence[tuple[str, str]],
) -> Figure:
    """Horizontal bars from zero, one per ``(label, value)`` row, each with its value written at its end."""
    values = [value for _, value in rows]
    digits = decimals_for(values)
    numbers = [format_fixed(v, digits, signed=True) for v in values]
    pad = max((text_width(t, VALUE_SIZE) for t in numbers), default=0.0) + GAP + 0.08
    chart = RowChart(
        title,
        lines,
        [label for label, _ in rows],
        lo=min([0.0, *values]),
        hi=max([0.0, *values]),
        pad=pad,
        legend=legend,
    )
    chart.axis(xlabel)
    for row, (value, number) in enumerate(zip(values, numbers, strict=True)):
        bar = Rectangle((0.0, row - 0.3), value, 0.6, facecolor=colour_of(value), edgecolor="none")
        bar.set_gid("bar")
        chart.add(bar)
        chart.text(
            value + chart.inches(-GAP if value < 0 else GAP),
            row,
            number,
            colour=colour_of(value),
            ha="right" if value < 0 else "left",
        )
    chart.vline(0.0, INK, 0.9, -0.5, chart.rows - 0.5, zorder=2)
    return chart.fig
