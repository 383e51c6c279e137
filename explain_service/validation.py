"""Instance validation: raw rows in, typed rows out, or every bad field named.

The web API and the batch job both judge rows with these rules; neither owns them. Instance
schemas are generated from a model's feature schema and cached by the model's sha256:

* numeric: a JSON number (not a string or a boolean), finite, within the float32 range
  (:data:`~explain_service.registry.schema.NUMERIC_BOUND`): float32 is what tree models read;
* integer: as numeric, integral, and within +/-2**53
  (:data:`~explain_service.registry.schema.INTEGER_BOUND`), the integers every path holds exactly;
* boolean: ``true``/``false``; categorical: one of the categories seen at registration;
* unknown features are rejected, and so is a null or absent value unless the feature takes
  missing values (the manifest's ``missing: true``): then it reaches the model as NaN.

A row whose values pass can still overflow once preprocessed (a scaler with a small scale turns
3e38 into infinity); :func:`transformed_errors` finds those cells in the estimator's matrix and
names the input feature they came from. Every error is reported under its dotted path, e.g.
``instances.3.age``; at most :data:`~explain_service.errors.MAX_LISTED_ERRORS` are listed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from marshmallow import Schema, ValidationError, fields, validate

from explain_service.errors import MAX_LISTED_ERRORS, ValidationFailed, flatten_errors
from explain_service.fields import StrictBoolean, StrictFloat, StrictInteger
from explain_service.registry.model import LoadedModel, Prepared
from explain_service.registry.schema import (
    INTEGER_BOUND,
    NUMERIC_BOUND,
    Feature,
    columns_from_records,
)

TRANSFORMED_OUT_OF_RANGE = "Out of range once preprocessed for the model; use a smaller magnitude."


def feature_field(feature: Feature) -> fields.Field:
    """The marshmallow field validating one input feature.

    A feature that takes missing values accepts ``null`` and an absent key (both loaded as None,
    which typed rows hold as NaN); any other feature requires a value.
    """
    meta = {"description": feature.description or feature.name}
    presence: dict[str, Any] = (
        {"required": False, "allow_none": True, "load_default": None}
        if feature.missing
        else {"required": True}
    )
    if feature.kind == "numeric":
        return StrictFloat(bound=NUMERIC_BOUND, metadata=meta, **presence)
    if feature.kind == "integer":
        return StrictInteger(bound=INTEGER_BOUND, metadata=meta, **presence)
    if feature.kind == "boolean":
        return StrictBoolean(metadata=meta, **presence)
    return fields.String(
        validate=validate.OneOf(list(feature.categories or ())),
        metadata=meta,
        **presence,
    )


_SCHEMAS: dict[str, Schema] = {}
_FAST: dict[str, Callable[[dict[str, Any]], dict[str, Any] | None]] = {}


def _numeric(value: Any) -> float | None:
    if type(value) is float:
        return value if -NUMERIC_BOUND <= value <= NUMERIC_BOUND else None
    if type(value) is int and -NUMERIC_BOUND <= value <= NUMERIC_BOUND:
        return float(value)
    return None


def _integer(value: Any) -> int | None:
    return value if type(value) is int and -INTEGER_BOUND <= value <= INTEGER_BOUND else None


def _boolean(value: Any) -> bool | None:
    return value if type(value) is bool else None


def _category(allowed: frozenset[str]) -> Callable[[Any], str | None]:
    return lambda value: value if type(value) is str and value in allowed else None


def fast_checker(model: LoadedModel) -> Callable[[dict[str, Any]], dict[str, Any] | None]:
    """A plain-Python check with exactly the instance schema's rules, for the common valid case.

    marshmallow stays the source of truth and of error messages: rows this check does not accept
    go through the schema, which either loads them or names what is wrong. (NaN fails every
    comparison, so the range tests also refuse it.)
    """
    checker = _FAST.get(model.sha256)
    if checker is not None:
        return checker
    names = frozenset(model.schema.names)
    required = frozenset(f.name for f in model.schema.features if not f.missing)
    checks: list[tuple[str, bool, Callable[[Any], Any]]] = []
    for f in model.schema.features:
        if f.kind == "numeric":
            checks.append((f.name, f.missing, _numeric))
        elif f.kind == "integer":
            checks.append((f.name, f.missing, _integer))
        elif f.kind == "boolean":
            checks.append((f.name, f.missing, _boolean))
        else:
            checks.append((f.name, f.missing, _category(frozenset(f.categories or ()))))

    def check(inst: dict[str, Any]) -> dict[str, Any] | None:
        keys = inst.keys()
        if not (keys <= names and required <= keys):
            return None
        out: dict[str, Any] = {}
        for name, nullable, fn in checks:
            raw = inst.get(name)
            if raw is None and nullable:
                out[name] = None
                continue
            value = fn(raw)
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


def transformed_errors(model: LoadedModel, X: np.ndarray) -> dict[int, dict[str, list[str]]]:
    """Cells of the estimator's matrix ``X`` outside the float32 range, by row and input feature.

    A transformed column is named after the input feature it derives from; when the preprocessing
    cannot be mapped back, the whole row is named (``_row``).
    """
    with np.errstate(invalid="ignore"):
        if any(f.missing for f in model.schema.features):
            bad = np.abs(X) > NUMERIC_BOUND  # NaN is a missing value here, the model's to handle
        else:
            bad = ~(np.abs(X) <= NUMERIC_BOUND)
    if not bad.any():
        return {}
    names = model.schema.names
    out: dict[int, dict[str, list[str]]] = {}
    for i, j in zip(*np.nonzero(bad), strict=True):
        key = names[int(model.feature_index[j])] if model.feature_index is not None else "_row"
        out.setdefault(int(i), {})[key] = [TRANSFORMED_OUT_OF_RANGE]
    return out


def unknown_errors(model: LoadedModel, inst: dict[str, Any], prefix: str = "") -> dict[str, list[str]]:
    """``Unknown field.`` per key of ``inst`` that is no feature of ``model``, at most a listing's worth.

    Found here by set difference rather than by marshmallow, whose per-key error bookkeeping takes
    seconds for the hundred thousand keys a 2 MiB body can hold.
    """
    names = _names(model)
    unknown = [k for k in inst if k not in names]
    if len(unknown) <= MAX_LISTED_ERRORS:
        return {f"{prefix}.{k}" if prefix else k: ["Unknown field."] for k in unknown}
    # One entry short of the cap, so that the count of the others survives the listing's own cap.
    shown = MAX_LISTED_ERRORS - 1
    out = {f"{prefix}.{k}" if prefix else k: ["Unknown field."] for k in unknown[:shown]}
    out[f"{prefix}._more" if prefix else "_more"] = [
        f"{len(unknown) - shown} more unknown fields are not listed."
    ]
    return out


def _names(model: LoadedModel) -> frozenset[str]:
    return frozenset(model.schema.names)


def _known(model: LoadedModel, inst: dict[str, Any]) -> dict[str, Any]:
    return {k: inst[k] for k in model.schema.names if k in inst}


def validate_instances(
    model: LoadedModel, instances: list[Any], *, field: str = "instances"
) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """Validate raw instances against the model's schema; return typed rows and the clean records.

    Raises :class:`~explain_service.errors.ValidationFailed` naming ``<field>.<i>.<feature>``.
    """
    rows, clean = validate_prepared(model, instances, field=field)
    return rows.frame, clean


def validate_prepared(
    model: LoadedModel, instances: list[Any], *, field: str = "instances"
) -> tuple[Prepared, list[dict[str, Any]]]:
    """As :func:`validate_instances`, with the typed rows prepared for ``model``.

    The matrix that the overflow check reads is the one the prediction and every method use:
    a request's rows are turned into column arrays and a matrix once each (and into a frame
    only when a method needs one).
    """
    schema = instance_schema(model)
    fast = fast_checker(model)
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
        errors.update(unknown_errors(model, inst, f"{field}.{i}"))
        try:
            clean.append(schema.load(_known(model, inst)))
        except ValidationError as exc:
            errors.update(flatten_errors(exc.messages, f"{field}.{i}"))
    if errors:
        raise ValidationFailed(errors)
    with np.errstate(over="ignore", invalid="ignore"):
        rows = model.prepare_columns(columns_from_records(model.schema, clean))
    overflow = transformed_errors(model, rows.matrix)
    if overflow:
        raise ValidationFailed(
            {
                f"{field}.{i}" + ("" if name == "_row" else f".{name}"): messages
                for i, per_row in overflow.items()
                for name, messages in per_row.items()
            }
        )
    return rows, clean


def validate_row_errors(model: LoadedModel, inst: Any) -> dict[str, list[str]]:
    """The schema's errors of one instance (empty when valid), for batch jobs that route bad rows aside.

    Preprocessing overflow is a property of a whole typed chunk: see :func:`transformed_errors`.
    """
    if not isinstance(inst, dict):
        return {"_row": ["Not a valid object."]}
    unknown = unknown_errors(model, inst)
    try:
        instance_schema(model).load(_known(model, inst))
    except ValidationError as exc:
        return {**unknown, **flatten_errors(exc.messages)}
    return unknown
