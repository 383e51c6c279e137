"""Shared look of every plot: colours, fonts, number formats, text placement and the header.

Plots are laid out in inches from the advance widths of their text rather than by a layout engine:
it is faster, and the same input always gives the same layout. Every artist gets its font, size and
colour explicitly, so changes to matplotlib's global settings elsewhere in the process do not change
our images.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties, findfont, get_font
from matplotlib.ft2font import LoadFlags

from explain_service.counts import count as count  # re-exported: the plots name rows and features
from explain_service.plots._text import GlyphText, advance_width

DPI = 100
FIG_WIDTH = 9.0
FONT_FAMILY = "DejaVu Sans"

# Okabe-Ito colours stay distinguishable for the common colour-vision deficiencies.
UP = "#d55e00"
DOWN = "#0072b2"
NEUTRAL = "#8c8c8c"
INK = "#1b1b1b"
MUTED = "#5c5c5c"
RULE = "#d0d0d0"
SHADE = "#f2f2f2"

TITLE_SIZE = 13.0
SUBTITLE_SIZE = 10.0
LABEL_SIZE = 10.0
VALUE_SIZE = 9.0
TICK_SIZE = 9.0

MAX_NAME_CHARS = 28
MAX_VALUE_CHARS = 22
MINUS = "\N{MINUS SIGN}"

OUTPUT_SPACES = {"log_odds": "log-odds", "probability": "probability", "raw": "raw output"}


@lru_cache(maxsize=32)
def font(
    size: float, weight: str = "normal", style: Literal["normal", "italic"] = "normal"
) -> FontProperties:
    """The one font family every text uses, at ``size`` points."""
    return FontProperties(family=FONT_FAMILY, size=size, weight=weight, style=style)


def new_figure(height: float, width: float = FIG_WIDTH) -> Figure:
    """An empty white figure of ``width`` x ``height`` inches on an Agg canvas."""
    fig = Figure(figsize=(width, height), dpi=DPI, facecolor="white")
    FigureCanvasAgg(fig)
    return fig


def text_width(text: str, size: float, weight: str = "normal") -> float:
    """Width of ``text`` in inches as it will be drawn, from glyph advances (no text layout needed)."""
    prop = font(size, weight)
    width = advance_width(prop, text, DPI)
    if width is None:  # drawn by matplotlib's shaping path; its advances are close to these
        width = sum(_linear_advance(prop, char) for char in text)
    return width / DPI


@lru_cache(maxsize=4096)
def _linear_advance(prop: FontProperties, char: str) -> float:
    face = get_font(findfont(prop))
    face.set_size(prop.get_size_in_points(), DPI)
    return face.load_char(ord(char), flags=LoadFlags.NO_HINTING).linearHoriAdvance / 65536


def place_text(
    fig: Figure,
    x: float,
    y: float,
    text: str,
    prop: FontProperties,
    colour: str,
    *,
    ha: str = "left",
    va: str = "center",
) -> GlyphText:
    """Put ``text`` at ``x`` inches from the left and ``y`` inches from the top of ``fig``."""
    artist = GlyphText(
        x,
        fig.get_size_inches()[1] - y,
        text,
        fontproperties=prop,
        color=colour,
        ha=ha,
        va=va,
        transform=fig.dpi_scale_trans,
        parse_math=False,
    )
    fig.add_artist(artist)
    return artist


def fit_text(text: str, size: float, max_width: float, weight: str = "normal") -> str:
    """``text`` shortened with an ellipsis so that it is at most ``max_width`` inches wide."""
    if text_width(text, size, weight) <= max_width:
        return text
    lo, hi = 0, len(text)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if text_width(text[:mid].rstrip() + "\u2026", size, weight) <= max_width:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo].rstrip() + "\u2026"


def truncate(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, the cut marked by an ellipsis."""
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "\u2026"


def format_number(x: float, significant: int = 4) -> str:
    """A number with ``significant`` digits, fixed-point where readable, and a true minus sign."""
    if x == 0 or not math.isfinite(x):
        return "0" if x == 0 else str(x)
    magnitude = math.floor(math.log10(abs(x)))
    if -4 <= magnitude < 6:
        grouping = "," if abs(x) >= 10_000 else ""
        text = f"{x:{grouping}.{max(0, significant - 1 - magnitude)}f}"
        if "." in text:
            text = text.rstrip("0").rstrip(".")
    else:
        text = f"{x:.{significant - 1}e}"
    return text.replace("-", MINUS)


def decimals_for(values: Sequence[float], significant: int = 3) -> int:
    """Decimal places that show the largest of ``values`` with ``significant`` digits."""
    largest = max((abs(v) for v in values if math.isfinite(v)), default=0.0)
    if largest == 0:
        return 2
    return min(6, max(0, significant - 1 - math.floor(math.log10(largest))))


def format_fixed(x: float, decimals: int, signed: bool = False) -> str:
    """``x`` with ``decimals`` places; a non-zero value that would print as zero keeps 2 digits."""
    sign = "+" if signed and x != 0 else ""
    grouping = "," if abs(x) >= 10_000 else ""
    text = f"{x:{sign}{grouping}.{decimals}f}"
    if x != 0 and float(text.replace(",", "")) == 0:
        text = f"{x:{sign}.2g}"
    return text.replace("-", MINUS)


def format_feature_value(value: Any) -> str:
    """A feature value as a reviewer reads it: ``48``, ``0.1235``, ``radio/TV``, ``missing``."""
    if value is None:
        return "missing"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "missing"
        if value.is_integer() and abs(value) < 1e15:
            return format_feature_value(int(value))
        return format_number(value)
    return truncate(str(value), MAX_VALUE_CHARS)


def feature_label(name: str, instance: Mapping[str, Any]) -> str:
    """``"name = value"`` for a feature of ``instance``; just the name if the row lacks it."""
    short = truncate(name, MAX_NAME_CHARS)
    if name not in instance:
        return short
    return f"{short} = {format_feature_value(instance[name])}"


def model_text(model: Mapping[str, Any]) -> str:
    """``"german-credit v1"``."""
    return f"{truncate(str(model.get('name', 'model')), 40)} v{model.get('version', '?')}"


def output_space(output: Any) -> str:
    """Reader's name of an output space: ``log-odds``, ``probability`` or ``raw output``."""
    return OUTPUT_SPACES.get(str(output), str(output)) if output else OUTPUT_SPACES["raw"]


def target_text(target: Any, prediction: Mapping[str, Any]) -> str:
    """How the explained output is named: ``class \u2018bad\u2019`` or ``the predicted value``."""
    if target is None or "value" in prediction:
        return "the predicted value"
    return f"class \u2018{truncate(str(target), 30)}\u2019"


def prediction_text(prediction: Mapping[str, Any], target: Any = None) -> str:
    """``"bad (P(bad) = 0.71)"`` for a classifier, ``"value 151.3"`` for a regressor."""
    if "value" in prediction:
        return f"value {format_number(float(prediction['value']))}"
    label = prediction.get("label")
    probabilities = prediction.get("probabilities") or {}
    shown = target if target in probabilities else label
    text = truncate(str(label), 30)
    if shown in probabilities:
        text += f" (P({truncate(str(shown), 30)}) = {float(probabilities[shown]):.2f})"
    return text


@dataclass(frozen=True)
class Ranked:
    """Features ordered by |value|, with those beyond ``max_display`` folded into one row."""

    items: list[tuple[str, float]]
    other_count: int
    other_sum: float


def rank(values: Mapping[str, float], max_display: int) -> Ranked:
    """Sort by decreasing |value| (ties by name, so dict order never matters) and fold the tail."""
    if max_display < 1:
        raise ValueError(f"max_display must be at least 1, got {max_display}")
    ordered = sorted(((str(k), float(v)) for k, v in values.items()), key=lambda kv: (-abs(kv[1]), kv[0]))
    if len(ordered) <= max_display:
        return Ranked(ordered, 0, 0.0)
    shown, rest = ordered[: max_display - 1], ordered[max_display - 1 :]
    return Ranked(shown, len(rest), math.fsum(v for _, v in rest))


def colour_of(value: float) -> str:
    """Colour of a contribution: up, down or neutral for exactly zero."""
    return UP if value > 0 else DOWN if value < 0 else NEUTRAL


def header_height(n_lines: int) -> float:
    """Height in inches that :func:`draw_header` uses for a title and ``n_lines`` subtitle lines."""
    return 0.22 + 0.32 + 0.24 * n_lines + 0.06


def draw_header(fig: Figure, title: str, lines: Sequence[str]) -> None:
    """Title and subtitle lines at the top left, in :func:`header_height` inches."""
    room = fig.get_size_inches()[0] - 0.5
    place_text(
        fig, 0.25, 0.22, fit_text(title, TITLE_SIZE, room, "bold"), font(TITLE_SIZE, "bold"), INK, va="top"
    )
    for i, line in enumerate(lines):
        place_text(
            fig,
            0.25,
            0.54 + 0.24 * i,
            fit_text(line, SUBTITLE_SIZE, room),
            font(SUBTITLE_SIZE),
            MUTED,
            va="top",
        )


def draw_legend(fig: Figure, y: float, entries: Sequence[tuple[str, str]]) -> None:
    """Coloured ``(label, colour)`` keys on one line, right-aligned, ``y`` inches from the top."""
    x = fig.get_size_inches()[0] - 0.25
    for label, colour in reversed(entries):
        text = "\u25a0 " + label
        place_text(fig, x, y, text, font(VALUE_SIZE), colour, ha="right", va="top")
        x -= text_width(text, VALUE_SIZE) + 0.25
