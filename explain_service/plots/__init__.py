"""Plots of one explanation, drawn on matplotlib ``Figure`` objects with the Agg canvas.

Each module draws one plot from the JSON shapes of an explanation, its input row and its model;
:mod:`explain_service.plots.render` names the plots, turns figures into deterministic PNG bytes and
caches them by content. Nothing here knows about Flask.
"""

from __future__ import annotations

from explain_service.plots.bar import bar
from explain_service.plots.counterfactual import counterfactual_changes
from explain_service.plots.lime import lime_weights
from explain_service.plots.render import (
    PLOTS,
    RENDERER_VERSION,
    PlotCache,
    PlotNotAvailable,
    PlotSpec,
    UnknownPlot,
    available_plots,
    draw_plot,
    plot_key,
    plot_keys,
    plot_spec,
    render_png,
)
from explain_service.plots.waterfall import waterfall

__all__ = [
    "PLOTS",
    "RENDERER_VERSION",
    "PlotCache",
    "PlotNotAvailable",
    "PlotSpec",
    "UnknownPlot",
    "available_plots",
    "bar",
    "counterfactual_changes",
    "draw_plot",
    "lime_weights",
    "plot_key",
    "plot_keys",
    "plot_spec",
    "render_png",
    "waterfall",
]
