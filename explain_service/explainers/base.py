"""The explainer extension point.

An explainer is a small object with a ``name``, a marshmallow schema for its
options, a ``supports(model)`` predicate and ``explain(model, rows, targets,
options)`` returning one JSON-ready dict per row. Explainers never import
Flask; they receive clean, validated, typed inputs.

The ``model`` they receive is a :class:`explain_service.registry.LoadedModel`;
the parts an explainer may rely on are described by :class:`ModelLike`.
"""

from __future__ import annotations

import hashlib
from typing import Any, ClassVar, Protocol

import numpy as np
import orjson
import pandas as pd
from marshmallow import Schema, fields, validate

from explain_service.registry.model import Rows
from explain_service.registry.schema import FeatureSchema


class ModelLike(Protocol):
    """What explainers may use of a loaded model."""

    @property
    def name(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def sha256(self) -> str: ...
    @property
    def task(self) -> str:
        """``classification`` or ``regression``."""
        ...

    @property
    def class_names(self) -> tuple[str, ...]:
        """Empty for regression."""
        ...

    @property
    def favorable(self) -> str | None: ...
    @property
    def schema(self) -> FeatureSchema: ...

    background: pd.DataFrame  # raw rows, schema column order and dtypes

    def predict_proba(self, rows: pd.DataFrame) -> np.ndarray:
        """Class probabilities, shape (n, n_classes); classifiers only."""
        ...

    def predict_value(self, rows: pd.DataFrame) -> np.ndarray:
        """Predicted values, shape (n,); regressors only."""
        ...


class Explainer(Protocol):
    """One explanation method."""

    name: ClassVar[str]
    options_schema: ClassVar[type[Schema]]

    def supports(self, model: Any) -> bool:
        """Whether this method can explain ``model`` (a :class:`ModelLike`)."""
        ...

    def explain(
        self,
        model: Any,
        rows: Rows,
        targets: np.ndarray | None,
        options: dict[str, Any],
    ) -> list[dict[str, Any]]:
        """Explain each row; ``targets`` holds a class index per row (None for regression).

        ``rows`` are typed rows, or :class:`~explain_service.registry.model.Prepared` rows that
        carry the model's matrix for them (``frame_of`` gives the frame either way).
        """
        ...


MAX_SEED = 2**31 - 1


def seed_option(description: str | None = None) -> fields.Integer:
    """The optional ``seed`` every method takes: a JSON integer in [0, 2**31 - 1], None by default
    (the seed is then derived from the request, see :func:`derive_seed`)."""
    return fields.Integer(
        strict=True,
        allow_none=True,
        load_default=None,
        validate=validate.Range(min=0, max=MAX_SEED, error="seed must be between {min} and {max}."),
        metadata={"description": description} if description else {},
    )


def plain(value: Any) -> Any:
    """A numpy scalar as the Python value JSON and hashing expect; anything else unchanged."""
    return value.item() if isinstance(value, np.generic) else value


def canonical_json(value: Any) -> bytes:
    """Stable JSON bytes (sorted keys) used for hashing and seeding."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY)


def derive_seed(model_sha256: str, row: dict[str, Any], method: str, options: dict[str, Any]) -> int:
    """A deterministic 31-bit seed from the request, so repeated requests agree."""
    digest = hashlib.sha256(
        canonical_json({"model": model_sha256, "row": row, "method": method, "options": options})
    ).digest()
    return int.from_bytes(digest[:4], "big") & MAX_SEED
