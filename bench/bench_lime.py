"""LIME side by side: our ``lime`` method vs ``lime.lime_tabular.LimeTabularExplainer`` with its defaults.

Run from the repository root::

    python bench/bench_lime.py [--rows 20] [--seeds 10] [--no-write]

Both explain P("good") of the German-credit model for the same query rows
with the same background sample. The lime package gets the categoricals
label-encoded (its required input), its default quartile discretizer, 5,000
samples and ``num_features`` covering every feature; each seed gets its own
explainer (construction is not timed). Reported per method: median latency of
one single-row explanation, mean pairwise Jaccard of the top-5 features over
the seeds (averaged over rows), and the mean local R² each reports for its own
surrogate. Prints a markdown table and updates the "LIME" section of
``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import itertools
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import write_section  # noqa: E402
from explain_service.explainers.lime import LimeExplainer, LimeOptions  # noqa: E402
from tests._german_fixture import german_model, query_rows  # noqa: E402

SECTION = "LIME"
TOP_K = 5
GOOD = 1

# One explanation: (query row, seed) -> (ordered weights per feature index, local R²).
Run = Callable[[pd.DataFrame, int], tuple[np.ndarray, float]]


def ours(model: Any, num_samples: int) -> Run:
    explainer = LimeExplainer()
    base = LimeOptions().load({"num_samples": num_samples})

    def run(query: pd.DataFrame, seed: int) -> tuple[np.ndarray, float]:
        result = explainer.explain(model, query, np.array([GOOD]), {**base, "seed": seed})[0]
        return np.array(list(result["weights"].values())), float(result["score"])

    return run


def lime_package(model: Any, seeds: int) -> Run:
    from lime.lime_tabular import LimeTabularExplainer

    features = model.schema.features
    categorical = [j for j, f in enumerate(features) if not f.is_numeric]
    names = {j: list(features[j].categories or ()) for j in categorical}

    def encode(frame: pd.DataFrame) -> np.ndarray:
        out = np.zeros((len(frame), len(features)))
        for j, f in enumerate(features):
            if j in names:
                out[:, j] = frame[f.name].map({c: k for k, c in enumerate(names[j])}).to_numpy()
            else:
                out[:, j] = frame[f.name].to_numpy(dtype=float)
        return out

    def decode(data: np.ndarray) -> pd.DataFrame:
        cols: dict[str, Any] = {}
        for j, f in enumerate(features):
            if j in names:
                cols[f.name] = np.array(names[j], dtype=object)[data[:, j].astype(int)]
            elif f.kind == "integer":
                cols[f.name] = np.rint(data[:, j]).astype("int64")
            else:
                cols[f.name] = data[:, j]
        return pd.DataFrame(cols)

    background = encode(model.background)
    explainers = [
        LimeTabularExplainer(
            background,
            feature_names=[f.name for f in features],
            categorical_features=categorical,
            categorical_names=names,
            class_names=list(model.class_names),
            random_state=seed,
        )
        for seed in range(seeds)
    ]

    def predict(data: np.ndarray) -> np.ndarray:
        return model.predict_proba(decode(data))

    def run(query: pd.DataFrame, seed: int) -> tuple[np.ndarray, float]:
        exp = explainers[seed].explain_instance(
            encode(query)[0], predict, labels=(GOOD,), num_features=len(features)
        )
        weights = np.zeros(len(features))
        for j, w in exp.local_exp[GOOD]:
            weights[j] = w
        return weights, float(exp.score)

    return run


def top(weights: np.ndarray) -> frozenset[int]:
    return frozenset(int(i) for i in np.argsort(-np.abs(weights), kind="stable")[:TOP_K])


def measure_all(methods: dict[str, Run], rows: pd.DataFrame, seeds: int) -> list[dict[str, Any]]:
    """Every method on every row and seed, interleaved so that machine load hits them alike."""
    for run in methods.values():
        run(rows.iloc[[0]], 0)  # warm-up
    latency: dict[str, list[float]] = {name: [] for name in methods}
    scores: dict[str, list[float]] = {name: [] for name in methods}
    jaccard: dict[str, list[float]] = {name: [] for name in methods}
    for i in range(len(rows)):
        query = rows.iloc[[i]]
        tops: dict[str, list[frozenset[int]]] = {name: [] for name in methods}
        for seed in range(seeds):
            for name, run in methods.items():
                start = time.perf_counter()
                weights, score = run(query, seed)
                latency[name].append(time.perf_counter() - start)
                scores[name].append(score)
                tops[name].append(top(weights))
        for name in methods:
            pairs = list(itertools.combinations(tops[name], 2))
            jaccard[name].append(float(np.mean([len(a & b) / len(a | b) for a, b in pairs])))
    return [
        {
            "method": name,
            "latency_ms": statistics.median(latency[name]) * 1000,
            "jaccard": float(np.mean(jaccard[name])),
            "jaccard_min": float(np.min(jaccard[name])),
            "r2": float(np.mean(scores[name])),
        }
        for name in methods
    ]


def table(results: list[dict[str, Any]], base: float) -> str:
    lines = [
        "| method | latency median (ms) | vs lime | top-5 Jaccard (mean) | top-5 Jaccard (worst row) "
        "| local R² (mean) |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['method']} | {r['latency_ms']:.1f} | {r['latency_ms'] / base:.2f}x | {r['jaccard']:.3f} "
            f"| {r['jaccard_min']:.3f} | {r['r2']:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    model = german_model()
    rows = query_rows(model, args.rows)
    methods = {
        "lime 0.2.0.1, defaults (5000 samples)": lime_package(model, args.seeds),
        "ours, defaults (2048 samples)": ours(model, 2048),
        "ours, 1024 samples": ours(model, 1024),
        "ours, 5000 samples": ours(model, 5000),
    }
    results = measure_all(methods, rows, args.seeds)
    lime_row, ours_row = results[0], results[1]
    goals = "\n".join(
        [
            f"- top-5 Jaccard over {args.seeds} seeds: **{ours_row['jaccard']:.3f}** vs lime "
            f"{lime_row['jaccard']:.3f} (goal >= 0.9)",
            f"- local R²: **{ours_row['r2']:.3f}** vs lime {lime_row['r2']:.3f} (goal: no lower than lime's)",
            f"- latency: **{ours_row['latency_ms'] / lime_row['latency_ms']:.2f}x** lime's "
            f"({ours_row['latency_ms']:.1f} vs {lime_row['latency_ms']:.1f} ms; goal <= 0.5x)",
        ]
    )
    out = table(results, lime_row["latency_ms"]) + "\n\n" + goals
    print(out)
    if not args.no_write:
        import lime
        import xgboost

        body = (
            f"lime {getattr(lime, '__version__', '0.2.0.1')}, xgboost {xgboost.__version__}, "
            f"Python {platform.python_version()}. German credit, XGBoost in a one-hot Pipeline, explaining "
            f'P("good") for {args.rows} rows with {args.seeds} seeds each; the methods run interleaved, row by '
            "row and seed by seed. Latency is one single-row explanation (median). Jaccard is the mean pairwise "
            "Jaccard of the top-5 features over the seeds, averaged over rows (worst row alongside). Local R² "
            "is what each method reports for its own weighted surrogate, on its own neighbourhood (lime's "
            "spans the background distribution through quartile bins; ours is local to the instance).\n\n"
            f"{out}\n"
        )
        write_section(SECTION, body, f"python bench/bench_lime.py --rows {args.rows} --seeds {args.seeds}")


if __name__ == "__main__":
    main()
