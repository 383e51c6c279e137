"""Plain-language reasons from attributions, usable as adverse-action reason codes.

For a classifier the reasons are the features that pushed the prediction
*away from the favourable class* (or, without one, towards the explained
class), strongest first; for a regressor, the features that moved the
prediction most, with their direction.
"""

from __future__ import annotations

from typing import Any

from explain_service.registry.schema import Feature

MAX_REASONS = 4


def feature_label(feature: Feature) -> str:
    """``credit_amount`` -> ``Credit amount`` (or the manifest's description)."""
    if feature.description:
        return feature.description
    text = feature.name.replace("_", " ").strip()
    return text[:1].upper() + text[1:]


def _value_text(feature: Feature, value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "missing"
    if feature.kind == "numeric" and isinstance(value, float):
        return f"{value:g}"
    return str(value)


def reasons(
    attributions: dict[str, float],
    instance: dict[str, Any],
    features: tuple[Feature, ...],
    *,
    target: str | None,
    favorable: str | None,
    class_names: tuple[str, ...],
    limit: int = MAX_REASONS,
) -> list[dict[str, Any]]:
    """The top contributing features, each with a sentence.

    ``attributions`` are per-feature contributions to the score of ``target``.
    """
    by_name = {f.name: f for f in features}
    if target is None:
        ranked = sorted(attributions.items(), key=lambda kv: -abs(kv[1]))
        out = []
        for name, value in ranked[:limit]:
            if value == 0:
                continue
            verb = "raised" if value > 0 else "lowered"
            f = by_name[name]
            out.append(
                {
                    "feature": name,
                    "value": instance[name],
                    "contribution": value,
                    "text": f"{feature_label(f)} of {_value_text(f, instance[name])} {verb} the prediction",
                }
            )
        return out
    if favorable is not None and target == favorable:
        sign, outcome = -1.0, f"lowered the likelihood of '{favorable}'"
    elif favorable is not None and len(class_names) == 2:
        sign, outcome = 1.0, f"raised the risk of '{target}'"
    else:
        sign, outcome = 1.0, f"raised the likelihood of '{target}'"
    adverse = [(n, sign * v) for n, v in attributions.items() if sign * v > 0]
    adverse.sort(key=lambda kv: -kv[1])
    result = []
    for name, strength in adverse[:limit]:
        f = by_name[name]
        result.append(
            {
                "feature": name,
                "value": instance[name],
                "contribution": strength,
                "text": f"{feature_label(f)} of {_value_text(f, instance[name])} {outcome}",
            }
        )
    return result
