"""Counterfactuals side by side: ours vs dice-ml (random and genetic) on the German-credit model.

Run from the repository root::

    python bench/bench_counterfactual.py [--rows 20] [--no-write]

All methods get the same model, the same query rows (predicted "bad", goal
"good"), the same count and the same mutable features (dice-ml's
``features_to_vary``; it has no notion of one-way changes, so ``age`` may
fall there). Every returned counterfactual is re-scored with the model and
checked against the manifest constraints; proximity and diversity use our
metric (numeric changes in MAD units plus one per categorical mismatch).

A second table runs the same queries under the constraints the demo model
ships (``registry/demo.py``: ``sex`` and ``job`` immutable, ``age`` only up,
ranges for ``duration`` and ``credit_amount``, ``not_known`` never proposed
for the two accounts), given to dice-ml in its own terms: ``features_to_vary``
without the immutable features and a ``permitted_range`` per query (the ranges,
``age`` from the query's own age up, the accounts' allowed categories). Every
violation of those constraints is counted, ``forbidden`` categories included.

Prints markdown tables and updates the "Counterfactuals" section of
``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import logging
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
from explain_service.explainers._tabular import background_stats  # noqa: E402
from explain_service.explainers.counterfactual import (  # noqa: E402
    CounterfactualExplainer,
    CounterfactualOptions,
    resolve_rules,
)
from explain_service.registry.demo import GERMAN_CONSTRAINTS as DEMO_CONSTRAINTS  # noqa: E402
from explain_service.registry.schema import infer_schema  # noqa: E402
from tests._german_fixture import GERMAN_NUMERIC, german_model  # noqa: E402

COUNT = 4
SECTION = "Counterfactuals"


def with_demo_constraints(model: Any) -> Any:
    """The same fitted model and background under the demo model's shipped constraints."""
    schema = infer_schema(model.background, constraints=DEMO_CONSTRAINTS)
    return dataclasses.replace(model, name=f"{model.name}_demo_constraints", schema=schema, sha256="")


def dice_permitted_range(model: Any, checker: Checker) -> Callable[[pd.Series], dict[str, list[Any]]]:
    """The model's constraints as dice-ml's ``permitted_range`` for one query.

    Ranges as they are; a one-way numeric change as a range starting (or ending) at the query's
    own value; forbidden categories left out of the allowed ones.
    """
    lows = {st.name: float(model.data[st.name].min()) for st in checker.stats if st.feature.is_numeric}
    highs = {st.name: float(model.data[st.name].max()) for st in checker.stats if st.feature.is_numeric}

    def permitted(query: pd.Series) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {}
        for st, rule in zip(checker.stats, checker.rules, strict=True):
            if not rule.mutable:
                continue
            if st.feature.is_numeric:
                low, high = max(rule.low, lows[st.name]), min(rule.high, highs[st.name])
                if rule.direction == "increase":
                    low = max(low, float(query[st.name]))
                elif rule.direction == "decrease":
                    high = min(high, float(query[st.name]))
                if (low, high) != (lows[st.name], highs[st.name]):
                    out[st.name] = [low, high]
            elif rule.forbidden:
                cats = list(st.feature.categories or ())
                out[st.name] = [c for k, c in enumerate(cats) if k not in rule.forbidden]
        return out

    return permitted


def query_rows(model: Any, n: int) -> pd.DataFrame:
    """``n`` rows the model predicts "bad" (so "good" is a real change)."""
    proba = model.predict_proba(model.data)[:, 1]
    rows = model.data[proba < 0.5].sample(n=n, random_state=0).reset_index(drop=True)
    return model.schema.coerce(rows)


class Checker:
    """Re-scores counterfactual rows and measures them with our metric and the manifest's constraints."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.stats = background_stats(model)
        self.rules = resolve_rules(model.schema, {})

    def distance(self, a: pd.Series, b: pd.Series) -> float:
        total = 0.0
        for st in self.stats:
            if st.feature.is_numeric:
                total += abs(float(a[st.name]) - float(b[st.name])) / st.mad
            else:
                total += float(str(a[st.name]) != str(b[st.name]))
        return total

    def violations(self, query: pd.Series, cf: pd.Series) -> int:
        count = 0
        for st, rule in zip(self.stats, self.rules, strict=True):
            before, after = query[st.name], cf[st.name]
            if st.feature.is_numeric:
                changed = float(after) != float(before)
                if st.kind == "integer" and float(after) != round(float(after)):
                    count += 1
                if changed and rule.direction == "increase" and float(after) < float(before):
                    count += 1
                if changed and rule.direction == "decrease" and float(after) > float(before):
                    count += 1
                if changed and not (rule.low <= float(after) <= rule.high):
                    count += 1
            else:
                changed = str(after) != str(before)
                categories = list(st.feature.categories or ())
                if st.kind == "categorical":
                    unknown = str(after) not in categories
                    count += int(unknown or (changed and categories.index(str(after)) in rule.forbidden))
            if changed and not rule.mutable:
                count += 1
        return count

    def measure(self, query: pd.Series, cfs: pd.DataFrame) -> dict[str, Any]:
        if len(cfs) == 0:
            return {"found": 0, "valid": [], "violations": 0, "changed": [], "proximity": [], "diversity": []}
        frame = self.model.schema.coerce(cfs[self.model.schema.names].reset_index(drop=True))
        valid = list(self.model.predict_proba(frame)[:, 1] > 0.5)
        rows = [frame.iloc[k] for k in range(len(frame))]
        changed = [
            sum(
                (str(r[c]) != str(query[c]))
                if not self.model.schema[c].is_numeric
                else float(r[c]) != float(query[c])
                for c in self.model.schema.names
            )
            for r in rows
        ]
        return {
            "found": len(rows),
            "valid": valid,
            "violations": sum(self.violations(query, r) for r in rows),
            "changed": changed,
            "proximity": [self.distance(query, r) for r in rows],
            "diversity": [self.distance(a, b) for a, b in itertools.combinations(rows, 2)],
        }


def ours(model: Any) -> Callable[[pd.DataFrame], pd.DataFrame]:
    """Our explainer as ``query -> counterfactual rows``."""
    explainer = CounterfactualExplainer()
    options = CounterfactualOptions().load({"count": COUNT})

    def run(query: pd.DataFrame) -> pd.DataFrame:
        result = explainer.explain(model, query, None, options)[0]
        return pd.DataFrame([c["instance"] for c in result["counterfactuals"]])

    return run


def dice(
    model: Any,
    checker: Checker,
    method: str,
    permitted: Callable[[pd.Series], dict[str, list[Any]]] | None = None,
) -> Callable[[pd.DataFrame], pd.DataFrame]:
    """dice-ml as ``query -> counterfactual rows``, told the same mutable features (and ranges)."""
    import dice_ml

    full = model.data.copy()
    full["risk"] = model.target
    data = dice_ml.Data(dataframe=full, continuous_features=list(GERMAN_NUMERIC), outcome_name="risk")
    engine = dice_ml.Dice(data, dice_ml.Model(model=model.estimator, backend="sklearn"), method=method)
    vary = [r for r, rule in zip(model.schema.names, checker.rules, strict=True) if rule.mutable]
    kwargs: dict[str, Any] = {"total_CFs": COUNT, "desired_class": "opposite", "features_to_vary": vary}
    if method == "random":
        kwargs["random_seed"] = 0

    def run(query: pd.DataFrame) -> pd.DataFrame:
        extra = {"permitted_range": permitted(query.iloc[0])} if permitted is not None else {}
        try:
            result = engine.generate_counterfactuals(query, verbose=False, **kwargs, **extra)
            cfs = result.cf_examples_list[0].final_cfs_df
        except Exception:  # dice-ml raises when it finds nothing
            cfs = None
        return cfs if cfs is not None else pd.DataFrame()

    return run


def measure_all(
    methods: dict[str, Callable[[pd.DataFrame], pd.DataFrame]],
    rows: pd.DataFrame,
    checker: Checker,
    repeats: int,
) -> dict[str, tuple[list[float], list[dict[str, Any]]]]:
    """Run every method on every query, interleaved so that machine load hits them alike.

    A query's latency is the best of ``repeats`` runs.
    """
    for run in methods.values():
        run(rows.iloc[[0]])  # warm-up
    out: dict[str, tuple[list[float], list[dict[str, Any]]]] = {name: ([], []) for name in methods}
    for i in range(len(rows)):
        query = rows.iloc[[i]]
        for name, run in methods.items():
            best, cfs = float("inf"), pd.DataFrame()
            for _ in range(repeats):
                start = time.perf_counter()
                cfs = run(query)
                best = min(best, time.perf_counter() - start)
            out[name][0].append(best)
            out[name][1].append(checker.measure(rows.iloc[i], cfs))
    return out


def summarize(name: str, latency: list[float], measured: list[dict[str, Any]]) -> dict[str, Any]:
    def flat(key: str) -> list[Any]:
        return [v for m in measured for v in m[key]]

    valid = flat("valid")
    return {
        "method": name,
        "found": sum(m["found"] for m in measured),
        "validity": float(np.mean(valid)) if valid else float("nan"),
        "violations": sum(m["violations"] for m in measured),
        "changed": float(np.mean(flat("changed"))),
        "proximity": float(np.mean(flat("proximity"))),
        "diversity": float(np.mean(flat("diversity"))) if flat("diversity") else float("nan"),
        "latency_ms": statistics.median(latency) * 1000,
    }


def table(results: list[dict[str, Any]], base: float) -> str:
    lines = [
        "| method | CFs found | validity | constraint violations | features changed | proximity | diversity "
        "| latency median (ms) | speed vs dice random |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['method']} | {r['found']} | {r['validity']:.3f} | {r['violations']} | {r['changed']:.2f} "
            f"| {r['proximity']:.3f} | {r['diversity']:.3f} | {r['latency_ms']:.1f} "
            f"| {base / r['latency_ms']:.1f}x |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3, help="runs per query; the best one counts")
    parser.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)

    model = german_model()
    rows = query_rows(model, args.rows)
    checker = Checker(model)
    methods = {
        "ours": ours(model),
        "dice-ml random": dice(model, checker, "random"),
        "dice-ml genetic": dice(model, checker, "genetic"),
    }
    measured = measure_all(methods, rows, checker, args.repeats)
    results = [summarize(name, *measured[name]) for name in methods]
    ours_row, random_row = results[0], results[1]
    base = random_row["latency_ms"]
    goals = "\n".join(
        [
            f"- validity: **{ours_row['validity']:.3f}** (goal 1.0); constraint violations: "
            f"**{ours_row['violations']}** (goal 0; dice-ml random {random_row['violations']})",
            f"- features changed: **{ours_row['changed']:.2f}** vs dice-ml random {random_row['changed']:.2f}; "
            f"proximity: **{ours_row['proximity']:.3f}** vs {random_row['proximity']:.3f} (goal: no worse)",
            f"- speed: **{base / ours_row['latency_ms']:.1f}x** dice-ml random's (goal >= 5x)",
        ]
    )

    demo = with_demo_constraints(model)
    demo_checker = Checker(demo)
    demo_methods = {
        "ours, demo constraints": ours(demo),
        "dice-ml random, demo constraints as permitted_range": dice(
            demo, demo_checker, "random", dice_permitted_range(demo, demo_checker)
        ),
    }
    demo_measured = measure_all(demo_methods, rows, demo_checker, args.repeats)
    demo_results = [summarize(name, *demo_measured[name]) for name in demo_methods]
    demo_ours, demo_random = demo_results
    demo_base = demo_random["latency_ms"]
    demo_goals = "\n".join(
        [
            f"- demo constraints: validity **{demo_ours['validity']:.3f}**; constraint violations "
            f"**{demo_ours['violations']}** (goal 0; dice-ml random {demo_random['violations']})",
            f"- demo constraints: speed **{demo_base / demo_ours['latency_ms']:.1f}x** dice-ml random's "
            "(goal >= 5x)",
        ]
    )
    out = (
        table(results, base)
        + "\n\n"
        + goals
        + "\n\nUnder the demo model's shipped constraints (second run, same queries):\n\n"
        + table(demo_results, demo_base)
        + "\n\n"
        + demo_goals
    )
    print(out)
    if not args.no_write:
        import dice_ml
        import xgboost

        body = (
            f"dice-ml {getattr(dice_ml, '__version__', '0.12')}, xgboost {xgboost.__version__}, "
            f"Python {platform.python_version()}. German credit, XGBoost in a one-hot Pipeline; {args.rows} "
            f'rows predicted "bad", {COUNT} counterfactuals each towards "good". Manifest constraints: `sex` '
            "immutable, `age` may only increase; dice-ml gets `features_to_vary` = every mutable feature and "
            "has no way to express a one-way change. Every counterfactual is re-scored with the model and "
            "checked against the constraints; proximity and diversity use our metric (numeric change / "
            "background MAD, +1 per categorical mismatch). Latency: median over queries of each query's best "
            f"of {args.repeats} runs, methods interleaved query by query. The second table uses the demo "
            "model's shipped constraints (`sex` and `job` immutable, `age` increase-only, `duration` 4-72, "
            "`credit_amount` 250-20000, `not_known` forbidden for `saving_accounts` and `checking_account`); "
            "dice-ml gets them as `features_to_vary` (without `sex`, `job`) and a `permitted_range` per query "
            "(the ranges, `age` from the query's age up, the accounts' categories other than `not_known`); "
            "violations count every broken constraint, forbidden categories included. Absolute latencies "
            "depend on what else the machine runs; the ratios come from one interleaved run.\n\n"
            f"{out}\n"
        )
        write_section(
            SECTION, body, f"python bench/bench_counterfactual.py --rows {args.rows} --repeats {args.repeats}"
        )


if __name__ == "__main__":
    main()
