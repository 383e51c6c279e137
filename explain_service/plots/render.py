"""Plot names, deterministic PNG bytes and a content-addressed cache of rendered plots.

A plot is named in URLs (``/v1/explanations/{id}/plots/{plot}.png``); :data:`PLOTS` maps each name to
the function that draws it and the explanation method it needs. Errors, both 404 to a client::

    explain_service.errors.NotFound
    ├── UnknownPlot(plot)                 the name is not in PLOTS
    └── PlotNotAvailable(plot, method)    the explanation has no result for the method the plot draws

A cache that cannot be read or written (a plots directory that is missing, read-only or on a full disk)
costs speed, not answers: the plot is rendered for the request, served, and a warning logged.

A rendered PNG is stored under the sha256 of its plot name, :data:`RENDERER_VERSION` and the canonical
JSON of its inputs, so a cached file is valid for as long as the inputs and the drawing code are:
bump :data:`RENDERER_VERSION` whenever a change to the drawing code changes what a plot looks like.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import struct
import tempfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from explain_service.errors import NotFound
from explain_service.plots._style import DPI
from explain_service.plots.bar import bar
from explain_service.plots.counterfactual import counterfactual_changes
from explain_service.plots.eviction import SizeCap
from explain_service.plots.lime import lime_weights
from explain_service.plots.waterfall import waterfall

RENDERER_VERSION = "1"
PNG_COMPRESS_LEVEL = 3
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"IEND\xaeB`\x82"

log = logging.getLogger(__name__)

PlotFunction = Callable[[Mapping[str, Any], Mapping[str, Any], Mapping[str, Any]], Figure]


class UnknownPlot(NotFound):
    """No plot has this name."""

    def __init__(self, plot: str) -> None:
        known = ", ".join(sorted(PLOTS))
        super().__init__(
            f"Unknown plot {plot!r}; known plots: {known}", {"plot": [f"must be one of: {known}"]}
        )
        self.plot = plot


class PlotNotAvailable(NotFound):
    """The plot exists, but the explanation holds no result of the method it draws."""

    def __init__(self, plot: str, method: str) -> None:
        super().__init__(
            f"Plot {plot!r} needs a {method!r} explanation, which this explanation does not have",
            {"plot": [f"needs method {method!r}"]},
        )
        self.plot = plot
        self.method = method


@dataclass(frozen=True)
class PlotSpec:
    """A named plot: the explanation method it needs and the function that draws it."""

    name: str
    method: str
    draw: PlotFunction
    description: str


PLOTS: dict[str, PlotSpec] = {
    spec.name: spec
    for spec in (
        PlotSpec("shap_waterfall", "shap", waterfall, "SHAP values from the base value to the model output"),
        PlotSpec("shap_bar", "shap", bar, "SHAP values as bars from zero"),
        PlotSpec(
            "lime_weights", "lime", lime_weights, "LIME per-feature contributions with fit, seed and samples"
        ),
        PlotSpec(
            "counterfactual_changes", "counterfactual", counterfactual_changes, "changes per counterfactual"
        ),
    )
}


def plot_spec(name: str, explanation: Mapping[str, Any]) -> PlotSpec:
    """The plot called ``name``, checked to be drawable from ``explanation``.

    Raises
    ------
    UnknownPlot
        If no plot is called ``name``.
    PlotNotAvailable
        If ``explanation`` has no result of the method the plot needs.
    """
    spec = PLOTS.get(name)
    if spec is None:
        raise UnknownPlot(name)
    if explanation.get(spec.method) is None:
        raise PlotNotAvailable(name, spec.method)
    return spec


def available_plots(explanation: Mapping[str, Any]) -> list[str]:
    """Names of the plots that can be drawn from ``explanation``, in :data:`PLOTS` order."""
    return [name for name, spec in PLOTS.items() if explanation.get(spec.method) is not None]


def draw_plot(
    name: str, explanation: Mapping[str, Any], instance: Mapping[str, Any], model: Mapping[str, Any]
) -> Figure:
    """Draw the plot called ``name`` (see :func:`plot_spec` for the errors)."""
    return plot_spec(name, explanation).draw(explanation, instance, model)


def render_png(fig: Figure) -> bytes:
    """``fig`` drawn on the Agg canvas at :data:`DPI`, as PNG bytes; the same figure gives the same bytes.

    The file holds the opaque RGB image, its resolution and nothing else: no software name or date
    that could vary between runs.
    """
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    if fig.dpi != DPI:
        fig.set_dpi(DPI)
    canvas.draw()
    width, height = canvas.get_width_height(physical=True)
    rgb = Image.frombuffer("RGBA", (width, height), canvas.buffer_rgba(), "raw", "RGBA", 0, 1).convert("RGB")
    return encode_png(np.frombuffer(rgb.tobytes(), dtype=np.uint8).reshape(height, width, 3), DPI)


def encode_png(rgb: np.ndarray, dpi: float) -> bytes:
    """An 8-bit RGB image of shape ``(height, width, 3)`` as PNG bytes with a ``dpi`` resolution.

    Rows are stored unfiltered: plots are mostly flat colour, where filtering gains little and
    costs more time than the whole compression.
    """
    height, width, _ = rgb.shape
    rows = np.zeros((height, 1 + 3 * width), dtype=np.uint8)
    rows[:, 1:] = rgb.reshape(height, 3 * width)
    per_metre = round(dpi / 0.0254)
    return b"".join(
        (
            _PNG_SIGNATURE,
            _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)),
            _chunk(b"pHYs", struct.pack(">IIB", per_metre, per_metre, 1)),
            _chunk(b"IDAT", zlib.compress(rows, PNG_COMPRESS_LEVEL)),
            _chunk(b"IEND", b""),
        )
    )


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def plot_key(
    name: str, explanation: Mapping[str, Any], instance: Mapping[str, Any], model: Mapping[str, Any]
) -> str:
    """Hex sha256 naming the PNG of plot ``name`` drawn from exactly these inputs."""
    return plot_keys([name], explanation, instance, model)[name]


def plot_keys(
    names: Iterable[str],
    explanation: Mapping[str, Any],
    instance: Mapping[str, Any],
    model: Mapping[str, Any],
) -> dict[str, str]:
    """:func:`plot_key` of each plot in ``names``, serialising the shared inputs once.

    The key hashes the sorted-key JSON of ``{"explanation", "instance", "model", "plot", "renderer"}``;
    the first three are the same for every plot of a record, so their JSON is made once and spliced.
    """
    option = orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY
    shared = (
        b'{"explanation":'
        + orjson.dumps(dict(explanation), option=option)
        + b',"instance":'
        + orjson.dumps(dict(instance), option=option)
        + b',"model":'
        + orjson.dumps(dict(model), option=option)
        + b',"plot":'
    )
    renderer = b',"renderer":' + orjson.dumps(RENDERER_VERSION) + b"}"
    return {name: hashlib.sha256(shared + orjson.dumps(name) + renderer).hexdigest() for name in names}


class PlotCache:
    """Rendered plots stored as ``<directory>/<key[:2]>/<key>.png``.

    A key is rendered at most once: a per-key file lock (one of 256 lock files under ``.locks``) makes
    concurrent processes and threads wait for the first renderer, and files appear atomically
    (written to a temporary file, flushed to disk, then renamed into place), so readers never see part
    of a PNG. ``max_bytes`` (0: no cap) bounds the cache; the least recently used plots go first
    (:mod:`.eviction`).
    """

    def __init__(self, directory: str | os.PathLike[str], max_bytes: int = 0) -> None:
        self.directory = Path(directory)
        self.cap = SizeCap(self.directory, max_bytes)

    def path(self, key: str) -> Path:
        """Where the PNG of ``key`` is stored."""
        return self.directory / key[:2] / f"{key}.png"

    def get(self, key: str) -> bytes | None:
        """The stored PNG of ``key``, or None if there is none (or only a damaged or unreadable one).

        A hit marks the file as used now (its modification time), for the size cap's eviction order.
        """
        path = self.path(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("plot cache: cannot read %s: %s", path, exc)
            return None
        if not (data.startswith(_PNG_SIGNATURE) and data.endswith(_PNG_END)):
            return None
        self.cap.used(path)
        return data

    def get_or_render(
        self, name: str, explanation: Mapping[str, Any], instance: Mapping[str, Any], model: Mapping[str, Any]
    ) -> tuple[str, bytes, bool]:
        """``(key, png, was_cached)`` of plot ``name``, rendering and storing it on first use.

        Raises
        ------
        UnknownPlot, PlotNotAvailable
            As :func:`plot_spec`, before anything is read or rendered.
        """
        spec = plot_spec(name, explanation)
        key = plot_key(name, explanation, instance, model)
        data = self.get(key)
        if data is not None:
            return key, data, True
        with self._locked(key) as locked:
            data = self.get(key) if locked else None
            if data is not None:
                return key, data, True
            data = render_png(spec.draw(explanation, instance, model))
            if locked:
                self._store(key, data)
        return key, data, False

    @contextmanager
    def _locked(self, key: str) -> Iterator[bool]:
        """Hold the lock of ``key``; yields False (and locks nothing) when the cache cannot be written."""
        locks = self.directory / ".locks"
        try:
            locks.mkdir(parents=True, exist_ok=True)
            handle = open(locks / f"{key[:2]}.lock", "a+b")  # noqa: SIM115 (entered by the with below)
        except OSError as exc:
            log.warning("plot cache %s is not writable (%s); serving plots uncached", self.directory, exc)
            handle = None
        if handle is None:
            yield False
            return
        with handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield True
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _store(self, key: str, data: bytes) -> None:
        """Store ``data`` as the PNG of ``key``; a failure to write is logged, never raised."""
        path = self.path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{key}.", suffix=".tmp")
        except OSError as exc:
            log.warning("plot cache: cannot store %s (%s); served uncached", path, exc)
            return
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(temporary, 0o644)
            os.replace(temporary, path)
            self.cap.stored(path, len(data))
        except OSError as exc:
            Path(temporary).unlink(missing_ok=True)
            log.warning("plot cache: cannot store %s (%s); served uncached", path, exc)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
