"""Global explanations: mean |SHAP| per feature over a reference set, overall and per sensitive group.

The reference set is the model's background sample by default, or rows of a (labelled) file
drawn with :func:`reference_from_file`. Every row is explained by the same SHAP path as an
``:explain`` answer (:meth:`ShapExplainer.attributions`), for one class for all rows (the
favourable class, else a binary model's second class, else each row's predicted class, the
rule of the batch job), so the values are on one scale and their means compare. Grouped by a
sensitive feature (:func:`explain_service.fairness.groups.group_labels`), the same means answer
"do different groups get different reasons?".

Model-agnostic models cost thousands of model calls per row, so their reference set is cut to
:data:`AGNOSTIC_ROWS` rows (seeded) with a budget of :data:`AGNOSTIC_MAX_EVALS` evaluations per
row; the answer says how many rows were explained. :func:`global_importance` is what the HTTP
view and the transparency report call; :func:`explain_service.plots.beeswarm.beeswarm` draws
its ``values``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from explain_service.batch.compute import typed_frame
from explain_service.batch.io import inspect_input, read_chunks
from explain_service.batch.job import job_target
from explain_service.batch.validate import validate_chunk
from explain_service.explainers.shap import ShapExplainer
from explain_service.fairness.groups import Edges, group_labels
from explain_service.registry.model import LoadedModel

AGNOSTIC_ROWS = 64
AGNOSTIC_MAX_EVALS = 4_000
DEFAULT_MAX_ROWS = 1_000


@dataclass(frozen=True)
class GlobalImportance:
    """SHAP values of a reference set and what they add up to."""

    model: dict[str, str]
    reference: dict[str, Any]
    target: str | None
    output: str
    algorithm: str
    rows: pd.DataFrame  # the explained rows (typed)
    values: np.ndarray  # (n, features), one column per input feature
    by_group: dict[str, dict[str, Any]]

    @property
    def features(self) -> list[str]:
        return list(self.rows.columns)

    def mean_abs(self) -> dict[str, float]:
        """Mean |SHAP| per feature, largest first."""
        return _ranked(self.features, np.abs(self.values).mean(axis=0))

    def to_dict(self) -> dict[str, Any]:
        """The JSON answer of ``GET /v1/models/{name}/importance``."""
        return {
            "model": self.model,
            "reference": self.reference,
            "target": self.target,
            "output": self.output,
            "algorithm": self.algorithm,
            "mean_abs_shap": self.mean_abs(),
            "by_group": self.by_group,
        }


def _ranked(names: list[str], means: np.ndarray) -> dict[str, float]:
    order = sorted(range(len(names)), key=lambda j: (-float(means[j]), names[j]))
    return {names[j]: float(means[j]) for j in order}


def _frame_sha256(frame: pd.DataFrame) -> str:
    return hashlib.sha256(frame.to_csv(index=False, lineterminator="\n").encode()).hexdigest()


def global_importance(
    model: LoadedModel,
    reference: pd.DataFrame | None = None,
    *,
    sensitive: Mapping[str, Edges] | None = None,
    max_rows: int = DEFAULT_MAX_ROWS,
    seed: int = 0,
    source: str | None = None,
) -> GlobalImportance:
    """Mean |SHAP| per feature over ``reference`` (default: the background), overall and by group.

    Parameters
    ----------
    model
        A loaded model.
    reference
        Typed rows in the model's schema (e.g. from :func:`reference_from_file`); default the
        model's background sample.
    sensitive
        ``{feature: bin edges or None}`` to break the means down by group; default the model's
        registered sensitive features.
    max_rows, seed
        At most ``max_rows`` rows are explained (a seeded sample when there are more; fewer on
        the model-agnostic path, see the module docstring).
    source
        What ``reference`` is, for the answer (``"background"`` by default).
    """
    rows = model.background if reference is None else reference
    agnostic = model.family == "agnostic"
    limit = min(max_rows, AGNOSTIC_ROWS) if agnostic else max_rows
    if len(rows) > limit:
        rows = rows.sample(limit, random_state=seed).sort_index()
    rows = rows.reset_index(drop=True)[model.schema.names]
    target = job_target(model, None)
    proba = model.predict_proba(rows) if model.is_classifier else None
    targets = None
    if proba is not None:
        index = model.class_names.index(target) if target is not None else None
        targets = np.full(len(rows), index) if index is not None else proba.argmax(axis=1)
    options: dict[str, Any] = {"max_evals": AGNOSTIC_MAX_EVALS, "seed": seed} if agnostic else {}
    arrays = ShapExplainer().attributions(model, rows, targets, options)
    groups = dict(model.manifest.sensitive if sensitive is None else sensitive)
    by_group: dict[str, dict[str, Any]] = {}
    abs_values = np.abs(arrays.values)
    for name, edges in groups.items():
        labels = group_labels(rows[name], edges)
        by_group[name] = {
            str(label): {
                "count": int((labels == label).sum()),
                "mean_abs_shap": _ranked(model.schema.names, abs_values[labels == label].mean(axis=0)),
            }
            for label in sorted(set(labels.tolist()))
        }
    return GlobalImportance(
        model={"name": model.name, "version": model.version, "sha256": model.sha256},
        reference={
            "source": source or ("background" if reference is None else "rows"),
            "rows": len(rows),
            "sha256": _frame_sha256(rows),
            "seed": seed,
        },
        target=target,
        output=arrays.output,
        algorithm=arrays.algorithm,
        rows=rows,
        values=arrays.values,
        by_group=by_group,
    )


def reference_from_file(
    model: LoadedModel,
    path: Path,
    *,
    max_rows: int = DEFAULT_MAX_ROWS,
    seed: int = 0,
    chunk_size: int = 50_000,
) -> pd.DataFrame:
    """A seeded uniform sample of at most ``max_rows`` valid rows of a CSV or Parquet file.

    The file is read in chunks; each valid row draws a random key and the ``max_rows``
    smallest keys are kept, so the sample does not depend on the chunking and memory stays
    bounded by the chunk and the sample. Other columns (labels) are ignored.
    """
    info = inspect_input(path, model.schema)
    rng = np.random.default_rng(seed)
    kept: pd.DataFrame | None = None
    keys = np.empty(0)
    for chunk in read_chunks(info, model.schema, chunk_size):
        checked = validate_chunk(model, chunk.features, typed=chunk.typed)
        draws = rng.random(len(chunk.features))[checked.valid]  # one draw per readable row, in file order
        frame = typed_frame(checked.columns)
        merged = frame if kept is None else pd.concat([kept, frame], ignore_index=True)
        keys = np.concatenate([keys, draws])
        best = np.sort(np.argsort(keys, kind="stable")[:max_rows])
        kept, keys = merged.iloc[best].reset_index(drop=True), keys[best]
    if kept is None or kept.empty:
        raise ValueError(f"{path} has no valid rows for {model.name}")
    return kept
