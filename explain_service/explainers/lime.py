"""Tabular LIME in the original feature space.

For each row a neighbourhood is sampled around the instance, the model scores
it in one batched call, and a weighted ridge surrogate is fitted on an
interpretable representation with one column per original feature:

- numeric and integer features: ``(value - instance) / background std``, so a
  weight is the local change of the output per background standard deviation;
- categorical and boolean features: 1 when the sample keeps the instance's
  value, else 0, so a weight is what the instance's own value adds compared
  with the other values seen in the background.

``contributions`` turn the weights into what each feature's value adds at this
instance compared with an average background row (see :func:`contributions`);
they, not the raw slopes, are what plain-language reasons should rank.

Why not ``lime.lime_tabular.LimeTabularExplainer`` itself: it draws plain
pseudo-random samples from the whole training distribution, most of them far
from the instance where its distance kernel then gives them little weight, and
its default quartile discretizer reduces each numeric feature to four bins; so
its top features change from seed to seed and its local fit is poor (see
``bench/RESULTS.md``). Here numeric features are perturbed with a
scrambled Sobol sequence (inverse normal) in a standardized space with
background-scaled widths, categories are switched with a fixed probability to
other categories drawn by their background frequencies (again from the Sobol
coordinates), and every sample counts fully: the sampling distribution is the
locality kernel. The surrogate is a closed-form weighted ridge with a fixed
small alpha (the same model lime's ``LimeBase`` fits through scikit-learn,
without its per-call overhead).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from marshmallow import Schema, ValidationError, fields, validate, validates
from scipy.special import ndtri
from scipy.stats import qmc

from explain_service.deadline import check_deadline
from explain_service.explainers._tabular import (
    MAX_BATCH_ROWS,
    FeatureStats,
    background_stats,
    make_frame,
    model_output,
    resolve_seed,
    row_dicts,
    samples_background,
)
from explain_service.explainers.base import MAX_SEED, ModelLike, seed_option
from explain_service.fields import StrictFloat
from explain_service.registry.model import Rows, frame_of

MAX_NUM_SAMPLES = 20_000
TOP_K = 5
_RIDGE_ALPHA = 1e-2  # in units of the (mean-one) sample weights; only keeps constant columns well-posed


class LimeOptions(Schema):
    """Options of the ``lime`` method."""

    num_samples = fields.Integer(
        strict=True,
        load_default=2048,
        validate=validate.Range(
            min=100, max=MAX_NUM_SAMPLES, error="num_samples must be between {min} and {max}."
        ),
        metadata={"description": "Neighbourhood size; powers of two suit the Sobol sampler best."},
    )
    width = StrictFloat(
        load_default=0.5,
        validate=validate.Range(min=0.05, max=5.0, error="width must be between {min} and {max}."),
        metadata={"description": "Numeric perturbation scale, in background standard deviations."},
    )
    change_probability = StrictFloat(
        load_default=0.5,
        validate=validate.Range(
            min=0.05, max=0.95, error="change_probability must be between {min} and {max}."
        ),
        metadata={"description": "Chance that a sample switches a categorical or boolean feature."},
    )
    kernel_width = StrictFloat(
        allow_none=True,
        load_default=None,
        validate=validate.Range(min=0.01, max=100.0, error="kernel_width must be between {min} and {max}."),
        metadata={
            "description": "Optional exponential kernel on the standardized distance; "
            "null weighs all samples equally (the sampling is already local)."
        },
    )
    stability = fields.Integer(
        strict=True,
        load_default=0,
        validate=validate.Range(min=0, max=10, error="stability must be between {min} and {max}."),
        metadata={"description": "Repeat with this many seeds and report the top-5 agreement; 0 is off."},
    )
    seed = seed_option()

    @validates("stability")
    def _stability_is_off_or_several(self, value: int, **_: Any) -> None:
        if value == 1:
            raise ValidationError("stability must be 0 (off) or between 2 and 10 seeds.")


@dataclass(frozen=True)
class Surrogate:
    """A fitted local linear model."""

    intercept: float
    weights: np.ndarray
    score: float
    prediction_local: float


def _sobol(n: int, d: int, seed: int) -> np.ndarray:
    """``n`` scrambled Sobol points in (0, 1)^d (the first n of the next power of two)."""
    m = max(int(np.ceil(np.log2(n))), 1)
    return qmc.Sobol(d, scramble=True, rng=seed).random_base2(m)[:n]


def neighbourhood(
    stats: tuple[FeatureStats, ...],
    row: dict[str, Any],
    num_samples: int,
    seed: int,
    width: float,
    change_probability: float,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Sample ``num_samples`` perturbations of ``row``.

    Returns the sampled values per feature (raw, model-ready) and the
    interpretable matrix ``Z`` of shape (num_samples, n_features).
    """
    u = _sobol(num_samples, len(stats), seed)
    z = np.empty((num_samples, len(stats)))
    columns: dict[str, np.ndarray] = {}
    for j, st in enumerate(stats):
        x = row[st.name]
        if x is None:
            # A missing value is its own state: kept (z = 1) or switched to a value seen in the background.
            columns[st.name], z[:, j] = _perturb_missing(st, u[:, j], change_probability)
            continue
        if st.feature.is_numeric:
            # Samples stay within the observed range, stretched to include the instance itself.
            low, high = min(st.low, float(x)), max(st.high, float(x))
            values = np.clip(float(x) + width * st.scale * ndtri(u[:, j]), low, high)
            if st.kind == "integer":
                values = np.rint(values)
            z[:, j] = (values - float(x)) / st.scale
            columns[st.name] = values
            continue
        assert st.values is not None and st.freqs is not None
        here = st.index_of(x)
        others = st.freqs.copy()
        if here >= 0:
            others[here] = 0.0
        idx = np.full(num_samples, here)
        if others.sum() > 0:
            cdf = np.cumsum(others) / others.sum()
            switch = u[:, j] < change_probability
            # The switching samples reuse their coordinate, rescaled to (0, 1), to pick the category.
            drawn = np.searchsorted(cdf, u[switch, j] / change_probability, side="right")
            idx[switch] = np.minimum(drawn, len(cdf) - 1)
        z[:, j] = idx == here
        columns[st.name] = np.where(idx == here, x, st.values[np.maximum(idx, 0)])
    return columns, z


def _perturb_missing(
    st: FeatureStats, u: np.ndarray, change_probability: float
) -> tuple[np.ndarray, np.ndarray]:
    """Samples of a feature missing at the instance: NaN, or a background value with ``change_probability``."""
    switch = u < change_probability
    scaled = u[switch] / change_probability
    if st.feature.is_numeric:
        pool: np.ndarray = st.grid if st.grid is not None else np.array([])
        values = np.full(len(u), np.nan)
    else:
        assert st.values is not None and st.freqs is not None
        pool = st.values
        values = np.full(len(u), np.nan, dtype=object)
    if len(pool) == 0:
        return values, np.ones(len(u))
    if st.feature.is_numeric:
        picked = np.minimum((scaled * len(pool)).astype(int), len(pool) - 1)
    else:
        assert st.freqs is not None
        cdf = np.cumsum(st.freqs) / st.freqs.sum()
        picked = np.minimum(np.searchsorted(cdf, scaled, side="right"), len(pool) - 1)
    values[switch] = pool[picked]
    return values, (~switch).astype(float)


def kernel_weights(z: np.ndarray, categorical: np.ndarray, kernel_width: float | None) -> np.ndarray:
    """Sample weights (mean one): uniform, or an exponential kernel on the standardized distance.

    The distance counts numeric offsets in background standard deviations and
    1 per switched categorical or boolean feature.
    """
    if kernel_width is None:
        return np.ones(len(z))
    dist2 = np.where(categorical, 1.0 - z, z * z).sum(axis=1)
    w = np.exp(-dist2 / kernel_width**2)
    return w / w.mean() if w.sum() > 0 else np.ones(len(z))


def fit_surrogate(z: np.ndarray, y: np.ndarray, w: np.ndarray, instance: np.ndarray) -> Surrogate:
    """Weighted ridge of ``y`` on ``z``: intercept, weights, weighted R² and the fit at ``instance``."""
    z_mean = w @ z / w.sum()
    y_mean = float(w @ y / w.sum())
    zc = z - z_mean
    yc = y - y_mean
    gram = (zc.T * w) @ zc + _RIDGE_ALPHA * np.eye(z.shape[1])
    beta = np.linalg.solve(gram, (zc.T * w) @ yc)
    total = float(w @ (yc * yc))
    resid = yc - zc @ beta
    # A locally constant output is fitted exactly by the flat surrogate.
    score = 1.0 - float(w @ (resid * resid)) / total if total > 1e-24 else 1.0
    intercept = y_mean - float(z_mean @ beta)
    return Surrogate(intercept, beta, score, intercept + float(instance @ beta))


def top_features(weights: np.ndarray, k: int = TOP_K) -> frozenset[int]:
    """Indices of the ``k`` largest absolute weights (ties broken by schema order)."""
    order = np.argsort(-np.abs(weights), kind="stable")
    return frozenset(int(i) for i in order[: min(k, len(weights))])


def mean_jaccard(sets: list[frozenset[int]]) -> float:
    """Mean pairwise Jaccard index of ``sets``."""
    pairs = list(itertools.combinations(sets, 2))
    if not pairs:
        return 1.0
    return float(np.mean([len(a & b) / len(a | b) if a | b else 1.0 for a, b in pairs]))


class LimeExplainer:
    """Tabular LIME for classifiers (any target class) and regressors."""

    name: ClassVar[str] = "lime"
    options_schema: ClassVar[type[Schema]] = LimeOptions

    def supports(self, model: ModelLike) -> bool:
        return samples_background(model)

    def explain(
        self,
        model: ModelLike,
        rows: Rows,
        targets: np.ndarray | None,
        options: dict[str, Any],
    ) -> list[dict[str, Any]]:
        """Explain each row; classifiers explain ``targets[i]`` (the predicted class when None)."""
        features = model.schema.features
        stats = background_stats(model)
        frame = frame_of(rows)
        records = row_dicts(frame, features)
        n = int(options["num_samples"])
        repeats = max(int(options.get("stability") or 0), 1)
        seeds = [resolve_seed(model, record, self.name, options) for record in records]
        # In the interpretable space the instance has zero numeric offsets and keeps every category
        # (and every missing value: those columns are indicators too).
        categorical = np.array([not f.is_numeric for f in features])
        # Rows are explained in groups whose samples fit one model call.
        group = max(1, MAX_BATCH_ROWS // (n * repeats + 1))
        results = []
        # The deadline is checked before each neighbourhood, each model chunk (in model_output) and
        # each fit: at the largest legal options (20,000 samples x 10 seeds) the longest step between
        # two checks is one chunk of MAX_BATCH_ROWS predictions, a fraction of a second.
        for lo in range(0, len(records), group):
            hi = min(lo + group, len(records))
            blocks = []
            for i in range(lo, hi):
                for r in range(repeats):
                    check_deadline()
                    seed = (seeds[i] + r) & MAX_SEED
                    width, change = float(options["width"]), float(options["change_probability"])
                    blocks.append(neighbourhood(stats, records[i], n, seed, width, change))
            # One batched model call: every sample, then the rows themselves (for their predicted class).
            columns = {
                f.name: np.concatenate([b[0][f.name] for b in blocks] + [frame[f.name].to_numpy()[lo:hi]])
                for f in features
            }
            output = model_output(model, make_frame(features, columns))
            own = output[len(blocks) * n :]
            check_deadline()
            for i in range(lo, hi):
                if model.task == "regression":
                    column = 0
                else:
                    column = int(targets[i]) if targets is not None else int(np.argmax(own[i - lo]))
                fits = []
                indicator = categorical | np.array([records[i][f.name] is None for f in features])
                instance = indicator.astype(float)
                for r in range(repeats):
                    check_deadline()
                    k = (i - lo) * repeats + r
                    z = blocks[k][1]
                    w = kernel_weights(z, indicator, options.get("kernel_width"))
                    fits.append(fit_surrogate(z, output[k * n : (k + 1) * n, column], w, instance))
                results.append(self._result(model, stats, records[i], seeds[i], n, column, fits))
        return results

    def _result(
        self,
        model: ModelLike,
        stats: tuple[FeatureStats, ...],
        record: dict[str, Any],
        seed: int,
        n: int,
        column: int,
        fits: list[Surrogate],
    ) -> dict[str, Any]:
        main = fits[0]
        names = model.schema.names
        out: dict[str, Any] = {
            "target": model.class_names[column] if model.task == "classification" else None,
            "intercept": float(main.intercept),
            "weights": {name: float(w) for name, w in zip(names, main.weights, strict=True)},
            "contributions": contributions(stats, record, main.weights),
            "score": float(main.score),
            "prediction_local": float(main.prediction_local),
            "seed": int(seed),
            "num_samples": int(n),
        }
        if len(fits) > 1:
            out["stability"] = {
                "seeds": len(fits),
                "top_k": min(TOP_K, len(names)),
                "top_k_jaccard": mean_jaccard([top_features(f.weights) for f in fits]),
            }
        return out


def contributions(
    stats: tuple[FeatureStats, ...], row: dict[str, Any], weights: np.ndarray
) -> dict[str, float]:
    """What each feature's value adds to the surrogate compared with an average background row.

    A numeric weight is a slope, so its sign alone says nothing about the instance (a short loan
    duration with a negative slope helps); ``w * (x - mean) / std`` does. A categorical weight
    scores keeping the instance's category, which a background row shares with probability ``f``,
    so the contribution is ``w * (1 - f)``; a missing value likewise, with ``f`` the background's
    share of missing values. These are the surrogate's own exact attributions
    (they sum to its value at the instance minus its mean over the background).
    """
    out = {}
    for st, w in zip(stats, weights.tolist(), strict=True):
        if row[st.name] is None:
            # The weight scores staying missing, which a background row shares with its missing share.
            out[st.name] = w * (1.0 - st.missing_share)
        elif st.feature.is_numeric:
            out[st.name] = w * (float(row[st.name]) - st.mean) / st.scale
        else:
            assert st.freqs is not None
            here = st.index_of(row[st.name])
            share = float(st.freqs[here]) if here >= 0 else 0.0
            out[st.name] = w * (1.0 - share)
    return out
