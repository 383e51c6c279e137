"""One chunk in, one output part (Parquet bytes) and its rejected rows out.

:func:`explain_chunk` is the unit of work of every engine. It runs where the
model is (the driver, a worker process or a Dask worker), takes plain data
(:class:`RawChunk`, :class:`ChunkPlan`) and returns plain data
(:class:`ChunkResult`), so nothing but rows and bytes ever crosses a process
boundary. Given the same model, rows and plan it returns the same bytes, on
any engine and with any number of threads: that is what makes resumed jobs
identical to uninterrupted ones.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from explain_service.batch.audit import AUDIT_CALLER, CapturingRecorder, RowRef, audit_id, id_value
from explain_service.batch.layout import (
    feature_array,
    flags_column,
    layout_for,
    prediction_columns,
    prediction_from_answers,
)
from explain_service.batch.validate import validate_chunk
from explain_service.explainers import EXPLAINERS
from explain_service.explainers.counterfactual import counterfactual_goals
from explain_service.registry.model import LoadedModel

PARQUET_OPTIONS: dict[str, Any] = {"compression": "snappy", "write_statistics": True}


@dataclass(frozen=True)
class Malformed:
    """An input row that could not be read as a row (wrong field count, bad text): a rejected row."""

    errors: dict[str, list[str]]
    input: dict[str, Any]


@dataclass
class RawChunk:
    """Rows ``start .. start+len-1`` of the input, as read.

    ``features`` holds the model's feature columns of the readable rows (any dtype;
    validation decodes them), ``passthrough`` every other input column with its
    type as read. ``positions`` gives each readable row's place in the chunk (None:
    0, 1, 2, ...); ``malformed`` the unreadable rows, by place. ``typed``: values
    are typed (Parquet) and judged by type; otherwise they are CSV text, parsed.
    """

    index: int
    start: int
    features: pd.DataFrame
    passthrough: pa.Table
    typed: bool = False
    positions: np.ndarray | None = None
    malformed: dict[int, Malformed] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.features) + len(self.malformed)

    def row_numbers(self) -> np.ndarray:
        """The 0-based input row of each row of ``features``."""
        places = self.positions if self.positions is not None else np.arange(len(self.features))
        return self.start + places


@dataclass(frozen=True)
class ChunkPlan:
    """What to compute for every chunk of a job (identical for all chunks)."""

    model_sha256: str
    methods: tuple[str, ...]
    target: str | None
    options: dict[str, dict[str, Any]]
    input_columns: tuple[str, ...]
    schema: pa.Schema
    raw_options: dict[str, Any] = field(default_factory=dict)
    # With --audit: the job's id (in each record's body) and its secret key (see ``batch.audit``),
    # set by the driver once the parts directory holds the key.
    audit_job: str | None = None
    audit_key: str | None = None
    # Input columns carried as the caller's ids into each audit record (never fed to the model).
    id_columns: tuple[str, ...] = ()
    # The class counterfactuals aim at: the --target class when one was named, else the one rule
    # of ``counterfactual_goals`` (None), not the job's default attribution target.
    counterfactual_target: str | None = None
    # With --route-reviews: records carry the model's review routing (else ``review`` is null).
    route_reviews: bool = False


@dataclass
class ChunkResult:
    """The encoded output of one chunk."""

    index: int
    rows: int
    written: int
    rejected: int
    part: bytes
    rejected_lines: bytes
    audit: list[Any] = field(default_factory=list)

    @property
    def part_sha256(self) -> str:
        return hashlib.sha256(self.part).hexdigest()

    @property
    def rejected_sha256(self) -> str | None:
        return hashlib.sha256(self.rejected_lines).hexdigest() if self.rejected_lines else None


def explain_chunk(model: LoadedModel, chunk: RawChunk, plan: ChunkPlan) -> ChunkResult:
    """Validate, predict, explain and encode one chunk."""
    if model.sha256 != plan.model_sha256:
        raise RuntimeError(f"worker has model {model.sha256[:12]}, the job needs {plan.model_sha256[:12]}")
    checked = validate_chunk(model, chunk.features, typed=chunk.typed)
    n_valid = int(checked.valid.sum())
    columns: list[pa.Array] = []
    passthrough = chunk.passthrough
    if n_valid < len(chunk) and passthrough.num_columns:
        passthrough = passthrough.filter(pa.array(checked.valid))
    for name in plan.input_columns:
        if name in checked.columns:
            columns.append(feature_array(model.schema[name], checked.columns[name]))
        else:
            columns.append(passthrough.column(name).combine_chunks())
    audit: list[Any] = []
    if plan.audit_job is not None:
        if plan.audit_key is None:
            raise RuntimeError("an audited job needs its audit key before computing chunks")
        numbers = chunk.row_numbers()[checked.valid].tolist()
        ids = [audit_id(plan.audit_key, r) for r in numbers]
        columns.append(pa.array(ids, type=pa.string()))
        if n_valid:
            refs = _row_refs(plan.audit_job, numbers, passthrough, plan.id_columns)
            explained, audit = _audited_columns(model, checked.columns, plan, ids, refs)
            columns += explained
    elif n_valid:
        columns += _explained_columns(model, checked.columns, plan)
    if not n_valid:
        columns += [pa.array([], type=f.type) for f in list(plan.schema)[len(columns) :]]
    table = pa.Table.from_arrays(columns, schema=plan.schema)
    buf = io.BytesIO()
    pq.write_table(table, buf, **PARQUET_OPTIONS)
    return ChunkResult(
        index=chunk.index,
        rows=len(chunk),
        written=n_valid,
        rejected=len(checked.errors) + len(chunk.malformed),
        part=buf.getvalue(),
        rejected_lines=rejected_lines(chunk, checked.errors, plan.input_columns),
        audit=audit,
    )


def typed_frame(columns: dict[str, np.ndarray]) -> pd.DataFrame:
    """Typed rows from their column arrays (no copies)."""
    return pd.DataFrame(columns, copy=False)


def _explained_columns(model: LoadedModel, columns: dict[str, np.ndarray], plan: ChunkPlan) -> list[pa.Array]:
    rows = model.prepare(typed_frame(columns), columns)
    X = rows.matrix
    out, classes = prediction_columns(model, X)
    out.append(flags_column(model.schema.flags(rows.frame)))
    targets: np.ndarray | None = None
    if model.is_classifier:
        assert classes is not None
        targets = (
            np.full(len(rows), model.class_names.index(plan.target)) if plan.target is not None else classes
        )
    for method in plan.methods:
        method_targets = targets
        if method == "counterfactual" and model.is_classifier:
            goal = plan.counterfactual_target
            target_index = model.class_names.index(goal) if goal is not None else None
            method_targets = counterfactual_goals(model, model.proba_matrix(X), target_index)
        out += layout_for(method).columns(
            model, EXPLAINERS[method], rows, method_targets, plan.options[method]
        )
    return out


def _row_refs(
    job: str, numbers: list[int], passthrough: pa.Table, id_columns: tuple[str, ...]
) -> list[RowRef]:
    """Each valid row's job, input row and id values (``passthrough`` holds the valid rows only)."""
    ids = passthrough.select(list(id_columns)).to_pylist() if id_columns else [{} for _ in numbers]
    return [
        RowRef(job, row, {k: id_value(v) for k, v in values.items()})
        for row, values in zip(numbers, ids, strict=True)
    ]


def _audited_columns(
    model: LoadedModel,
    columns: dict[str, np.ndarray],
    plan: ChunkPlan,
    ids: list[str],
    refs: list[RowRef],
) -> tuple[list[pa.Array], list[Any]]:
    """Columns and audit entries from the explanation service's own answers.

    The service explains the rows exactly as for an API request, so each audit record is
    the one an API call would have stored; counterfactuals go one row per call, as in
    :class:`~explain_service.batch.layout.CounterfactualLayout`.
    """
    from explain_service.service import SAME_TARGET, ExplainService

    step = 1 if "counterfactual" in plan.methods else len(ids)
    answers: list[dict[str, Any]] = []
    entries: list[Any] = []
    for lo in range(0, len(ids), step):
        hi = min(lo + step, len(ids))
        recorder = CapturingRecorder(ids[lo:hi], refs[lo:hi], route=plan.route_reviews)
        service = ExplainService(recorder=recorder, explainers=dict(EXPLAINERS))
        part = {n: c[lo:hi] for n, c in columns.items()}
        answer = service.explain(
            model,
            model.prepare(typed_frame(part), part),
            list(plan.methods),
            target=plan.target,
            options=plan.raw_options,
            caller=AUDIT_CALLER,
            counterfactual_target=(
                SAME_TARGET if plan.counterfactual_target == plan.target else plan.counterfactual_target
            ),
        )
        answers += answer["explanations"]
        entries += recorder.entries
    out = prediction_from_answers(model, [a["prediction"] for a in answers])
    out.append(flags_column([a["flags"] for a in answers]))
    for method in plan.methods:
        out += layout_for(method).from_answers(model, [a[method] for a in answers])
    return out, entries


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or (isinstance(value, float) and value != value):
        return None
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    return value


def rejected_lines(chunk: RawChunk, errors: dict[int, dict[str, list[str]]], order: tuple[str, ...]) -> bytes:
    """JSON Lines, one per rejected row, in row order: ``{"row", "errors", "input"}`` (0-based input row).

    ``errors`` is keyed by position in ``chunk.features``; the chunk's malformed rows join them.
    """
    records: list[tuple[int, dict[str, Any]]] = []
    positions = sorted(errors)
    extra: list[dict[str, Any]] = [{} for _ in positions]
    if positions and chunk.passthrough.num_columns:
        extra = chunk.passthrough.take(pa.array(positions, type=pa.int64())).to_pylist()
    numbers = chunk.row_numbers()
    for k, i in enumerate(positions):
        raw = {name: _plain(chunk.features[name].iat[i]) for name in chunk.features.columns}
        raw.update(extra[k])
        row = int(numbers[i])
        records.append((row, {"row": row, "errors": errors[i], "input": {name: raw[name] for name in order}}))
    for place, bad in chunk.malformed.items():
        row = chunk.start + place
        records.append((row, {"row": row, "errors": bad.errors, "input": bad.input}))
    lines = []
    for _, record in sorted(records, key=lambda r: r[0]):
        record["errors"] = dict(sorted(record["errors"].items()))
        lines.append(orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY, default=str) + b"\n")
    return b"".join(lines)
