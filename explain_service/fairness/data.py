"""Feeding a bias audit: labelled rows from a file (chunk by chunk) or from a request.

Files are read with the batch job's readers (:func:`explain_service.batch.io.read_chunks`:
CSV row by row, Parquet by record batch) and validated with its column-wise validator, so
a file the batch job accepts is read the same way here. Per chunk only the confusion
counts per group are kept; memory is bounded by the chunk size, not the file.

A row is left out of the audit, and counted in ``data.rejected``, when it cannot be read,
when a feature fails the model's validation, or when its label is not a class name; the
first few are listed in ``data.rejected_examples`` with their 0-based input row.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from explain_service.audit.chain import canonical_json
from explain_service.batch.compute import RawChunk, typed_frame
from explain_service.batch.io import InputError, fingerprint, inspect_input, read_chunks
from explain_service.batch.validate import validate_chunk
from explain_service.errors import ValidationFailed
from explain_service.fairness.audit import (
    AuditPlan,
    CountAccumulator,
    label_truth,
    predicted_positive,
)
from explain_service.registry.model import LoadedModel
from explain_service.registry.schema import columns_from_records
from explain_service.validation import validate_instances

DEFAULT_CHUNK_SIZE = 50_000
REJECTED_EXAMPLES = 5

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "InputError",
    "audit_file",
    "count_audit_rows",
    "file_columns",
    "label_errors",
    "validate_audit_rows",
]


def file_columns(model: LoadedModel, path: Path, label: str) -> list[str]:
    """The columns of ``path`` that are not model inputs nor the label (sensitive candidates).

    Raises :class:`InputError` when the label or a model input column is absent.
    """
    info = inspect_input(path, model.schema)
    missing = [n for n in model.schema.names if n not in info.columns]
    if missing:
        raise InputError(f"{path} lacks the model's input column(s) {', '.join(missing)}")
    if label not in info.columns:
        raise InputError(f"{path} has no label column {label!r} (columns: {', '.join(info.columns)})")
    known = set(model.schema.names) | {label}
    return [c for c in info.columns if c not in known]


def audit_file(
    model: LoadedModel,
    path: Path,
    label: str,
    plan: AuditPlan,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    on_chunk: Callable[[int], None] | None = None,
) -> tuple[CountAccumulator, dict[str, Any]]:
    """Count a labelled CSV or Parquet file; return the counts and the answer's ``data``."""
    file_columns(model, path, label)
    info = inspect_input(path, model.schema)
    acc = CountAccumulator(plan)
    rows = rejected = 0
    examples: list[dict[str, Any]] = []
    for chunk in read_chunks(info, model.schema, chunk_size):
        rows += len(chunk)
        bad = _count_chunk(model, chunk, label, plan, acc)
        rejected += len(bad)
        examples += bad[: max(REJECTED_EXAMPLES - len(examples), 0)]
        if on_chunk is not None:
            on_chunk(len(chunk))
    digest = fingerprint(path)
    data = {
        "source": path.name,
        "format": info.format,
        "sha256": digest["sha256"],
        "size": digest["size"],
        "rows": rows,
        "used": acc.rows,
        "rejected": rejected,
        "rejected_examples": sorted(examples, key=lambda e: e["row"]),
    }
    return acc, data


def _count_chunk(
    model: LoadedModel, chunk: RawChunk, label: str, plan: AuditPlan, acc: CountAccumulator
) -> list[dict[str, Any]]:
    """Count one chunk into ``acc``; return its rejected rows as ``{"row", "errors"}``."""
    checked = validate_chunk(model, chunk.features, typed=chunk.typed)
    labels = chunk.passthrough.column(label).to_pandas().to_numpy(dtype=object)
    known, positive = label_truth(labels, model.class_names, plan.positive)
    numbers = chunk.row_numbers()
    bad = [{"row": int(chunk.start + pos), "errors": m.errors} for pos, m in chunk.malformed.items()]
    message = f"Not a class name of the model ({', '.join(model.class_names)})."
    for i in np.flatnonzero(~(checked.valid & known)).tolist():
        errors = dict(checked.errors.get(i, {}))
        if not known[i]:
            errors[label] = [message]
        bad.append({"row": int(numbers[i]), "errors": errors})
    keep_valid = known[checked.valid]  # among the rows that passed validation
    columns = {name: column[keep_valid] for name, column in checked.columns.items()}
    keep = checked.valid & known
    if keep.any():
        rows = model.prepare(typed_frame(columns), columns)
        predicted = predicted_positive(model, rows.matrix, plan.positive)
        sensitive = {
            name: columns[name]
            if name in columns
            else chunk.passthrough.column(name).to_pandas().to_numpy(dtype=object)[keep]
            for name in plan.sensitive
        }
        acc.add(sensitive, positive[keep], predicted)
    return bad


def label_errors(model: LoadedModel, labels: Any, count: int) -> dict[str, list[str]]:
    """What is wrong with the labels of ``count`` request rows: ``labels`` or ``labels.<i>`` -> messages."""
    if not isinstance(labels, list) or len(labels) != count:
        return {"labels": [f"Give one label per instance ({count})."]}
    names = model.class_names
    return {
        f"labels.{i}": [f"Not a class name of the model ({', '.join(names)})."]
        for i, value in enumerate(labels)
        if not isinstance(value, str) or value not in names
    }


def validate_audit_rows(
    model: LoadedModel, instances: Sequence[Any], labels: Any
) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """The typed rows and clean records of a request's instances, checked with their labels.

    Raises one :class:`ValidationFailed` naming every bad instance field and every bad label.
    """
    errors = label_errors(model, labels, len(instances))
    try:
        frame, records = validate_instances(model, list(instances))
    except ValidationFailed as exc:
        raise ValidationFailed({**exc.errors, **errors}) from None
    if errors:
        raise ValidationFailed(errors)
    return frame, records


def count_audit_rows(
    model: LoadedModel, frame: pd.DataFrame, records: list[dict[str, Any]], labels: list[str], plan: AuditPlan
) -> tuple[CountAccumulator, dict[str, Any]]:
    """Count rows already checked by :func:`validate_audit_rows`; the audit's data description."""
    columns = columns_from_records(model.schema, records)
    rows = model.prepare(frame, columns)
    acc = CountAccumulator(plan)
    truth = np.array([value == plan.positive for value in labels], dtype=bool)
    acc.add(
        {name: columns[name] for name in plan.sensitive},
        truth,
        predicted_positive(model, rows.matrix, plan.positive),
    )
    digest = canonical_json({"instances": records, "labels": labels})
    data = {
        "source": "request",
        "sha256": hashlib.sha256(digest).hexdigest(),
        "rows": len(records),
        "used": len(records),
        "rejected": 0,
        "rejected_examples": [],
    }
    return acc, data
