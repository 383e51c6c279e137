"""Text drawn from a cache of rendered glyphs.

matplotlib 3.11 shapes a string and renders each of its glyphs afresh every time, and does so twice
per string (once to measure it, once to draw it): about 2 ms for a 25-character label, most of the
time a small plot takes. :class:`GlyphText` is an ordinary ``Text`` whose ``draw`` on the Agg canvas
instead places hinted glyph bitmaps, rendered once per process and font size, on whole pixels along
their hinted advances and kerning, and draws the string as one image. Its ink lands within a pixel
or two of where the usual path puts it; hinted advances make a string up to ~3% wider.

Strings that need shaping (scripts other than Latin, Greek and Cyrillic, or characters the font
lacks), rotated or multi-line text, and every other renderer (PDF, SVG, ...) take the usual path.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.backends.backend_agg import RendererAgg
from matplotlib.colors import to_rgba
from matplotlib.font_manager import FontProperties, findfont, get_font
from matplotlib.ft2font import Kerning, LoadFlags
from matplotlib.text import Text

if TYPE_CHECKING:
    from matplotlib.ft2font import GlyphIndexType

_FLAGS = LoadFlags.FORCE_AUTOHINT


@dataclass(frozen=True)
class _Glyph:
    """A rendered glyph: coverage bitmap, its offsets from the pen position and the advance."""

    index: GlyphIndexType
    bitmap: np.ndarray
    left: int  # columns from the pen position to the bitmap's first column
    top: int  # rows from the bitmap's first row down to the baseline
    advance: float


@dataclass(frozen=True)
class _Face:
    """A font file at one size: where the box of a line of text lies around its baseline."""

    path: str
    size: float
    dpi: float
    ascent: int
    descent: int


def _simple(char: str) -> bool:
    """Whether ``char`` can be laid out glyph by glyph, without shaping."""
    code = ord(char)
    return (code < 0x0300 or 0x0370 <= code < 0x0530 or 0x1E00 <= code < 0x2C00) and code != 0xAD


@lru_cache(maxsize=256)
def _face(family: tuple[str, ...], weight: Any, style: Any, size: float, dpi: float) -> _Face:
    prop = FontProperties(family=list(family), weight=weight, style=style, size=size)
    path = findfont(prop)
    ascent = _glyph(path, size, dpi, "l").top
    p = _glyph(path, size, dpi, "p")
    return _Face(path, size, dpi, ascent, p.bitmap.shape[0] - p.top)


@lru_cache(maxsize=16384)
def _glyph(path: str, size: float, dpi: float, char: str) -> _Glyph:
    font = get_font(path)
    font.set_size(size, dpi)
    glyph = font.load_char(ord(char), flags=_FLAGS)
    bearing = glyph.horiBearingX // 64
    pad = max(0, -bearing)
    height = -(-glyph.height // 64)
    width = pad + max(0, bearing) + -(-glyph.width // 64) + 1
    bitmap = np.zeros((max(height, 1), max(width, 1)), dtype=np.uint8)
    if glyph.width and glyph.height:
        font.draw_glyph_to_bitmap(bitmap, pad, 0, glyph)
    return _Glyph(
        index=font.get_char_index(ord(char)),
        bitmap=bitmap,
        left=-pad,
        top=glyph.horiBearingY // 64,
        advance=round(glyph.horiAdvance / 64),
    )


@lru_cache(maxsize=16384)
def _kerning(path: str, size: float, dpi: float, left: GlyphIndexType, right: GlyphIndexType) -> int:
    font = get_font(path)
    font.set_size(size, dpi)
    return round(font.get_kerning(left, right, Kerning.DEFAULT) / 64)


def _layout(face: _Face, text: str) -> list[tuple[float, _Glyph]] | None:
    """Pen position and glyph of each character, or None if the text needs the usual path."""
    placed = []
    pen = 0.0
    previous: _Glyph | None = None
    for char in text:
        if not _simple(char):
            return None
        glyph = _glyph(face.path, face.size, face.dpi, char)
        if glyph.index == 0 and char not in " \t":
            return None
        if previous is not None:
            pen += _kerning(face.path, face.size, face.dpi, previous.index, glyph.index)
        placed.append((pen, glyph))
        pen += glyph.advance
        previous = glyph
    return placed


def advance_width(prop: FontProperties, text: str, dpi: float) -> float | None:
    """Width in pixels of ``text`` as :class:`GlyphText` lays it out, or None if it would not."""
    face = _face_of(prop, dpi)
    placed = _layout(face, text)
    if placed is None:
        return None
    if not placed:
        return 0.0
    pen, glyph = placed[-1]
    return pen + glyph.advance


def _face_of(prop: FontProperties, dpi: float) -> _Face:
    return _face(
        tuple(prop.get_family()), prop.get_weight(), prop.get_style(), prop.get_size_in_points(), dpi
    )


class GlyphText(Text):
    """A ``Text`` that the Agg canvas draws from cached glyphs; see the module docstring."""

    def draw(self, renderer: Any) -> None:
        text = self.get_text()
        if (
            not isinstance(renderer, RendererAgg)
            or not self.get_visible()
            or not text
            or "\n" in text
            or self.get_rotation() != 0
            or self.get_usetex()
            or (self.get_parse_math() and "$" in text)
            or self.get_bbox_patch() is not None
            or self.get_path_effects()
            or (self.get_clip_on() and self.get_clip_path() is not None)
            or not self.get_antialiased()
            or self.get_verticalalignment() not in _BASELINE
        ):
            super().draw(renderer)
            return
        face = _face_of(self.get_fontproperties(), renderer.dpi)
        placed = _layout(face, text)
        if placed is None:
            super().draw(renderer)
            return
        self._renderer = renderer
        x, y = self.get_transform().transform(self.get_unitless_position())
        if not (np.isfinite(x) and np.isfinite(y)):
            return

        width = placed[-1][0] + placed[-1][1].advance
        left = x - {"left": 0.0, "center": width / 2, "right": width}[self.get_horizontalalignment()]
        # Glyphs sit on whole pixels: the pen position of each is rounded from the text's left edge.
        columns = [round(left + pen) + glyph.left for pen, glyph in placed]
        over = max(face.ascent, *(g.top for _, g in placed))
        under = max(face.descent, *(g.bitmap.shape[0] - g.top for _, g in placed))
        first = min(columns)
        last = max(c + g.bitmap.shape[1] for c, (_, g) in zip(columns, placed, strict=True))
        coverage = np.zeros((over + under, last - first), dtype=np.uint8)
        for column, (_, glyph) in zip(columns, placed, strict=True):
            rows, cols = glyph.bitmap.shape
            row, col = over - glyph.top, column - first
            np.maximum(
                coverage[row : row + rows, col : col + cols],
                glyph.bitmap,
                out=coverage[row : row + rows, col : col + cols],
            )

        baseline = y - _BASELINE[self.get_verticalalignment()](face)
        red, green, blue, alpha = to_rgba(self.get_color(), self.get_alpha())
        image = np.empty((*coverage.shape, 4), dtype=np.uint8)
        image[..., 0] = round(red * 255)
        image[..., 1] = round(green * 255)
        image[..., 2] = round(blue * 255)
        # draw_image takes the bottom row first.
        image[..., 3] = coverage[::-1] if alpha == 1 else (coverage[::-1] * alpha).astype(np.uint8)

        renderer.open_group("text", self.get_gid())
        gc = renderer.new_gc()
        if self.get_clip_on() and (box := self.get_clip_box()) is not None:
            gc.set_clip_rectangle(box)
        renderer.draw_image(gc, first, round(baseline) - under, image)
        gc.restore()
        renderer.close_group("text")
        self.stale = False


# Offset from the anchor point up to the baseline for each vertical alignment, as matplotlib
# computes it from the box of a line of text ("lp" tall).
_BASELINE = {
    "baseline": lambda face: 0.0,
    "center": lambda face: (face.ascent - face.descent) / 2,
    "top": lambda face: float(face.ascent),
    "bottom": lambda face: -float(face.descent),
}
