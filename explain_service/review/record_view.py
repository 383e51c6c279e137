"""One stored explanation as the detail and print pages show it: every figure put in words and rows.

:func:`record_view` reads the record (with the API's owner check), its indexed status, its review
history and, when the model version is still registered, its manifest (for the favourable class and the
counterfactual constraints). Templates get plain values; they compute nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flask import current_app

from explain_service.api.explanations import load_record
from explain_service.audit.chain import StoredRecord
from explain_service.audit.reviews import ReviewEvent
from explain_service.audit.search import IndexedRecord
from explain_service.audit.suspensions import Suspension
from explain_service.errors import ServiceError
from explain_service.quality import quality_flags
from explain_service.registry.manifest import Manifest
from explain_service.review import words
from explain_service.service import plot_urls


@dataclass
class RecordView:
    """Everything a detail or print page shows about one explanation."""

    record: StoredRecord
    indexed: IndexedRecord | None
    manifest: Manifest | None
    history: list[ReviewEvent]
    status: str
    decision: Any
    flags: list[str]
    plots: dict[str, str]
    class_names: list[str] = field(default_factory=list)
    suspensions: list[Suspension] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def body(self) -> dict[str, Any]:
        return self.record.body

    @property
    def explanation(self) -> dict[str, Any]:
        return dict(self.body.get("explanation") or {})

    @property
    def prediction(self) -> dict[str, Any]:
        return dict(self.explanation.get("prediction") or {})

    @property
    def favorable(self) -> str | None:
        return self.manifest.favorable if self.manifest is not None else None

    @property
    def reference(self) -> str | None:
        if self.indexed is not None and self.indexed.reference is not None:
            return self.indexed.reference
        ref = self.body.get("reference")
        return ref if isinstance(ref, str) else None

    def suspension(self) -> Suspension | None:
        """The suspension that stops this record's model version now (the whole model's first), or None."""
        for found in self.suspensions:
            if found.version in (None, self.record.model_version):
                return found
        return None

    def review_reasons(self) -> list[str]:
        """Why the routing rules sent this explanation to a human, in words (empty: they did not)."""
        if self.indexed is not None:
            required, rules = self.indexed.review_required, list(self.indexed.review_rules)
        else:
            review = self.body.get("review") or {}
            required, rules = bool(review.get("required")), list(review.get("rules") or [])
        return [words.RULE_TEXT.get(rule, rule) for rule in rules] if required else []

    def decision_sentence(self) -> str:
        return words.decision_sentence(self.prediction, self.favorable)

    def decision_options(self) -> list[tuple[str, str]]:
        """The classes an override may substitute, as (value, text)."""
        return [(name, name) for name in self.class_names]

    def probabilities(self) -> list[tuple[str, str, bool]]:
        """(class, percent, is the decided class), most likely first."""
        probs = self.prediction.get("probabilities") or {}
        label = self.prediction.get("label")
        ranked = sorted(probs.items(), key=lambda kv: -float(kv[1]))
        return [(str(name), words.percent(p), name == label) for name, p in ranked]

    def shap(self) -> dict[str, Any] | None:
        """SHAP in rows, strongest first, with the output space explained."""
        shap = self.explanation.get("shap")
        if not isinstance(shap, dict):
            return None
        instance = self.body.get("instance") or {}
        values = shap.get("values") or {}
        rows = [
            {
                "feature": name,
                "value": words.feature_value(instance.get(name)),
                "contribution": words.signed(v),
                "effect": words.effect(v, shap.get("target")),
            }
            for name, v in sorted(values.items(), key=lambda kv: -abs(float(kv[1])))
        ]
        space, line = words.output_space(shap.get("output"), shap.get("target"))
        base = shap.get("base_value")
        total = (base or 0.0) + sum(float(v) for v in values.values())
        return {
            "rows": rows,
            "target": shap.get("target"),
            "aim": words.aim(shap.get("target")),
            "space": space,
            "plain": line,
            "base": words.number(base),
            "output": words.number(total),
            "residual": words.number(shap.get("additivity_residual")),
            "algorithm": shap.get("algorithm"),
        }

    def lime(self) -> dict[str, Any] | None:
        """LIME's per-feature contributions (weight times the instance's value), strongest first."""
        lime = self.explanation.get("lime")
        if not isinstance(lime, dict):
            return None
        contributions = lime.get("contributions") or lime.get("weights") or {}
        rows = [
            {
                "feature": name,
                "contribution": words.signed(v),
                "weight": words.signed((lime.get("weights") or {}).get(name)),
            }
            for name, v in sorted(contributions.items(), key=lambda kv: -abs(float(kv[1])))
        ]
        return {
            "rows": rows,
            "target": lime.get("target"),
            "aim": words.aim(lime.get("target")),
            "score": words.number(lime.get("score"), 3),
            "fit": words.lime_fit(lime.get("score")),
            "samples": lime.get("num_samples"),
            "seed": lime.get("seed"),
        }

    def counterfactuals(self) -> dict[str, Any] | None:
        """The table "what would have changed the decision": one column per feature any of them changes."""
        cf = self.explanation.get("counterfactual")
        if not isinstance(cf, dict):
            return None
        found = cf.get("counterfactuals") or []
        changed: list[str] = []
        for item in found:
            changed.extend(name for name in item.get("changes") or {} if name not in changed)
        constraints = self.manifest.schema.constraints if self.manifest is not None else {}
        instance = self.body.get("instance") or {}
        marks = {
            name: words.constraint_text(c) for name, c in constraints.items() if words.constraint_text(c)
        }
        rows = []
        for item in found:
            changes = item.get("changes") or {}
            pred = item.get("prediction") or {}
            rows.append(
                {
                    "cells": [
                        (changes[name]["to"], True) if name in changes else (instance.get(name), False)
                        for name in changed
                    ],
                    "label": pred.get("label", words.number(pred.get("value"))),
                    "probability": words.percent((pred.get("probabilities") or {}).get(pred.get("label"))),
                }
            )
        return {
            "columns": [(name, marks.get(name)) for name in changed],
            "original": [instance.get(name) for name in changed],
            "rows": rows,
            "target": cf.get("target"),
            "message": cf.get("message"),
            "metrics": {k: words.number(v, 3) for k, v in (cf.get("metrics") or {}).items()},
            "seed": cf.get("seed"),
            "marks": sorted(marks.items()),
        }

    def quality(self) -> list[tuple[str, str]]:
        """The quality figures, named in words."""
        q = self.body.get("quality") or {}
        names = {
            "shap_additivity_residual": "SHAP additivity residual (how far the values miss the output)",
            "lime_score": "LIME local fit R² (1 is perfect)",
            "counterfactual_validity": "Share of counterfactuals that do change the decision",
        }
        return [(names.get(k, k), words.number(v)) for k, v in q.items()]

    def provenance(self) -> list[tuple[str, Any]]:
        """Model, libraries, seeds, background hash, chain position, time and caller."""
        r, ex = self.record, self.explanation
        background = ((ex.get("shap") or {}).get("params") or {}).get("background_sha256")
        seeds = ", ".join(
            f"{m} {ex[m]['seed']}"
            for m in ("lime", "counterfactual")
            if isinstance(ex.get(m), dict) and "seed" in ex[m]
        )
        libraries = ", ".join(f"{k} {v}" for k, v in sorted((self.body.get("libraries") or {}).items()))
        return [
            ("Model", f"{r.model_name} version {r.model_version}"),
            ("Model sha256", r.model_sha256),
            ("Libraries", libraries or None),
            ("Seeds", seeds or None),
            ("Background sample sha256", background),
            ("Chain position (seq)", r.seq),
            ("Record hash", r.hash),
            ("Previous record hash", r.prev_hash),
            ("Recorded at", words.when(r.created_at)),
            ("Caller (key name)", r.caller or "none (access control off)"),
            ("Reference", self.reference),
            *self._batch_rows(),
            ("Record id", r.id),
        ]

    def _batch_rows(self) -> list[tuple[str, Any]]:
        """A batch row's job, input row and the caller's ids (``batch --audit --id-columns``)."""
        batch = self.body.get("batch")
        if not isinstance(batch, dict):
            return []
        ids = ", ".join(f"{k} {v}" for k, v in (batch.get("ids") or {}).items())
        return [
            ("Batch job", batch.get("job")),
            ("Input row (from 0)", batch.get("row")),
            ("Batch ids", ids or None),
        ]


def record_view(record_id: str) -> RecordView:
    """The view of one stored explanation (404 if there is none the caller may see)."""
    services = current_app.extensions["explain"]
    record = load_record(record_id)
    index = services.index
    item = index.get(record.id)
    history = index.reviews(record.id)
    manifest: Manifest | None
    try:
        manifest = services.registry.get(record.model_name, record.model_version).manifest
    except ServiceError:
        manifest = None  # the version was removed or fails to load: the record still shows
    explanation = record.body.get("explanation") or {}
    probs = (explanation.get("prediction") or {}).get("probabilities") or {}
    return RecordView(
        record=record,
        indexed=item,
        manifest=manifest,
        history=history,
        status=item.status if item is not None else "unreviewed",
        decision=item.decision if item is not None else None,
        flags=list(item.flags) if item is not None else quality_flags(explanation),
        plots=plot_urls(record.id, explanation),
        class_names=[str(name) for name in probs],
        suspensions=services.suspensions.of_model(record.model_name),
    )
