"""Whole-chunk validation with the rules of the API's per-instance schema.

The API validates one instance at a time with a marshmallow schema generated
from the model's feature schema (:func:`explain_service.validation.instance_schema`).
At batch sizes that per-row path costs more than the explanation itself, so a
chunk is checked column by column here with the same rules:

* numeric: a number (not a boolean), finite;
* integer: as numeric, and integral, and within int64;
* boolean: ``True``/``False`` (in text: ``true``/``false`` in any case);
* categorical: the text of the value is one of the registered categories;
* a missing value (an empty numeric cell, a null) is "Field may not be null.",
  unless the feature takes missing values: then it is NaN.

Each cell is first *decoded* into the value an API caller would have sent
(:func:`decode_column`): CSV cells are text, so a number or ``true`` written in
a cell is that number or boolean; Parquet cells are typed (``typed=True``) and
are taken as they are, as JSON values are by the API: the text ``"67"`` is not a
number, the number ``1`` is not a category, a timestamp is nothing the schema
takes. The vectorised rules judge those values, and only the rows that fail
are passed through the per-row schema, whose messages are what the
rejected-rows file reports. ``tests/test_batch.py`` checks that both
paths accept exactly the same rows; were they ever to disagree, the row is still
rejected, naming the fields the vectorised rules refused.

Rows whose values pass are then preprocessed once, and a row that leaves the
float32 range in the estimator's matrix (a scaler with a small scale turns 3e38
into infinity) is rejected with the API's own check and message
(:func:`explain_service.validation.transformed_errors`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from explain_service.registry.model import LoadedModel
from explain_service.registry.schema import INTEGER_BOUND, NUMERIC_BOUND, Feature
from explain_service.validation import transformed_errors, validate_row_errors

INT64_MAX = np.iinfo(np.int64).max
TRUE_TEXT = "true"
FALSE_TEXT = "false"


@dataclass
class Decoded:
    """One feature column of a chunk, decoded.

    ``kind`` per cell: 0 missing, 1 a number in ``numbers``, 2 a boolean in ``flags``,
    3 text in ``text``, 4 anything else (kept in ``raw``).
    """

    kind: np.ndarray
    numbers: np.ndarray
    flags: np.ndarray
    text: np.ndarray
    raw: np.ndarray
    integral_dtype: bool

    def value(self, i: int) -> Any:
        """The JSON-like value an API caller would have sent for cell ``i``."""
        k = self.kind[i]
        if k == 0:
            return None
        if k == 1:
            return int(self.numbers[i]) if self.integral_dtype else float(self.numbers[i])
        if k == 2:
            return bool(self.flags[i])
        if k == 3:
            return str(self.text[i])
        raw = self.raw[i]
        if isinstance(raw, np.datetime64 | np.timedelta64):
            return str(raw)  # .item() would turn nanosecond values into plain integers
        return raw.item() if isinstance(raw, np.generic) else raw


def decode_column(feature: Feature, column: pd.Series, *, typed: bool = False) -> Decoded:
    """Decode raw cells into API-style values: CSV text is parsed, typed (Parquet) values are kept."""
    n = len(column)
    raw = column.to_numpy(dtype=object) if pd.api.types.is_object_dtype(column.dtype) else column.to_numpy()
    kind = np.full(n, 4, dtype=np.int8)
    numbers = np.zeros(n, dtype=np.float64)
    flags = np.zeros(n, dtype=bool)
    text = np.full(n, "", dtype=object)
    integral = False
    dtype = column.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        column = column.astype(object)
        dtype = column.dtype
        raw = column.to_numpy(dtype=object)
    if feature.kind == "categorical":
        missing = column.isna().to_numpy()
        kind[:] = np.where(missing, 0, 3)
        if typed:
            is_text = np.fromiter((isinstance(v, str) for v in raw), bool, n)
            kind[~missing & ~is_text] = 4
            text = np.where(is_text, raw, "").astype(object)
        elif pd.api.types.is_object_dtype(dtype):
            text = np.where(missing, "", raw).astype(object)
            if pd.api.types.infer_dtype(raw, skipna=True) not in ("string", "empty"):
                not_str = ~missing & ~np.fromiter((isinstance(v, str) for v in raw), bool, n)
                text[not_str] = [str(v) for v in raw[not_str]]
        else:
            text = column.astype(str).to_numpy(dtype=object)
        return Decoded(kind, numbers, flags, text, raw, integral)
    if pd.api.types.is_bool_dtype(dtype):
        kind[:] = 2
        flags = column.to_numpy(dtype=bool)
    elif pd.api.types.is_integer_dtype(dtype) and not pd.api.types.is_extension_array_dtype(dtype):
        kind[:] = 1
        values = column.to_numpy()
        if values.dtype == np.uint64 and (values > INT64_MAX).any():
            numbers = values.astype(np.float64)
        else:
            numbers = values.astype(np.int64)
            integral = True
    elif pd.api.types.is_float_dtype(dtype) and not pd.api.types.is_extension_array_dtype(dtype):
        numbers = column.to_numpy(dtype=np.float64)
        kind[:] = np.where(np.isnan(numbers), 0, 1)
    else:
        kind, numbers, flags, integral = _decode_objects(raw, feature.kind == "boolean", typed)
    return Decoded(kind, numbers, flags, text, raw, integral)


def _decode_objects(
    raw: np.ndarray, want_boolean: bool, typed: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """Mixed cells: missing, booleans, numbers; from text too unless ``typed`` (then text stays text)."""
    n = len(raw)
    kind = np.full(n, 4, dtype=np.int8)
    flags = np.zeros(n, dtype=bool)
    missing = pd.isna(pd.Series(raw, dtype=object)).to_numpy()
    kind[missing] = 0
    is_bool = np.fromiter((isinstance(v, bool | np.bool_) for v in raw), bool, n)
    kind[is_bool] = 2
    flags[is_bool] = [bool(v) for v in raw[is_bool]]
    rest = ~missing & ~is_bool
    if typed:
        rest &= np.fromiter((pd.api.types.is_number(v) for v in raw), bool, n)
    elif want_boolean:
        lowered = np.array([v.lower() if isinstance(v, str) else "" for v in raw], dtype=object)
        for word, flag in ((TRUE_TEXT, True), (FALSE_TEXT, False)):
            hit = rest & (lowered == word)
            kind[hit] = 2
            flags[hit] = flag
        rest &= kind == 4
    numbers = np.zeros(n, dtype=np.float64)
    if rest.any():
        parsed = pd.to_numeric(pd.Series(raw[rest], dtype=object), errors="coerce").to_numpy(dtype=np.float64)
        ok = ~np.isnan(parsed)
        idx = np.flatnonzero(rest)
        numbers[idx[ok]] = parsed[ok]
        kind[idx[ok]] = 1
    return kind, numbers, flags, False


def check_column(feature: Feature, decoded: Decoded) -> tuple[np.ndarray, np.ndarray]:
    """(valid mask, typed values) of one decoded column; values are placeholders where invalid."""
    ok, values = _check_present(feature, decoded)
    if not feature.missing:
        return ok, values
    absent = decoded.kind == 0
    values = values.astype(feature.dtype)
    values[absent] = np.nan
    return ok | absent, values


def _check_present(feature: Feature, decoded: Decoded) -> tuple[np.ndarray, np.ndarray]:
    n = len(decoded.kind)
    if feature.kind == "categorical":
        cats = list(feature.categories or ())
        ok = (decoded.kind == 3) & pd.Series(decoded.text, dtype=object).isin(cats).to_numpy()
        return ok, np.where(ok, decoded.text, cats[0] if cats else "").astype(object)
    if feature.kind == "boolean":
        ok = decoded.kind == 2
        return ok, decoded.flags & ok
    is_number = decoded.kind == 1
    values = decoded.numbers
    if feature.kind == "numeric":
        if decoded.integral_dtype:
            return is_number, values.astype(np.float64)
        with np.errstate(invalid="ignore"):
            ok = is_number & (np.abs(values) <= NUMERIC_BOUND)
        return ok, np.where(ok, values, 0.0)
    if decoded.integral_dtype:
        ok = is_number & (values >= -INTEGER_BOUND) & (values <= INTEGER_BOUND)
        return ok, np.where(ok, values, 0).astype(np.int64)
    with np.errstate(invalid="ignore"):
        ok = (
            is_number & np.isfinite(values) & (np.floor(values) == values) & (np.abs(values) <= INTEGER_BOUND)
        )
    typed = np.zeros(n, dtype=np.int64)
    typed[ok] = values[ok].astype(np.int64)
    return ok, typed


@dataclass
class CheckedChunk:
    """Typed columns of the valid rows, the valid mask, and the errors of the others."""

    columns: dict[str, np.ndarray]
    valid: np.ndarray
    errors: dict[int, dict[str, list[str]]]


def validate_chunk(model: LoadedModel, frame: pd.DataFrame, *, typed: bool = False) -> CheckedChunk:
    """Validate every feature column of ``frame``; rows are positions 0..len-1.

    ``typed``: the cells are typed values (Parquet), judged by type; otherwise CSV text.
    """
    n = len(frame)
    valid = np.ones(n, dtype=bool)
    decoded: dict[str, Decoded] = {}
    values: dict[str, np.ndarray] = {}
    refused: dict[str, np.ndarray] = {}
    for feature in model.schema.features:
        decoded[feature.name] = d = decode_column(feature, frame[feature.name], typed=typed)
        ok, values[feature.name] = check_column(feature, d)
        refused[feature.name] = ~ok
        valid &= ok
    errors: dict[int, dict[str, list[str]]] = {}
    for i in np.flatnonzero(~valid).tolist():
        record = {name: d.value(i) for name, d in decoded.items()}
        found = validate_row_errors(model, record)
        # The two paths are kept equivalent by the tests; a disagreement still rejects the row.
        errors[i] = found or {
            name: ["Rejected by the batch validator."] for name, bad in refused.items() if bad[i]
        }
    columns = {name: column[valid] for name, column in values.items()}
    overflow = _overflowing(model, columns)
    if overflow:
        places = np.flatnonzero(valid)
        for k, found in overflow.items():
            errors[int(places[k])] = found
            valid[places[k]] = False
        keep = np.ones(len(places), dtype=bool)
        keep[list(overflow)] = False
        columns = {name: column[keep] for name, column in columns.items()}
    return CheckedChunk(columns, valid, dict(sorted(errors.items())))


def _overflowing(model: LoadedModel, columns: dict[str, np.ndarray]) -> dict[int, dict[str, list[str]]]:
    """Rows (by place among ``columns``) that leave the float32 range once preprocessed, as the API finds them."""
    if model.preprocessor is None or not len(next(iter(columns.values()), ())):
        return {}  # without preprocessing the matrix holds the validated values themselves
    with np.errstate(over="ignore", invalid="ignore"):
        X = model.transform(pd.DataFrame(columns, copy=False), columns)
    return transformed_errors(model, X)


def decoded_records(model: LoadedModel, frame: pd.DataFrame, *, typed: bool = False) -> list[dict[str, Any]]:
    """Every row of ``frame`` as the record the API would receive (for tests and diagnostics)."""
    decoded = {f.name: decode_column(f, frame[f.name], typed=typed) for f in model.schema.features}
    return [{name: d.value(i) for name, d in decoded.items()} for i in range(len(frame))]
