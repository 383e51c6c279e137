"""Global importance: each feature's mean |SHAP| over a reference set, as a bar, largest on top."""

from __future__ import annotations

from collections.abc import Mapping

from matplotlib.figure import Figure

from explain_service.plots._frame import signed_bars
from explain_service.plots._style import count, model_text


def importance_bars(
    mean_abs: Mapping[str, float], model: Mapping[str, str], *, reference: str, rows: int
) -> Figure:
    """Draw ``{feature: mean |SHAP|}`` as horizontal bars, largest on top.

    Parameters
    ----------
    mean_abs : mapping
        Mean absolute SHAP value per original input feature.
    model : mapping
        ``{"name", "version", "sha256"}`` of the model.
    reference, rows : str, int
        What the means are over (``"background"``) and how many rows, for the header.
    """
    ranked = sorted(mean_abs.items(), key=lambda kv: (-kv[1], kv[0]))
    lines = [
        f"Mean |SHAP value| over {count(rows, 'row')} of the {reference}",
        "How much each feature moves the model's output on average, whatever the direction",
    ]
    return signed_bars(
        f"Global importance \u2014 {model_text(model)}",
        lines,
        ranked,
        xlabel="mean |SHAP value|",
        legend=[],
    )
