"""What a request declares it will cost: rate-limit units, model evaluations, counterfactual instances.

Rate limits count *units*, not requests, so that one key cannot buy a minute of CPU at the price of a
cheap call. A ``:predict`` or a read costs one unit; an ``:explain`` costs, per instance, the sum of its
methods' weights, which follow what each method costs per instance::

    shap, tree or linear path         1                            the unit
    shap, model-agnostic path         max_evals / 1000             20 at the default 20,000 evaluations
    lime                              num_samples x seeds / 512    4 at the default 2,048 samples
    counterfactual                    8                            a bounded search, several model calls

Measured per instance in one process on the demo models (a busy 2-core machine, so only the ratios
mean anything): tree SHAP on ``german-credit`` 8.8 ms in a batch of 50; LIME at 2,048 samples 119 ms
(german-credit), 54 ms (wine-mlp), 491 ms (breast-cancer-forest); LIME at 20,000 samples 991 ms;
counterfactual 265 ms; model-agnostic SHAP at 20,000 evaluations 326 ms (wine-mlp). A single-instance
request also pays a fixed few milliseconds of parsing, validation and audit, which is why the unit is
one request of tree SHAP rather than a batched instance.

The model-agnostic SHAP and LIME weights are proportional to the model evaluations the request
declares, which is what their time is made of; a counterfactual search stops at its own time budget,
so its weight is a flat average. Counterfactuals also count against a per-key daily quota
(``EXPLAIN_COUNTERFACTUAL_DAILY_QUOTA``): each answer reveals where the decision boundary lies, the
classic channel for extracting a model.

Declared model evaluations (instances x ``num_samples`` x seeds for LIME, instances x ``max_evals`` for
model-agnostic SHAP) above ``EXPLAIN_REQUEST_MAX_EVALUATIONS`` are refused up front with a 422 naming
the option, before any work; the compute deadline stops whatever slips through.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from explain_service.errors import ValidationFailed

EXPLAIN_ENDPOINTS = frozenset({"models.ExplainView", "models.ExplainVersionView"})

LIME_SAMPLES_PER_UNIT = 512
SHAP_EVALS_PER_UNIT = 1000
COUNTERFACTUAL_WEIGHT = 8
DEFAULTS = {"lime": {"num_samples": 2048, "stability": 0}, "shap": {"max_evals": 20_000}}


@dataclass(frozen=True)
class Work:
    """A request's declared cost."""

    units: int = 1
    evaluations: int = 0
    counterfactual_instances: int = 0
    largest: str | None = None  # the option that declares the most evaluations


FLAT = Work()


def _int_option(options: Any, method: str, key: str) -> int:
    value = options.get(method, {}).get(key) if isinstance(options.get(method), dict) else None
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return int(DEFAULTS[method][key])


def measure(body: Any, agnostic: bool | None, max_instances: int) -> Work:
    """The work an ``:explain`` body declares; ``agnostic`` says whether SHAP takes the sampled path.

    Malformed bodies cost one unit here; validation answers them with a 422 later.
    """
    if not isinstance(body, dict):
        return FLAT
    instances = body.get("instances")
    methods = body.get("methods")
    options = body.get("options") if isinstance(body.get("options"), dict) else {}
    if not isinstance(instances, list) or not isinstance(methods, list):
        return FLAT
    n = min(len(instances), max_instances)
    per_instance = 0.0
    evaluations: dict[str, int] = {}
    for method in {m for m in methods if isinstance(m, str)}:
        if method == "shap":
            if agnostic:
                max_evals = _int_option(options, "shap", "max_evals")
                per_instance += max_evals / SHAP_EVALS_PER_UNIT
                evaluations["options.shap.max_evals"] = n * max_evals
            else:
                per_instance += 1
        elif method == "lime":
            samples = _int_option(options, "lime", "num_samples")
            seeds = max(_int_option(options, "lime", "stability"), 1)
            per_instance += samples * seeds / LIME_SAMPLES_PER_UNIT
            evaluations["options.lime.num_samples"] = n * samples * seeds
        elif method == "counterfactual":
            per_instance += COUNTERFACTUAL_WEIGHT
    counterfactuals = n if "counterfactual" in methods else 0
    largest = max(evaluations, key=lambda k: evaluations[k]) if evaluations else None
    return Work(
        units=max(1, math.ceil(n * per_instance)),
        evaluations=sum(evaluations.values()),
        counterfactual_instances=counterfactuals,
        largest=largest,
    )


def check_budget(work: Work, budget: int) -> None:
    """A 422 naming the option when ``work`` declares more model evaluations than ``budget``."""
    if budget <= 0 or work.evaluations <= budget or work.largest is None:
        return
    raise ValidationFailed(
        {
            work.largest: [
                f"The request declares {work.evaluations:,} model evaluations (instances x samples or "
                f"evaluations); the per-request budget is {budget:,}. Ask for fewer instances, samples or "
                "evaluations, or use the batch job."
            ]
        }
    )
