"""Request validation: the static request envelopes and per-model instance schemas.

Instance schemas are generated from a model's feature schema and cached by the
model's sha256. Numbers must be JSON numbers (not strings or booleans) and
finite; integer features take integral values; categorical features take one
of the categories seen at registration; unknown or missing features are
rejected. Every error is reported under its dotted path, e.g.
``instances.3.age``.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
from marshmallow import Schema, ValidationError, fields, validate

from explain_service.errors import ValidationFailed, flatten_errors
from explain_service.registry.model import LoadedModel
from explain_service.registry.schema import Feature, frame_from_records

INT64_MAX = 2**63 - 1


class StrictNumber(fields.Field):
    """A JSON number: no strings, no booleans, no NaN/Infinity; optionally integral."""

    def __init__(self, *, integer: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.integer = integer

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int | float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValidationError("Not a valid number.")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValidationError("Not a finite number.")
        if self.integer:
            if isinstance(value, float):
                if not value.is_integer():
                    raise ValidationError("Not a valid integer.")
                value = int(value)
            if abs(value) > INT64_MAX:
                raise ValidationError("Integer out of range.")
            return int(value)
        try:
            out = float(value)
        except OverflowError:
            raise ValidationError("Number out of range.") from None
        if not math.isfinite(out):
            raise ValidationError("Number out of range.")
        return out


class StrictBoolean(fields.Field):
    """A JSON true/false only."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise ValidationError("Not a valid boolean.")
        return value


def feature_field(feature: Feature) -> fields.Field:
    """The marshmallow field validating one input feature."""
    meta = {"description": feature.description or feature.name}
    if feature.kind == "numeric":
        return StrictNumber(required=True, metadata=meta)
    if feature.kind == "integer":
        return StrictNumber(integer=True, required=True, metadata=meta)
    if feature.kind == "boolean":
        return StrictBoolean(required=True, metadata=meta)
    return fields.String(
        required=True,
        validate=validate.OneOf(list(feature.categories or ())),
        metadata=meta,
    )


_SCHEMAS: dict[str, Schema] = {}
_FAST: dict[str, Any] = {}


def _finite_number(value: Any) -> float | None:
    if type(value) is float:
        return value if math.isfinite(value) else None
    if type(value) is int and abs(value) <= INT64_MAX:
        return float(value)
    return None


def _fast_checker(model: LoadedModel) -> Any:
    """A plain-Python check with exactly the instance schema's rules, for the common valid case.

    marshmallow stays the source of truth and of error messages: rows this check does not accept
    go through the schema, which either loads them or names what is wrong.
    """
    checker = _FAST.get(model.sha256)
    if checker is not None:
        return checker
    names = frozenset(model.schema.names)
    checks: list[tuple[str, Any]] = []
    for f in model.schema.features:
        if f.kind == "numeric":
            checks.append((f.name, _finite_number))
        elif f.kind == "integer":
            checks.append((f.name, lambda v: v if type(v) is int and abs(v) <= INT64_MAX else None))
        elif f.kind == "boolean":
            checks.append((f.name, lambda v: v if type(v) is bool else None))
        else:
            allowed = frozenset(f.categories or ())
            checks.append((f.name, lambda v, allowed=allowed: v if type(v) is str and v in allowed else None))

    def check(inst: dict[str, Any]) -> dict[str, Any] | None:
        if inst.keys() != names:
            return None
        out = {}
        for name, fn in checks:
            value = fn(inst[name])
            if value is None:
                return None
            out[name] = value
        return out

    _FAST[model.sha256] = check
    return check


def instance_schema(model: LoadedModel) -> Schema:
    """The (cached) schema of one instance of ``model``."""
    schema = _SCHEMAS.get(model.sha256)
    if schema is None:
        cls = Schema.from_dict(
            {f.name: feature_field(f) for f in model.schema.features}, name=f"Instance_{model.name}"
        )
        schema = cls()
        _SCHEMAS[model.sha256] = schema
    return schema


def validate_instances(
    model: LoadedModel, instances: list[Any], *, field: str = "instances"
) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """Validate raw instances against the model's schema; return typed rows and the clean records."""
    schema = instance_schema(model)
    fast = _fast_checker(model)
    errors: dict[str, list[str]] = {}
    clean: list[dict[str, Any]] = []
    for i, inst in enumerate(instances):
        if not isinstance(inst, dict):
            errors[f"{field}.{i}"] = ["Not a valid object."]
            continue
        record = fast(inst)
        if record is not None:
            clean.append(record)
            continue
        try:
            clean.append(schema.load(inst))
        except ValidationError as exc:
            errors.update(flatten_errors(exc.messages, f"{field}.{i}"))
    if errors:
        raise ValidationFailed(errors)
    return frame_from_records(model.schema, clean), clean


def validate_row_errors(model: LoadedModel, inst: Any) -> dict[str, list[str]]:
    """Errors of one instance (empty when valid), for batch jobs that route bad rows aside."""
    if not isinstance(inst, dict):
        return {"_row": ["Not a valid object."]}
    try:
        instance_schema(model).load(inst)
    except ValidationError as exc:
        return flatten_errors(exc.messages)
    return {}
