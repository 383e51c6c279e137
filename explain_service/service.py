"""The explanation service: validated rows in, predictions and explanations out.

This is the one place where a request's pieces meet: the model from the
registry, typed rows from validation, one shared prediction, each requested
method, the reasons, and the audit record that must be written before an
answer leaves. HTTP views and the batch job both call it; it never imports
Flask.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pandas as pd
from marshmallow import ValidationError

from explain_service.errors import ValidationFailed, flatten_errors
from explain_service.explainers import EXPLAINERS, Explainer
from explain_service.explainers.base import plain
from explain_service.explainers.counterfactual import counterfactual_goals
from explain_service.explainers.reasons import reasons
from explain_service.registry.model import LoadedModel, Prepared, Rows
from explain_service.registry.review_rules import manifest_sensitive, review_of

METHOD_ORDER = ("shap", "lime", "counterfactual")
SAME_TARGET: Any = object()  # counterfactuals aim as the request's target says
STRICT_RANGES = "strict_ranges"  # options.strict_ranges: refuse values outside the observed ranges
MAX_REFERENCE = 128  # characters of a caller's reference


class Recorder(Protocol):
    """Where explanations are recorded before they are answered (the audit store)."""

    def record(self, model: LoadedModel, entries: list[dict[str, Any]], caller: str | None) -> list[str]:
        """Persist one entry per explanation atomically and return their ids, in order."""
        ...


def rows_as_dicts(rows: pd.DataFrame) -> list[dict[str, Any]]:
    """Typed rows as JSON-ready dicts (numpy scalars made plain)."""
    names = list(rows.columns)
    return [{n: plain(v) for n, v in zip(names, rec, strict=True)} for rec in rows.itertuples(index=False)]


@dataclass
class Prediction:
    """One shared prediction for a batch of rows."""

    answers: list[dict[str, Any]]
    classes: np.ndarray | None  # predicted class index per row
    proba: np.ndarray | None = None
    values: np.ndarray | None = None


@dataclass
class ExplainService:
    """Predicts and explains rows of a loaded model, and records every explanation."""

    recorder: Recorder | None = None
    explainers: dict[str, Explainer] = field(default_factory=lambda: dict(EXPLAINERS))

    # -- predictions --------------------------------------------------------------------------------
    def predict(self, model: LoadedModel, rows: Rows) -> Prediction:
        """The model's own predictions, in the contract's shape."""
        if not model.is_classifier:
            values = model.predict_value(rows)
            return Prediction([{"value": float(v)} for v in values], None, values=values)
        proba = model.predict_proba(rows)
        classes = proba.argmax(axis=1)
        names = model.class_names
        answers = [
            {"label": names[int(c)], "probabilities": {n: float(p) for n, p in zip(names, row, strict=True)}}
            for c, row in zip(classes, proba, strict=True)
        ]
        return Prediction(answers, classes, proba=proba)

    # -- request pieces -------------------------------------------------------------------------
    def method_names(self) -> list[str]:
        return [m for m in METHOD_ORDER if m in self.explainers]

    def load_options(self, methods: list[str], raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """Validate ``options`` per method; errors are named ``options.<method>.<key>``."""
        errors: dict[str, list[str]] = {}
        for key in raw:
            if key not in self.explainers:
                errors[f"options.{key}"] = [f"Unknown method; one of {', '.join(self.method_names())}."]
            elif key not in methods:
                errors[f"options.{key}"] = ["Options for a method that is not requested in methods."]
        loaded: dict[str, dict[str, Any]] = {}
        for method in methods:
            given = raw.get(method) or {}
            if not isinstance(given, dict):
                errors[f"options.{method}"] = ["Not a valid mapping type."]
                continue
            try:
                loaded[method] = _options_schema(self.explainers[method]).load(given)
            except ValidationError as exc:
                errors.update(flatten_errors(exc.messages, f"options.{method}"))
        if errors:
            raise ValidationFailed(errors)
        return loaded

    def resolve_target(self, model: LoadedModel, target: Any) -> int | None:
        """Class index of ``target`` (a class name), or None when not given."""
        if target is None:
            return None
        if not model.is_classifier:
            raise ValidationFailed({"target": ["Regression models have no target class."]})
        if not isinstance(target, str) or target not in model.class_names:
            raise ValidationFailed({"target": [f"Must be one of: {', '.join(model.class_names)}."]})
        return model.class_names.index(target)

    # -- explanations ---------------------------------------------------------------------------
    def run_methods(
        self,
        model: LoadedModel,
        rows: Prepared,
        pred: Prediction,
        target_index: int | None,
        options: dict[str, dict[str, Any]],
        goal_index: int | object | None = SAME_TARGET,
    ) -> dict[str, list[dict[str, Any]]]:
        """Each method's per-row results, for the loaded ``options`` of every method to run.

        Attributions explain ``target_index`` (else each row's predicted class); counterfactuals
        aim where :func:`counterfactual_goals` says.
        """
        targets = None
        if pred.classes is not None:
            targets = np.full(len(rows), target_index) if target_index is not None else pred.classes
        per_method: dict[str, list[dict[str, Any]]] = {}
        for method, method_options in options.items():
            method_targets = targets
            if method == "counterfactual" and pred.proba is not None:
                goal = target_index if goal_index is SAME_TARGET else goal_index
                method_targets = counterfactual_goals(model, pred.proba, goal)  # type: ignore[arg-type]
            per_method[method] = self.explainers[method].explain(model, rows, method_targets, method_options)
        return per_method

    def explain(
        self,
        model: LoadedModel,
        rows: Rows,
        methods: list[str],
        *,
        target: Any = None,
        options: dict[str, Any] | None = None,
        caller: str | None = None,
        record: bool = True,
        instances: list[dict[str, Any]] | None = None,
        counterfactual_target: Any = SAME_TARGET,
        references: list[str | None] | None = None,
    ) -> dict[str, Any]:
        """Predict once, run every requested method, record, and answer.

        ``rows`` are typed rows, prepared by ``model`` once for the prediction and every method
        (a plain frame is prepared here); ``instances`` are the validated records behind them
        when the caller has them. ``counterfactual_target`` (a batch job whose attributions
        explain one default class) lets counterfactuals aim elsewhere; it is recorded with the
        request so the record replays. ``references`` (one per row, or None) are the caller's own
        case numbers: recorded and answered, never shown to the model. Each answer carries
        ``review`` (the model's routing rules, :mod:`explain_service.registry.review_rules`).
        """
        strict = (options or {}).get(STRICT_RANGES, False)
        loaded = self.load_options(methods, {k: v for k, v in (options or {}).items() if k != STRICT_RANGES})
        if not isinstance(strict, bool):
            raise ValidationFailed({f"options.{STRICT_RANGES}": ["Not a valid boolean."]})
        target_index = self.resolve_target(model, target)
        if not isinstance(rows, Prepared):
            rows = model.prepare(rows)
        flags = model.schema.flags(rows.column_arrays())
        if strict:
            _refuse_out_of_range(model, flags)
        pred = self.predict(model, rows)
        goal_index = (
            target_index
            if counterfactual_target is SAME_TARGET
            else self.resolve_target(model, counterfactual_target)
        )
        per_method = self.run_methods(model, rows, pred, target_index, loaded, goal_index)
        if instances is None:
            instances = rows_as_dicts(rows.frame)
        explanations = []
        for i, instance in enumerate(instances):
            item: dict[str, Any] = {"prediction": pred.answers[i], "flags": flags[i]}
            for method in methods:
                item[method] = per_method[method][i]
            found = item_reasons(model, item, instance)
            if found is not None:
                item["reasons"] = found
            explanations.append(item)
        request = {"methods": methods, "target": target, "options": options or {}}
        if counterfactual_target is not SAME_TARGET:
            request["counterfactual_target"] = counterfactual_target
        refs = references if references is not None else [None] * len(explanations)
        sensitive = manifest_sensitive(model.manifest)
        entries = [
            {
                "instance": inst,
                "request": request,
                "explanation": exp,
                "reference": ref,
                "review": review_of(model.manifest.review_rules, exp, sensitive),
            }
            for inst, exp, ref in zip(instances, explanations, refs, strict=True)
        ]
        if record and self.recorder is not None:
            ids = self.recorder.record(model, entries, caller)
        else:
            ids = [uuid.uuid4().hex for _ in entries]
        return {
            "model": model_ref(model),
            "explanations": [answer_item(i, e) for i, e in zip(ids, entries, strict=True)],
        }


def answer_item(record_id: str, entry: dict[str, Any]) -> dict[str, Any]:
    """One explanation as answered: its record id, the explanation, the review routing, reference, plots."""
    explanation = entry["explanation"]
    item = {"id": record_id, **explanation, "review": entry["review"]}
    if entry.get("reference") is not None:
        item["reference"] = entry["reference"]
    item["plots"] = plot_urls(record_id, explanation)
    return item


def item_reasons(
    model: LoadedModel, item: dict[str, Any], instance: dict[str, Any]
) -> list[dict[str, Any]] | None:
    """Plain-language reasons from an explanation's SHAP values, else its LIME contributions (None
    when it has neither)."""
    source = item.get("shap") or item.get("lime")
    if source is None:
        return None
    # LIME's weights are slopes; its contributions are the per-feature attributions.
    attributions = source.get("values") or source.get("contributions") or {}
    return reasons(
        attributions,
        instance,
        model.schema.features,
        target=source.get("target"),
        favorable=model.favorable,
        class_names=model.class_names,
    )


def _refuse_out_of_range(model: LoadedModel, flags: list[dict[str, list[str]]]) -> None:
    errors: dict[str, list[str]] = {}
    for i, row in enumerate(flags):
        for name in row.get("out_of_range", []):
            f = model.schema[name]
            errors[f"instances.{i}.{name}"] = [f"Outside the range seen at registration [{f.min}, {f.max}]."]
    if errors:
        raise ValidationFailed(errors)


_OPTION_SCHEMAS: dict[type, Any] = {}


def _options_schema(explainer: Explainer) -> Any:
    cls = explainer.options_schema
    schema = _OPTION_SCHEMAS.get(cls)
    if schema is None:
        schema = _OPTION_SCHEMAS[cls] = cls()
    return schema


def plot_urls(record_id: str, explanation: dict[str, Any]) -> dict[str, str]:
    """URLs of the plots an explanation can be drawn as (rendered on first fetch)."""
    from explain_service.plots.render import available_plots

    return {name: f"/v1/explanations/{record_id}/plots/{name}.png" for name in available_plots(explanation)}


def model_ref(model: LoadedModel) -> dict[str, str]:
    """``{"name", "version", "sha256"}`` of a model."""
    return {"name": model.name, "version": model.version, "sha256": model.sha256}
