"""The oracle the validation tests share: the plain-Python fast check must agree with marshmallow."""

from __future__ import annotations

from typing import Any

from marshmallow import ValidationError

from explain_service.validation import fast_checker, instance_schema


def checked_both_ways(model: Any, row: dict[str, Any]) -> dict[str, Any] | None:
    """Validate ``row`` by the fast path and by the schema; assert they agree and return the schema's result.

    The fast path may decline a row (None) and leave it to the schema, but when it accepts one it must
    produce exactly what the schema produces, value for value and type for type.
    """
    fast = fast_checker(model)(row)
    try:
        slow = instance_schema(model).load(row)
    except ValidationError:
        slow = None
    if fast is not None:
        assert slow == fast and all(type(fast[k]) is type(slow[k]) for k in fast)
    return slow
