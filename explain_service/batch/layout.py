"""The columns a batch job writes, method by method.

Every output file is: the input columns (in input order), ``audit_id`` when the
job stores audit records, then ``prediction`` and ``proba.<class>``, then one
group of columns per method, in the service's method order. A method's group
is a :class:`Layout`: the Arrow fields it adds (known before any row is read, so
every part of a job has the same schema) and how to fill them for a chunk of
typed rows. Methods without a layout of their own get ``<method>.json``: the
method's JSON answer per row.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa

from explain_service.registry.model import LoadedModel, Rows, frame_of
from explain_service.registry.schema import Feature

KIND_TYPES: dict[str, pa.DataType] = {
    "numeric": pa.float64(),
    "integer": pa.int64(),
    "boolean": pa.bool_(),
    "categorical": pa.string(),
}
RESERVED_PREFIXES = ("proba.", "shap.", "lime.", "counterfactual.")
RESERVED_NAMES = ("prediction", "flags")
AUDIT_ID = "audit_id"


def feature_field(feature: Feature) -> pa.Field:
    """The output field of an input feature (its schema type, whatever the input file used).

    A feature that takes missing values is nullable: its missing cells are written as nulls.
    """
    return pa.field(feature.name, KIND_TYPES[feature.kind], nullable=feature.missing)


def feature_array(feature: Feature, values: np.ndarray) -> pa.Array:
    """A validated feature column as Arrow (NaN of a nullable feature becomes null)."""
    if not feature.missing:
        return pa.array(values, type=KIND_TYPES[feature.kind])
    series = pd.Series(values, dtype=object if values.dtype == object else None)
    if feature.kind == "integer":
        series = series.astype("Int64")
    return pa.array(series, type=KIND_TYPES[feature.kind], from_pandas=True)


def prediction_fields(model: LoadedModel) -> list[pa.Field]:
    """``prediction`` (class label or value), ``proba.<class>`` for classifiers, then ``flags``."""
    flags = pa.field("flags", pa.string(), nullable=False)
    if not model.is_classifier:
        return [pa.field("prediction", pa.float64(), nullable=False), flags]
    return [
        pa.field("prediction", pa.string(), nullable=False),
        *(pa.field(f"proba.{c}", pa.float64(), nullable=False) for c in model.class_names),
        flags,
    ]


def flags_column(flags: list[dict[str, list[str]]]) -> pa.Array:
    """``flags``: per row, the JSON of the features outside the registration's ranges (``{}`` when none)."""
    return pa.array([orjson.dumps(f, option=orjson.OPT_SORT_KEYS).decode() for f in flags], type=pa.string())


def prediction_columns(model: LoadedModel, X: np.ndarray) -> tuple[list[pa.Array], np.ndarray | None]:
    """The prediction columns of the transformed rows ``X`` and the predicted class indices."""
    if not model.is_classifier:
        return [pa.array(model.value_matrix(X), type=pa.float64())], None
    proba = model.proba_matrix(X)
    classes = proba.argmax(axis=1)
    labels = np.asarray(model.class_names, dtype=object)[classes]
    return [pa.array(labels, type=pa.string())] + [
        pa.array(proba[:, k], type=pa.float64()) for k in range(proba.shape[1])
    ], classes


def prediction_from_answers(model: LoadedModel, answers: list[dict[str, Any]]) -> list[pa.Array]:
    """The prediction columns from the service's answers (``{"label", "probabilities"}`` or ``{"value"}``)."""
    if not model.is_classifier:
        return [pa.array([a["value"] for a in answers], type=pa.float64())]
    return [pa.array([a["label"] for a in answers], type=pa.string())] + [
        pa.array([a["probabilities"][c] for a in answers], type=pa.float64()) for c in model.class_names
    ]


class Layout(Protocol):
    """How one method's answer becomes columns.

    ``columns`` computes a chunk's columns (the fast path); ``from_answers`` converts the
    method's per-row answers from :class:`~explain_service.service.ExplainService` (the audited
    path). Both give the same values.
    """

    def fields(self, model: LoadedModel, method: str) -> list[pa.Field]: ...

    def from_answers(self, model: LoadedModel, answers: list[dict[str, Any]]) -> list[pa.Array]: ...

    def columns(
        self,
        model: LoadedModel,
        explainer: Any,
        rows: Rows,
        targets: np.ndarray | None,
        options: dict[str, Any],
    ) -> list[pa.Array]: ...


def _target_names(model: LoadedModel, targets: np.ndarray | None, n: int) -> pa.Array:
    if targets is None:
        return pa.nulls(n, type=pa.string())
    return pa.array(np.asarray(model.class_names, dtype=object)[targets], type=pa.string())


class ShapLayout:
    """``shap.target``, ``shap.output``, ``shap.base_value``, ``shap.<feature>``, ``shap.additivity_residual``.

    Filled from the explainer's columnar path (:meth:`ShapExplainer.attributions`).
    """

    def fields(self, model: LoadedModel, method: str) -> list[pa.Field]:
        return [
            pa.field("shap.target", pa.string()),
            pa.field("shap.output", pa.string(), nullable=False),
            pa.field("shap.base_value", pa.float64(), nullable=False),
            *(pa.field(f"shap.{name}", pa.float64(), nullable=False) for name in model.schema.names),
            pa.field("shap.additivity_residual", pa.float64(), nullable=False),
        ]

    def columns(
        self,
        model: LoadedModel,
        explainer: Any,
        rows: Rows,
        targets: np.ndarray | None,
        options: dict[str, Any],
    ) -> list[pa.Array]:
        n = len(rows)
        arrays = explainer.attributions(model, rows, targets, options)
        return [
            _target_names(model, targets, n),
            pa.array([arrays.output] * n, type=pa.string()),
            pa.array(np.broadcast_to(arrays.base, (n,)), type=pa.float64()),
            *(pa.array(arrays.values[:, j], type=pa.float64()) for j in range(arrays.values.shape[1])),
            pa.array(arrays.residuals(), type=pa.float64()),
        ]

    def from_answers(self, model: LoadedModel, answers: list[dict[str, Any]]) -> list[pa.Array]:
        return [
            pa.array([a["target"] for a in answers], type=pa.string()),
            pa.array([a["output"] for a in answers], type=pa.string()),
            pa.array([a["base_value"] for a in answers], type=pa.float64()),
            *(pa.array([a["values"][n] for a in answers], type=pa.float64()) for n in model.schema.names),
            pa.array([a["additivity_residual"] for a in answers], type=pa.float64()),
        ]


class _AnswerLayout:
    """Columns built from the method's per-row answers."""

    def columns(
        self,
        model: LoadedModel,
        explainer: Any,
        rows: Rows,
        targets: np.ndarray | None,
        options: dict[str, Any],
    ) -> list[pa.Array]:
        return self.from_answers(model, explainer.explain(model, rows, targets, options))

    def from_answers(self, model: LoadedModel, answers: list[dict[str, Any]]) -> list[pa.Array]:
        raise NotImplementedError


class LimeLayout(_AnswerLayout):
    """``lime.target``, ``lime.intercept``, ``lime.score``, ``lime.<feature>``, ``lime.slope.<feature>``.

    ``lime.<feature>`` is the feature's *contribution* (what its value adds to the surrogate
    compared with an average background row, comparable with ``shap.<feature>``);
    ``lime.slope.<feature>`` is the surrogate's raw weight (a slope per background standard
    deviation, or the effect of keeping the instance's category).
    """

    def fields(self, model: LoadedModel, method: str) -> list[pa.Field]:
        return [
            pa.field("lime.target", pa.string()),
            pa.field("lime.intercept", pa.float64()),
            pa.field("lime.score", pa.float64()),
            *(pa.field(f"lime.{name}", pa.float64()) for name in model.schema.names),
            *(pa.field(f"lime.slope.{name}", pa.float64()) for name in model.schema.names),
        ]

    def from_answers(self, model: LoadedModel, answers: list[dict[str, Any]]) -> list[pa.Array]:
        names = model.schema.names
        return [
            pa.array([a.get("target") for a in answers], type=pa.string()),
            pa.array([a.get("intercept") for a in answers], type=pa.float64()),
            pa.array([a.get("score") for a in answers], type=pa.float64()),
            *(pa.array([a["contributions"].get(n) for a in answers], type=pa.float64()) for n in names),
            *(pa.array([a["weights"].get(n) for a in answers], type=pa.float64()) for n in names),
        ]


class JsonLayout(_AnswerLayout):
    """``<method>.json``: the method's whole answer per row as canonical JSON text."""

    def fields(self, model: LoadedModel, method: str) -> list[pa.Field]:
        return [pa.field(f"{method}.json", pa.string(), nullable=False)]

    def from_answers(self, model: LoadedModel, answers: list[dict[str, Any]]) -> list[pa.Array]:
        opts = orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY
        return [pa.array([orjson.dumps(a, option=opts).decode() for a in answers], type=pa.string())]


class CounterfactualLayout(JsonLayout):
    """``counterfactual.json``, each row searched on its own.

    The method's ``time_budget_ms`` is shared by the rows of one call; one row per call gives
    every row the budget an API request for that row would have.
    """

    def columns(
        self,
        model: LoadedModel,
        explainer: Any,
        rows: Rows,
        targets: np.ndarray | None,
        options: dict[str, Any],
    ) -> list[pa.Array]:
        answers = [
            explainer.explain(
                model,
                frame_of(rows).iloc[i : i + 1],
                None if targets is None else targets[i : i + 1],
                options,
            )[0]
            for i in range(len(rows))
        ]
        return self.from_answers(model, answers)


LAYOUTS: dict[str, Layout] = {
    "shap": ShapLayout(),
    "lime": LimeLayout(),
    "counterfactual": CounterfactualLayout(),
}


def layout_for(method: str) -> Layout:
    """The layout of ``method`` (``<method>.json`` when it has none of its own)."""
    return LAYOUTS.get(method) or JsonLayout()


def output_schema(
    model: LoadedModel,
    input_fields: list[pa.Field],
    methods: list[str],
    metadata: dict[str, Any],
    *,
    audit: bool = False,
) -> pa.Schema:
    """The schema of every part and of the final file; ``metadata`` is stored under ``explain_service``.

    ``audit``: an ``audit_id`` column (each row's audit record) follows the input columns.
    """
    fields = list(input_fields)
    if audit:
        fields.append(pa.field(AUDIT_ID, pa.string(), nullable=False))
    fields += prediction_fields(model)
    for method in methods:
        fields += layout_for(method).fields(model, method)
    return pa.schema(
        fields, metadata={b"explain_service": orjson.dumps(metadata, option=orjson.OPT_SORT_KEYS)}
    )


def clashing_columns(columns: list[str], *, audit: bool = False) -> list[str]:
    """Input columns whose names an output column would take (``audit_id`` too with ``audit``)."""
    reserved = (*RESERVED_NAMES, AUDIT_ID) if audit else RESERVED_NAMES
    return [c for c in columns if c in reserved or c.startswith(RESERVED_PREFIXES)]
