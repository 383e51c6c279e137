"""Routing to a human: per-model rules that mark an explanation ``review_required``.

The rules live in the manifest (``register_model(..., review_rules={...})``, stored with every default
filled in; a manifest from before them gets :data:`DEFAULTS`). Each rule is switched off by ``null``,
``false`` or ``0``::

    {"probability_band": 0.1,        classifiers: the two most probable classes are within 2 x band of
                                     each other (binary: P(class) within 0.4..0.6 of the 0.5 threshold)
     "out_of_range": true,           an input outside the [min, max] seen at registration
     "low_quality": true,            the explanation raised a quality flag: SHAP additivity residual over
                                     tolerance, LIME R² < 0.5, counterfactual budget exhausted
                                     (:mod:`explain_service.quality`)
     "sensitive_in_top": 3,          a sensitive feature is among the first N reasons
     "sensitive_features": []}       sensitive features, besides the manifest's own ``sensitive`` field

An ``:explain`` answer carries ``"review": {"required": bool, "rules": [names of the rules that fired]}``
per explanation (rule names as the keys above, ``sensitive_in_top`` answered as ``sensitive_feature``);
the audit record keeps it, and such records wait in the reviewers' queue.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from explain_service.quality import EXPLANATION_QUALITY, quality_flags

DEFAULTS: dict[str, Any] = {
    "probability_band": 0.1,
    "out_of_range": True,
    "low_quality": True,
    "sensitive_in_top": 3,
    "sensitive_features": [],
}
RULE_NAMES = ("probability_band", "out_of_range", "low_quality", "sensitive_feature")


@dataclass(frozen=True)
class ReviewRules:
    """A model's routing rules (see the module docstring); falsy values switch a rule off."""

    probability_band: float | None = DEFAULTS["probability_band"]
    out_of_range: bool = True
    low_quality: bool = True
    sensitive_in_top: int | None = DEFAULTS["sensitive_in_top"]
    sensitive_features: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, features: tuple[str, ...] = ()) -> ReviewRules:
        """Rules from a manifest or a registration; ValueError names what is wrong.

        ``features`` (the model's feature names), when given, must include every sensitive feature.
        """
        given = dict(data or {})
        unknown = sorted(set(given) - set(DEFAULTS))
        if unknown:
            raise ValueError(f"unknown review rule(s) {unknown}; the rules are {sorted(DEFAULTS)}")
        merged = {**DEFAULTS, **given}
        band = merged["probability_band"]
        if band in (None, False, 0):
            band = None
        elif isinstance(band, bool) or not isinstance(band, int | float) or not 0 < band <= 0.5:
            raise ValueError("review rule probability_band must be a number in (0, 0.5], or null")
        top = merged["sensitive_in_top"]
        if top in (None, False, 0):
            top = None
        elif isinstance(top, bool) or not isinstance(top, int) or top < 1:
            raise ValueError("review rule sensitive_in_top must be a positive integer, or null")
        for flag in ("out_of_range", "low_quality"):
            if not isinstance(merged[flag], bool | None):
                raise ValueError(f"review rule {flag} must be true or false")
        sensitive = merged["sensitive_features"] or []
        if not isinstance(sensitive, list | tuple) or not all(isinstance(f, str) for f in sensitive):
            raise ValueError("review rule sensitive_features must be a list of feature names")
        missing = [f for f in sensitive if features and f not in features]
        if missing:
            raise ValueError(f"review rule sensitive_features names features the model lacks: {missing}")
        return cls(
            probability_band=None if band is None else float(band),
            out_of_range=bool(merged["out_of_range"]),
            low_quality=bool(merged["low_quality"]),
            sensitive_in_top=top,
            sensitive_features=tuple(sensitive),
        )

    def to_dict(self) -> dict[str, Any]:
        """The manifest's form."""
        out = asdict(self)
        out["sensitive_features"] = list(self.sensitive_features)
        return out


def manifest_sensitive(manifest: Any) -> tuple[str, ...]:
    """The manifest's sensitive features (``sensitive: {feature: bin_edges or None}``), read defensively."""
    value = getattr(manifest, "sensitive", None)
    if value is None:
        value = (getattr(manifest, "extra", None) or {}).get("sensitive")
    if isinstance(value, Mapping):
        return tuple(str(name) for name in value)
    if isinstance(value, list | tuple):
        return tuple(str(name) for name in value)
    return ()


def fired(rules: ReviewRules, item: Mapping[str, Any], sensitive: tuple[str, ...] = ()) -> list[str]:
    """The rules an answered explanation (prediction, flags, methods, reasons) fires, in :data:`RULE_NAMES` order.

    ``sensitive`` adds features to ``rules.sensitive_features`` (the manifest's own list).
    """
    out: list[str] = []
    probabilities = (item.get("prediction") or {}).get("probabilities")
    if rules.probability_band is not None and isinstance(probabilities, Mapping) and len(probabilities) >= 2:
        top = sorted((float(p) for p in probabilities.values() if math.isfinite(float(p))), reverse=True)
        if len(top) >= 2 and top[0] - top[1] < 2 * rules.probability_band:
            out.append("probability_band")
    flags = quality_flags(item)
    if rules.out_of_range and "out_of_range" in flags:
        out.append("out_of_range")
    if rules.low_quality and any(flag in EXPLANATION_QUALITY for flag in flags):
        out.append("low_quality")
    watched = set(rules.sensitive_features) | set(sensitive)
    if rules.sensitive_in_top is not None and watched:
        top_reasons = [r.get("feature") for r in (item.get("reasons") or [])[: rules.sensitive_in_top]]
        if any(feature in watched for feature in top_reasons):
            out.append("sensitive_feature")
    return out


def review_of(rules: ReviewRules, item: Mapping[str, Any], sensitive: tuple[str, ...] = ()) -> dict[str, Any]:
    """``{"required": bool, "rules": [...]}`` for an answered explanation."""
    names = fired(rules, item, sensitive)
    return {"required": bool(names), "rules": names}
