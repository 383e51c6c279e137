"""SHAP values, on the exact path the model allows.

Paths (named in every answer as ``algorithm``):

* ``xgboost_tree_path_dependent``: XGBoost's own TreeSHAP (``pred_contribs``) on
  the transformed matrix, in log-odds (margin) space.
* ``tree_interventional``: shap's interventional TreeSHAP against the
  background rows, for XGBoost in probability space.
* ``tree_path_dependent``: shap's TreeSHAP for scikit-learn tree ensembles, in
  the space the trees predict in (probability for forests, log-odds for
  gradient boosting, raw for regressors).
* ``linear``: the exact linear formula ``coef * (x - mean(background))`` on the
  transformed matrix (independent features), in log-odds or raw space.
* ``exact_enumeration`` / ``permutation``: model-agnostic Shapley values on the
  original features against a small background summary: every coalition when
  ``2**M * B`` evaluations fit in ``max_evals``, antithetic permutation sampling
  within that budget otherwise. Both satisfy local accuracy by construction.

Attributions on transformed columns are summed back to the original input
features, so one-hot columns appear as the single feature the caller sent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from marshmallow import Schema, fields, validate

from explain_service.deadline import check_deadline
from explain_service.errors import OptionError
from explain_service.explainers.base import derive_seed, plain, seed_option
from explain_service.registry.model import LoadedModel, Rows, frame_of

OUTPUTS = ("log_odds", "probability", "raw")
AGNOSTIC_BACKGROUND = 16
TREE_PROBABILITY_BACKGROUND = 100


COALITION_ROWS = 16_384  # model rows per call on the model-agnostic path


class ShapOptions(Schema):
    """Options of the ``shap`` method."""

    output = fields.String(
        load_default=None,
        validate=validate.OneOf(OUTPUTS),
        metadata={"description": "Output space; defaults to the model's native one."},
    )
    max_evals = fields.Integer(
        strict=True,
        load_default=20_000,
        validate=validate.Range(min=500, max=200_000),
        metadata={"description": "Model-agnostic path: budget of model evaluations per row."},
    )
    seed = seed_option("Model-agnostic path: seed of the permutation sampler.")


def native_output(model: LoadedModel) -> str:
    """The output space the model's exact path works in."""
    if not model.is_classifier:
        return "raw"
    if model.family == "agnostic":
        return "probability"
    if model.library == "sklearn" and model.family == "tree":
        return "log_odds" if type(model.estimator).__name__.startswith("GradientBoosting") else "probability"
    return "log_odds"


def supported_outputs(model: LoadedModel) -> tuple[str, ...]:
    """Output spaces this model can be explained in exactly."""
    if not model.is_classifier:
        return ("raw",)
    if model.family == "tree" and model.library == "sklearn":
        return (native_output(model),)
    if model.family == "tree" and (len(model.class_names) > 2 or model.native_categorical):
        # shap's interventional TreeSHAP handles neither multiclass boosters nor categorical splits.
        return ("log_odds",)
    return ("log_odds", "probability")


def choose_path(model: LoadedModel, output: str) -> str:
    """The algorithm that computes SHAP values for ``model`` in ``output`` space."""
    if model.family == "tree":
        if model.library != "sklearn":
            return "xgboost_tree_path_dependent" if output in ("log_odds", "raw") else "tree_interventional"
        return "tree_path_dependent"
    if model.family == "linear" and output in ("log_odds", "raw"):
        return "linear"
    return "model_agnostic"


class ShapExplainer:
    """Exact SHAP values per original input feature."""

    name: ClassVar[str] = "shap"
    options_schema: ClassVar[type[Schema]] = ShapOptions

    def supports(self, model: LoadedModel) -> bool:
        return True

    def attributions(
        self,
        model: LoadedModel,
        rows: Rows,
        targets: np.ndarray | None,
        options: dict[str, Any],
    ) -> ShapArrays:
        """SHAP values as arrays (one row per input row, one column per input feature)."""
        output = options.get("output") or native_output(model)
        if output not in supported_outputs(model):
            raise OptionError(
                self.name,
                "output",
                f"output {output!r} is not available for this model; use one of {', '.join(supported_outputs(model))}",
            )
        path = choose_path(model, output)
        params: dict[str, Any] = {
            "background_sha256": model.manifest.files.get(model.manifest.background_file)
        }
        per_row: list[dict[str, Any]] | None = None
        if path == "model_agnostic":
            values, base, out, per_row = _agnostic(model, frame_of(rows), targets, output, options)
        else:
            X = model.matrix_of(rows)
            if path == "xgboost_tree_path_dependent":
                values, base, out = _xgboost_contribs(model, rows, targets)
            elif path == "tree_interventional":
                values, base, out = _tree_interventional(model, X, targets)
                params["background_size"] = min(len(model.background), TREE_PROBABILITY_BACKGROUND)
            elif path == "tree_path_dependent":
                values, base, out = _sklearn_tree(model, X, targets)
            else:
                values, base, out = _linear(model, X, targets)
                params["background_size"] = len(model.background)
            values = _sum_to_inputs(model, values)
        return ShapArrays(output, path, values, np.asarray(base, dtype=np.float64), out, params, per_row)

    def explain(
        self,
        model: LoadedModel,
        rows: Rows,
        targets: np.ndarray | None,
        options: dict[str, Any],
    ) -> list[dict[str, Any]]:
        arrays = self.attributions(model, rows, targets, options)
        names = model.schema.names
        residuals = arrays.residuals()
        results = []
        for i in range(len(rows)):
            extra = dict(arrays.per_row[i]) if arrays.per_row is not None else {}
            results.append(
                {
                    "target": model.class_names[int(targets[i])] if targets is not None else None,
                    "output": arrays.output,
                    "base_value": float(arrays.base[i]),
                    "values": dict(zip(names, arrays.values[i].tolist(), strict=True)),
                    "additivity_residual": float(residuals[i]),
                    "algorithm": extra.pop("algorithm", arrays.algorithm),
                    "params": {**arrays.params, **extra},
                }
            )
        return results


@dataclass
class ShapArrays:
    """SHAP values of many rows in columnar form (what the batch job writes)."""

    output: str
    algorithm: str
    values: np.ndarray  # (n, n_features)
    base: np.ndarray  # (n,)
    out: np.ndarray  # (n,) the model's own output in ``output`` space
    params: dict[str, Any]
    per_row: list[dict[str, Any]] | None = None

    def residuals(self) -> np.ndarray:
        """output - base_value - sum(values), per row (exactly summed)."""
        sums = np.array([math.fsum(r) for r in self.values.tolist()]) if len(self.values) else np.zeros(0)
        return self.out - self.base - sums


def _sum_to_inputs(model: LoadedModel, column_values: np.ndarray) -> np.ndarray:
    """Sum attributions of transformed columns into their original features."""
    assert model.feature_index is not None
    index = model.feature_index
    if len(index) == len(model.schema.features) and np.array_equal(index, np.arange(len(index))):
        return column_values
    membership = model.cached(
        "shap.membership",
        lambda: np.eye(len(model.schema.features))[index],  # (n_columns, n_features) of 0/1
    )
    return column_values @ membership


def _pick_binary(values: np.ndarray, base: np.ndarray, out: np.ndarray, targets: np.ndarray | None):
    """Single-output binary models explain class 1; class 0 is the mirror image in log-odds."""
    if targets is None:
        return values, base, out
    sign = np.where(targets == 0, -1.0, 1.0)
    return values * sign[:, None], base * sign, out * sign


def _xgboost_contribs(model: LoadedModel, rows: Rows, targets: np.ndarray | None):
    """XGBoost's TreeSHAP and the model's own margin, from the request's one ``DMatrix``.

    The margin is XGBoost's prediction, not the contributions' sum, so the additivity residual
    measures TreeSHAP against the model. Predicting from the ``DMatrix`` the prediction already
    used reads XGBoost's cached margin instead of walking the trees again. The ``DMatrix`` holds
    the booster's own feature names, so they are not validated again.
    """
    booster = model.booster()
    dm = model.dmatrix_of(rows)
    contribs = np.asarray(booster.predict(dm, pred_contribs=True, validate_features=False), dtype=np.float64)
    margin = np.asarray(booster.predict(dm, output_margin=True, validate_features=False), dtype=np.float64)
    if contribs.ndim == 3:  # multiclass: (n, K, F+1)
        assert targets is not None
        idx = np.arange(len(rows))
        picked = contribs[idx, targets]
        return picked[:, :-1], picked[:, -1], margin[idx, targets]
    return _pick_binary(contribs[:, :-1], contribs[:, -1], margin, targets if model.is_classifier else None)


def _tree_interventional(model: LoadedModel, X: np.ndarray, targets: np.ndarray | None):
    import shap

    def build() -> Any:
        bg = model.transform(model.background.iloc[:TREE_PROBABILITY_BACKGROUND])
        return shap.TreeExplainer(
            model.booster(), data=bg, model_output="probability", feature_perturbation="interventional"
        )

    explainer = model.cached("shap.tree_interventional", build)
    sv = np.asarray(explainer.shap_values(X, check_additivity=False), dtype=np.float64)
    base1 = float(np.ravel(explainer.expected_value)[0])
    proba = model.proba_matrix(X)
    t = targets if targets is not None else np.ones(len(X), dtype=int)
    sign = np.where(t == 0, -1.0, 1.0)
    base = np.where(t == 0, 1.0 - base1, base1)
    return sv * sign[:, None], base, proba[np.arange(len(X)), t]


def _sklearn_tree(model: LoadedModel, X: np.ndarray, targets: np.ndarray | None):
    import shap

    explainer = model.cached("shap.tree", lambda: shap.TreeExplainer(model.estimator))
    sv = np.asarray(explainer.shap_values(X, check_additivity=False), dtype=np.float64)
    expected = np.ravel(np.asarray(explainer.expected_value, dtype=np.float64))
    idx = np.arange(len(X))
    if not model.is_classifier:
        return sv.reshape(len(X), -1), np.full(len(X), expected[0]), model.value_matrix(X)
    assert targets is not None
    if native_output(model) == "probability":
        proba = model.proba_matrix(X)
        return sv[idx, :, targets], expected[targets], proba[idx, targets]
    margin = model.margin_matrix(X)
    if sv.ndim == 3:
        return sv[idx, :, targets], expected[targets], margin[idx, targets]
    return _pick_binary(sv, np.full(len(X), expected[0]), margin, targets)


def _linear(model: LoadedModel, X: np.ndarray, targets: np.ndarray | None):
    est = model.estimator

    def build() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        mean = model.transform(model.background).mean(axis=0)
        coef = np.atleast_2d(np.asarray(est.coef_, dtype=np.float64))
        intercept = np.atleast_1d(np.asarray(est.intercept_, dtype=np.float64))
        return mean, coef, intercept

    mean, coef, intercept = model.cached("shap.linear", build)
    margin = model.margin_matrix(X)
    if coef.shape[0] == 1:
        values = coef[0] * (X - mean)
        base = np.full(len(X), intercept[0] + coef[0] @ mean)
        return _pick_binary(values, base, margin.reshape(-1), targets if model.is_classifier else None)
    assert targets is not None
    idx = np.arange(len(X))
    c = coef[targets]
    values = c * (X - mean)
    base = intercept[targets] + c @ mean
    return values, base, margin[idx, targets]


# -- model-agnostic ---------------------------------------------------------------------------------


def _agnostic(
    model: LoadedModel, rows: pd.DataFrame, targets: np.ndarray | None, output: str, options: dict[str, Any]
):
    bg = model.background
    if len(bg) > AGNOSTIC_BACKGROUND:
        bg = bg.sample(AGNOSTIC_BACKGROUND, random_state=0)
    bg_cols = {n: bg[n].to_numpy() for n in model.schema.names}
    names = model.schema.names
    m, b = len(names), len(bg)
    values = np.zeros((len(rows), m))
    base = np.zeros(len(rows))
    out = np.zeros(len(rows))
    per_row: list[dict[str, Any]] = []
    max_evals = int(options.get("max_evals") or 20_000)
    for i in range(len(rows)):
        check_deadline()
        x = {n: rows[n].iloc[i] for n in names}
        target = int(targets[i]) if targets is not None else None

        def f(masks: np.ndarray, x: dict[str, Any] = x, target: int | None = target) -> np.ndarray:
            return _coalition_values(model, x, bg_cols, names, masks, b, target, output)

        info: dict[str, Any] = {"background_size": b, "max_evals": max_evals}
        if (2**m) * b <= max_evals:
            phi, v_empty = _exact_shapley(f, m)
            info["algorithm"] = "exact_enumeration"
            info["evaluations"] = (2**m) * b
        else:
            seed = options.get("seed")
            if seed is None:
                row_json = {n: plain(x[n]) for n in names}
                seed = derive_seed(
                    model.sha256, row_json, "shap", {k: v for k, v in options.items() if k != "seed"}
                )
            n_perm = max(1, (max_evals - 2 * b) // (2 * max(m - 1, 1) * b))
            phi, v_empty = _permutation_shapley(f, m, n_perm, seed)
            info.update(
                algorithm="permutation",
                permutations=n_perm,
                seed=seed,
                evaluations=(2 * n_perm * (m - 1) + 2) * b,
            )
        values[i], base[i] = phi, v_empty
        out[i] = _own_output(model, rows.iloc[[i]], target, output)
        per_row.append(info)
    return values, base, out, per_row


def _transform_output(p: np.ndarray, output: str) -> np.ndarray:
    if output == "log_odds":
        p = np.clip(p, 1e-15, 1 - 1e-15)
        return np.log(p) - np.log1p(-p)
    return p


def _own_output(model: LoadedModel, row: pd.DataFrame, target: int | None, output: str) -> float:
    if target is None:
        return float(model.predict_value(row)[0])
    return float(_transform_output(model.predict_proba(row)[:, target], output)[0])


def _coalition_values(
    model: LoadedModel,
    x: dict[str, Any],
    bg_cols: dict[str, np.ndarray],
    names: list[str],
    masks: np.ndarray,
    b: int,
    target: int | None,
    output: str,
) -> np.ndarray:
    """Mean model output over the background for each coalition (True = feature from x).

    Evaluated in chunks of at most :data:`COALITION_ROWS` model rows, so a request's deadline is
    checked between model calls of bounded length (the means do not depend on the chunking).
    """
    step = max(1, COALITION_ROWS // b)
    if len(masks) > step:
        parts = [
            _coalition_values(model, x, bg_cols, names, masks[lo : lo + step], b, target, output)
            for lo in range(0, len(masks), step)
        ]
        return np.concatenate(parts)
    check_deadline()
    c = len(masks)
    frame = {}
    for j, n in enumerate(names):
        take = np.repeat(masks[:, j], b)
        col = np.tile(bg_cols[n], c)
        frame[n] = np.where(take, x[n], col).astype(bg_cols[n].dtype)
    rows = pd.DataFrame(frame)
    if target is None:
        preds = model.predict_value(rows)
    else:
        preds = _transform_output(model.predict_proba(rows)[:, target], output)
    return preds.reshape(c, b).mean(axis=1)


def _exact_shapley(f: Any, m: int) -> tuple[np.ndarray, float]:
    """Shapley values from all 2**m coalitions (coalition k holds feature j when bit j is set)."""
    ids = np.arange(2**m)
    masks = ((ids[:, None] >> np.arange(m)[None, :]) & 1).astype(bool)
    v = f(masks)
    sizes = masks.sum(axis=1)
    weights = np.array([math.factorial(s) * math.factorial(m - s - 1) / math.factorial(m) for s in range(m)])
    phi = np.zeros(m)
    for j in range(m):
        without = ids[~masks[:, j]]
        phi[j] = float(np.sum(weights[sizes[without]] * (v[without | (1 << j)] - v[without])))
    return phi, float(v[0])


def _permutation_shapley(f: Any, m: int, n_perm: int, seed: int) -> tuple[np.ndarray, float]:
    """Antithetic permutation sampling: each permutation walked forwards and backwards."""
    rng = np.random.default_rng(seed)
    perms = [rng.permutation(m) for _ in range(n_perm)]
    walks = perms + [p[::-1] for p in perms]
    masks = np.zeros((len(walks) * (m - 1), m), dtype=bool)
    for w, p in enumerate(walks):
        current = np.zeros(m, dtype=bool)
        for k in range(m - 1):
            current[p[k]] = True
            masks[w * (m - 1) + k] = current
    ends = f(np.array([np.zeros(m, dtype=bool), np.ones(m, dtype=bool)]))
    v_empty, v_full = float(ends[0]), float(ends[1])
    v = f(masks).reshape(len(walks), m - 1) if m > 1 else np.zeros((len(walks), 0))
    phi = np.zeros(m)
    for w, p in enumerate(walks):
        chain = np.concatenate([[v_empty], v[w], [v_full]])
        phi[p] += np.diff(chain)
    return phi / len(walks), v_empty
