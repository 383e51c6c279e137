"""Diverse, valid, constraint-respecting counterfactuals.

For a classifier the goal is a target class, chosen by one rule
(:func:`counterfactual_goals`, which the service and the batch job call to
fill ``targets``): the requested target; else the manifest's favourable
class, unless the row is already predicted as it; else the most probable other
class. For a regressor the goal is ``options.desired_range`` (required).

Constraints come from the manifest (``model.schema.constraint(name)``) and
are overridden key by key, per feature, by ``options.constraints``;
``options.immutable`` is a shorthand for ``{"mutable": false}``. A sensitive
feature the manifest freezes (see ``register_model(sensitive=...)``) stays
frozen: only the model's owner may allow changing it, so a request asking
``{"mutable": true}`` for it is refused. A numeric
``range`` bounds the values a feature may be changed to; ``forbidden`` lists
categories a categorical feature is never changed to; a ``direction``
applies to numeric, integer and boolean (False < True) features. Categories
have no order, so a manifest direction on a categorical feature is ignored
and a requested one is rejected.

The search (see ``_cf_search``) is deterministic given the seed. The time
budget is a safety net: when it cuts a search short the answer says so in its
``message``, and only then may a repeat differ.

Options that only the model can judge (a regression request without
``desired_range``, a constraint on a feature the model does not have) raise
:class:`~explain_service.errors.OptionError`.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

import numpy as np
from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from explain_service.deadline import check_deadline
from explain_service.errors import OptionError
from explain_service.explainers._cf_search import Found, Goal, Rule, Search, Space
from explain_service.explainers._tabular import background_stats, resolve_seed, row_dicts, samples_background
from explain_service.explainers.base import ModelLike, seed_option
from explain_service.fields import StrictBoolean, StrictFloat
from explain_service.registry.model import Rows, frame_of
from explain_service.registry.schema import Feature, FeatureSchema

MAX_COUNT = 10
MAX_TIME_BUDGET_MS = 5_000


def _check_pair(value: list[float] | None, name: str) -> None:
    if value is not None and value[0] > value[1]:
        raise ValidationError(f"{name} must be [low, high] with low <= high.", name)


class ConstraintOptions(Schema):
    """A per-feature constraint in a request; keys left out keep the manifest's value."""

    mutable = StrictBoolean()
    direction = fields.String(
        allow_none=True,
        validate=validate.OneOf(["increase", "decrease"], error="direction must be one of {choices}."),
    )
    range = fields.List(
        StrictFloat(),
        allow_none=True,
        validate=validate.Length(equal=2, error="range must be [low, high]."),
    )
    forbidden = fields.List(
        fields.String(),
        validate=validate.Length(max=1000),
        metadata={"description": "Categorical features: categories never proposed."},
    )

    @validates_schema
    def _range_is_ordered(self, data: dict[str, Any], **_: Any) -> None:
        _check_pair(data.get("range"), "range")


class CounterfactualOptions(Schema):
    """Options of the ``counterfactual`` method."""

    count = fields.Integer(
        strict=True,
        load_default=4,
        validate=validate.Range(min=1, max=MAX_COUNT, error="count must be between {min} and {max}."),
    )
    desired_range = fields.List(
        StrictFloat(),
        allow_none=True,
        load_default=None,
        validate=validate.Length(equal=2, error="desired_range must be [low, high]."),
        metadata={"description": "Regression only (required there): the interval to reach."},
    )
    constraints = fields.Dict(
        keys=fields.String(),
        values=fields.Nested(ConstraintOptions),
        load_default=dict,
        metadata={"description": "Per-feature overrides of the manifest's constraints."},
    )
    immutable = fields.List(fields.String(), load_default=list)
    max_changes = fields.Integer(
        strict=True,
        load_default=4,
        validate=validate.Range(min=1, max=10, error="max_changes must be between {min} and {max}."),
        metadata={"description": "Most features one counterfactual may change."},
    )
    time_budget_ms = fields.Integer(
        strict=True,
        load_default=500,
        validate=validate.Range(
            min=10, max=MAX_TIME_BUDGET_MS, error="time_budget_ms must be between {min} and {max}."
        ),
    )
    seed = seed_option()

    @validates_schema
    def _range_is_ordered(self, data: dict[str, Any], **_: Any) -> None:
        _check_pair(data.get("desired_range"), "desired_range")


def resolve_rules(schema: FeatureSchema, options: dict[str, Any]) -> list[Rule]:
    """Merge manifest constraints with the request's, per feature and key; raise OptionError if unfit."""
    requested: dict[str, dict[str, Any]] = {k: dict(v) for k, v in (options.get("constraints") or {}).items()}
    names = set(schema.names)
    for name in requested:
        if name not in names:
            raise OptionError("counterfactual", "constraints", f"unknown feature {name!r}")
    for name in options.get("immutable") or []:
        if name not in names:
            raise OptionError("counterfactual", "immutable", f"unknown feature {name!r}")
        requested.setdefault(name, {})["mutable"] = False
    rules = []
    for feature in schema.features:
        base = schema.constraint(feature.name).to_dict()
        ask = requested.get(feature.name, {})
        _check_fit(feature, ask)
        if ask.get("mutable") and feature.name in schema.sensitive and not base["mutable"]:
            raise OptionError(
                "counterfactual",
                f"constraints.{feature.name}.mutable",
                "a sensitive feature; only the model's registration may allow changing it",
            )
        merged = {**base, **ask}
        direction = merged.get("direction") if feature.kind != "categorical" else None
        rng = merged.get("range") if feature.is_numeric else None
        categories = list(feature.categories or ())
        forbidden = frozenset(categories.index(c) for c in merged.get("forbidden") or () if c in categories)
        rules.append(
            Rule(
                mutable=bool(merged.get("mutable", True)),
                direction=direction,
                low=float(rng[0]) if rng is not None else -np.inf,
                high=float(rng[1]) if rng is not None else np.inf,
                forbidden=forbidden,
            )
        )
    return rules


def _check_fit(feature: Feature, ask: dict[str, Any]) -> None:
    if ask.get("direction") is not None and feature.kind == "categorical":
        raise OptionError(
            "counterfactual",
            f"constraints.{feature.name}.direction",
            "categorical features have no direction",
        )
    if ask.get("range") is not None and not feature.is_numeric:
        raise OptionError(
            "counterfactual", f"constraints.{feature.name}.range", "only numeric features take a range"
        )
    forbidden = ask.get("forbidden")
    if forbidden:
        if feature.kind != "categorical":
            raise OptionError(
                "counterfactual",
                f"constraints.{feature.name}.forbidden",
                "only categorical features take forbidden",
            )
        unknown = [c for c in forbidden if c not in (feature.categories or ())]
        if unknown:
            raise OptionError(
                "counterfactual", f"constraints.{feature.name}.forbidden", f"unknown categories {unknown}"
            )


def counterfactual_goals(model: ModelLike, proba: np.ndarray, target: int | None = None) -> np.ndarray | None:
    """The class index each row's counterfactuals aim at; None for a regressor.

    The requested ``target``; else the favourable class, unless the row is already
    predicted as it; else the row's most probable other class (ties go to the first
    class). ``proba`` holds the rows' class probabilities, shape (n, n_classes).
    """
    if model.task != "classification":
        return None
    if target is not None:
        return np.full(len(proba), target)
    ranked = np.argsort(-proba, axis=1, kind="stable")
    predicted, runner_up = ranked[:, 0], ranked[:, 1]
    if model.favorable is None:
        return runner_up.copy()
    favorable = model.class_names.index(model.favorable)
    return np.where(predicted == favorable, runner_up, favorable)


def _own_goal(model: ModelLike, own: np.ndarray) -> int:
    goals = counterfactual_goals(model, own[None, :])
    assert goals is not None
    return int(goals[0])


class CounterfactualExplainer:
    """Counterfactuals for classifiers (reach a class) and regressors (reach a range)."""

    name: ClassVar[str] = "counterfactual"
    options_schema: ClassVar[type[Schema]] = CounterfactualOptions

    def supports(self, model: ModelLike) -> bool:
        return samples_background(model)

    def explain(
        self,
        model: ModelLike,
        rows: Rows,
        targets: np.ndarray | None,
        options: dict[str, Any],
    ) -> list[dict[str, Any]]:
        """Search counterfactuals for each row; see the module docstring for targets and constraints."""
        regression = model.task == "regression"
        desired = options.get("desired_range")
        if regression and desired is None:
            raise OptionError(
                "counterfactual", "desired_range", "required for regression models, as [low, high]"
            )
        if not regression and desired is not None:
            raise OptionError(
                "counterfactual", "desired_range", "applies to regression models only; use target"
            )
        rules = resolve_rules(model.schema, options)
        stats = background_stats(model)
        records = row_dicts(frame_of(rows), model.schema.features)
        start = time.perf_counter()
        budget = int(options["time_budget_ms"]) / 1000.0
        results = []
        for i, record in enumerate(records):
            check_deadline()
            # The request's budget is shared: each row gets an equal part of what is left.
            remaining = budget - (time.perf_counter() - start)
            deadline = time.perf_counter() + max(remaining, 0.0) / (len(records) - i)
            seed = resolve_seed(model, record, self.name, options)
            space = Space(stats, record, rules)
            search = Search(model, space, seed, deadline, int(options["max_changes"]))
            own = search.start()
            if desired is not None:
                goal = Goal(None, float(desired[0]), float(desired[1]))
            else:
                goal = Goal(int(targets[i]) if targets is not None else _own_goal(model, own))
            count = int(options["count"])
            if goal.valid(own[None, :])[0]:
                found = Found(
                    np.empty((0, len(space.x))), np.empty((0, len(own))), self._already(model, goal)
                )
            else:
                found = search.run(goal, count)
            results.append(self._result(model, space, goal, found, count, seed, desired))
        return results

    @staticmethod
    def _already(model: ModelLike, goal: Goal) -> str:
        if goal.target is not None:
            return f"the instance is already predicted as {model.class_names[goal.target]!r}"
        return "the instance's prediction is already within desired_range"

    def _result(
        self,
        model: ModelLike,
        space: Space,
        goal: Goal,
        found: Found,
        count: int,
        seed: int,
        desired: list[float] | None,
    ) -> dict[str, Any]:
        codes, outputs = found.codes, found.outputs
        if len(codes):
            # Never return an invalid counterfactual: the final scoring call decides.
            valid = goal.valid(outputs)
            codes, outputs = codes[valid], outputs[valid]
        items = []
        for k in range(len(codes)):
            instance = space.decode(codes[k])
            changes = {
                name: {"from": space.row[name], "to": value}
                for name, value in instance.items()
                if value != space.row[name]
            }
            items.append(
                {"instance": instance, "changes": changes, "prediction": _prediction(model, outputs[k])}
            )
        out: dict[str, Any] = {
            "target": model.class_names[goal.target] if goal.target is not None else None,
        }
        if desired is not None:
            out["desired_range"] = [float(desired[0]), float(desired[1])]
        out["counterfactuals"] = items
        out["metrics"] = _metrics(space, codes, candidates=len(found.codes))
        out["seed"] = int(seed)
        if len(items) < count:
            why = found.reason or "no other distinct valid counterfactual was found"
            out["message"] = f"found {len(items)} of {count} counterfactuals: {why}"
        return out


def _prediction(model: ModelLike, output: np.ndarray) -> dict[str, Any]:
    if model.task == "regression":
        return {"value": float(output[0])}
    return {
        "label": model.class_names[int(np.argmax(output))],
        "probabilities": {c: float(p) for c, p in zip(model.class_names, output, strict=True)},
    }


def _metrics(space: Space, codes: np.ndarray, candidates: int) -> dict[str, Any]:
    """Validity, sparsity, proximity and diversity of the returned counterfactuals (None when undefined).

    Validity is the share of the search's final candidates that the final model call found valid.
    """
    if len(codes) == 0:
        return {"validity": None, "sparsity": None, "proximity": None, "diversity": None}
    pairs = [
        float(space.distance(codes[a], codes[b])) for a in range(len(codes)) for b in range(a + 1, len(codes))
    ]
    return {
        "validity": len(codes) / candidates,
        "sparsity": float(space.changed(codes).sum(axis=1).mean()),
        "proximity": float(space.distance(codes, space.x).mean()),
        "diversity": float(np.mean(pairs)) if pairs else None,
    }
