"""Numbers and model terms in plain words, for reviewers who are not data scientists.

The pages never show "log-odds", "f(x)" or "E[f(X)]" without one of these sentences beside them.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

OUTPUT_SPACES = {
    "log_odds": (
        "log-odds",
        "Contributions are in log-odds, the logarithm of the odds of {target}: +0.7 roughly doubles the "
        "odds, -0.7 roughly halves them. Positive values pushed the case towards {target}, negative "
        "values away from it.",
    ),
    "probability": (
        "probability",
        "Contributions are in probability: +0.10 means the feature added ten percentage points to the "
        "chance of {target}.",
    ),
    "raw": (
        "the model's own units",
        "Contributions are in the model's own output units: each one moved the predicted value up "
        "(positive) or down (negative) by that much.",
    ),
}

PLOT_LEGEND = (
    "In the waterfall, E[f(X)] is the model's average score over the reference (background) data and "
    "f(x) its score for this case; each bar is one feature's push from the average to this case."
)

FLAG_TEXT = {
    "additivity_residual": "The SHAP values do not add up to the model's output within the accuracy bar.",
    "low_lime_r2": "LIME's local approximation explains less than half of the model's behaviour here "
    "(R² below 0.5): read its weights with care.",
    "counterfactual_budget": "The search for counterfactuals ran out of time; better ones may exist.",
    "out_of_range": "An input lies outside the range seen when the model was registered.",
}

RULE_TEXT = {
    "probability_band": "the probability is close to the decision threshold",
    "out_of_range": "an input lies outside the range the model was built on",
    "low_quality": "the explanation's quality is low",
    "sensitive_feature": "a sensitive feature is among the top reasons",
}


def percent(p: Any, digits: int = 1) -> str:
    """0.93395 -> '93.4%'."""
    if not isinstance(p, int | float) or not math.isfinite(p):
        return "—"
    return f"{100 * p:.{digits}f}%"


def figures(value: float, digits: int = 4, *, sign: bool = False) -> str:
    """``value`` with ``digits`` significant digits, fixed-point where readable.

    0.123456789012 -> '0.1235', 22.0682 -> '22.07', 12345.6 -> '12,346', 0.0000123 -> '1.23e-05';
    with ``sign``, a non-zero value shows its sign ('+0.1235', '-4.628').
    """
    if value == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(value)))
    plus = "+" if sign else ""
    if -4 <= magnitude < 15:
        text = f"{value:{plus},.{max(0, digits - 1 - magnitude)}f}"
        return text.rstrip("0").rstrip(".") if "." in text else text
    return f"{value:{plus}.{digits - 1}e}"


def number(value: Any, digits: int = 4) -> str:
    """A number with ``digits`` significant digits; anything else as text."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "—" if value is None else str(value)
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        return str(value)
    return f"{value:.{digits}g}"


def signed(value: Any, digits: int = 4) -> str:
    """A contribution with ``digits`` significant digits and its sign: '+0.7341', '-22.07'."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "—"
    if not math.isfinite(value):
        return str(value)
    return figures(float(value), digits, sign=True)


def feature_value(raw: Any, digits: int = 4) -> str:
    """A feature value as a reviewer reads it: '48', '0.0617', 'little', 'yes', 'missing'."""
    if raw is None or (isinstance(raw, float) and math.isnan(raw)):
        return "missing"
    if isinstance(raw, bool):
        return "yes" if raw else "no"
    if isinstance(raw, float) and math.isfinite(raw):
        return str(int(raw)) if raw.is_integer() and abs(raw) < 1e15 else figures(raw, digits)
    return str(raw)


def when(moment: datetime | None) -> str:
    """An aware time as 'YYYY-MM-DD HH:MM:SS UTC'."""
    return "—" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def output_space(output: str | None, target: str | None) -> tuple[str, str]:
    """The name of a SHAP output space and the sentence that explains it."""
    name, line = OUTPUT_SPACES.get(output or "raw", OUTPUT_SPACES["raw"])
    return name, line.format(target=f"'{target}'" if target else "the predicted value")


def aim(target: str | None) -> str:
    """What contributions push towards: a class in quotes, or a regression's predicted value."""
    return f"'{target}'" if target is not None else "the predicted value"


def effect(value: Any, target: str | None) -> str:
    """A contribution's direction in words: towards / away from a class, or raised / lowered a value."""
    v = float(value)
    if target is None:
        return (
            "raised the predicted value" if v > 0 else "lowered the predicted value" if v < 0 else "no effect"
        )
    return (
        f"towards '{target}'" if v > 0 else f"away from '{target}'" if v < 0 else f"no effect on '{target}'"
    )


def decision_sentence(prediction: dict[str, Any], favorable: str | None) -> str:
    """'The model decided 'bad' with a probability of 93.4% (the favourable outcome is 'good').'"""
    if "label" not in prediction:
        return f"The model predicted the value {number(prediction.get('value'))}."
    label = prediction["label"]
    p = (prediction.get("probabilities") or {}).get(label)
    sentence = f"The model decided '{label}' with a probability of {percent(p)}"
    if favorable is not None and favorable != label:
        sentence += f"; the favourable outcome, '{favorable}', had {percent(_p(prediction, favorable))}"
    elif favorable == label:
        sentence += " (the favourable outcome)"
    return sentence + "."


def _p(prediction: dict[str, Any], name: str) -> Any:
    return (prediction.get("probabilities") or {}).get(name)


def lime_fit(score: Any) -> str:
    """LIME's local R² in words."""
    if not isinstance(score, int | float):
        return "unknown"
    share = percent(score, 0)
    quality = "good" if score >= 0.8 else "fair" if score >= 0.5 else "poor"
    return f"{quality}: the local approximation explains {share} of the model's behaviour around this case"


def constraint_text(constraint: Any) -> str | None:
    """How a counterfactual may change a feature, when it may not change freely."""
    if constraint is None:
        return None
    if not constraint.mutable:
        return "frozen (never changed)"
    if constraint.direction == "increase":
        return "one-way: may only increase"
    if constraint.direction == "decrease":
        return "one-way: may only decrease"
    return None
