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
    """The manifest's description of ``feature`` if it has one, else its name as registered.

    Names are not re-cased: ``bmi`` stays ``bmi`` (not ``Bmi``), and the sentence names the
    same feature as the ``feature`` field and the plots beside it.
    """
    return feature.description or feature.name


def _value_text(feature: Feature, value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "missing"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if feature.kind == "numeric" and isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _sentence(feature: Feature, value: Any, outcome: str) -> str:
    """``"duration of 48 raised ..."`` for a quantity, ``"checking_account: little raised ..."`` otherwise.

    "of" reads naturally only before an amount; a category, a yes/no or a missing value is
    stated after a colon instead ("checking_account: little", not "checking_account of little").
    """
    text = _value_text(feature, value)
    if feature.kind in ("numeric", "integer") and text != "missing":
        return f"{feature_label(feature)} of {text} {outcome}"
    return f"{feature_label(feature)}: {text} {outcome}"


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
                    "text": _sentence(f, instance[name], f"{verb} the prediction"),
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
                "text": _sentence(f, instance[name], outcome),
            }
        )
    return result
