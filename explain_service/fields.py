"""Strict marshmallow fields for JSON input: a value keeps the JSON type it was sent as.

marshmallow's own ``Integer``/``Float``/``Boolean`` coerce: ``"500"`` loads as 500, ``"yes"`` as
True, ``true`` as 1. An API that records what it was asked must not guess, so request bodies and
method options use these fields instead:

* :class:`StrictFloat`: a JSON number (int or float, never a boolean or a string), finite,
  within ``bound``;
* :class:`StrictInteger`: the same, and integral (``3.0`` loads as ``3``);
* :class:`StrictBoolean`: ``true``/``false`` only.

They subclass marshmallow's own fields so that the OpenAPI document types them.

Numbers too large for a float (``1e400``) reach these fields as :class:`OverflowNumber` (see
:func:`explain_service.jsonio.loads_body`) and are refused by name, like any other bad value.
"""

from __future__ import annotations

import math
from typing import Any

from marshmallow import ValidationError, fields

OUT_OF_RANGE = "Number out of range."


class OverflowNumber:
    """A JSON number that no float can hold (e.g. ``1e400``), kept as its text so it can be refused."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"OverflowNumber({self.text[:40]!r})"


def check_number(value: Any, *, integer: bool, bound: float | None) -> int | float:
    """``value`` as a strict field loads it, or a ValidationError naming what is wrong.

    ``bound`` is the largest magnitude accepted (None: any finite float, any int).
    """
    if isinstance(value, OverflowNumber):
        raise ValidationError(OUT_OF_RANGE)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError("Not a valid number.")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValidationError("Not a finite number.")
    if integer:
        if isinstance(value, float):
            if not value.is_integer():
                raise ValidationError("Not a valid integer.")
            value = int(value)
        if bound is not None and abs(value) > bound:
            raise ValidationError(f"Integer out of range (at most {int(bound)} in magnitude).")
        return int(value)
    try:
        out = float(value)
    except OverflowError:
        raise ValidationError(OUT_OF_RANGE) from None
    if bound is not None and abs(out) > bound:
        raise ValidationError(f"Number out of range (at most {bound:.8g} in magnitude).")
    return out


def _bounds(bound: float | None, metadata: dict[str, Any] | None) -> dict[str, Any]:
    meta = dict(metadata or {})
    if bound is not None:
        meta.setdefault("minimum", -bound)
        meta.setdefault("maximum", bound)
    return meta


class StrictInteger(fields.Integer):
    """A JSON integer (``3.0`` loads as 3) within ``bound``; never a string or a boolean."""

    def __init__(self, *, bound: float | None = None, **kwargs: Any) -> None:
        kwargs["metadata"] = _bounds(bound, kwargs.get("metadata"))
        super().__init__(**kwargs)
        self.bound = bound

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        return int(check_number(value, integer=True, bound=self.bound))


class StrictFloat(fields.Float):
    """A finite JSON number within ``bound``; never a string or a boolean."""

    def __init__(self, *, bound: float | None = None, **kwargs: Any) -> None:
        kwargs["metadata"] = _bounds(bound, kwargs.get("metadata"))
        super().__init__(**kwargs)
        self.bound = bound

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> float:
        return float(check_number(value, integer=False, bound=self.bound))


class StrictBoolean(fields.Boolean):
    """A JSON ``true``/``false`` only."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise ValidationError("Not a valid boolean.")
        return value
