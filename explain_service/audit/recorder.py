"""What an audit record holds, and the recorder the explanation service writes through.

A record body is everything needed to show the explanation again and to
recompute it::

    {"kind": "explanation",
     "model": {"name", "version", "sha256"},
     "libraries": {"explain-service", "shap", "xgboost", "scikit-learn", "numpy", ...},
     "request": {"methods": [...], "target": ..., "options": {...as sent}},
     "instance": {feature: value},            # the validated input
     "explanation": {"prediction", "shap", "lime", "counterfactual", "reasons"},
     "quality": {"shap_additivity_residual", "lime_score", "counterfactual_validity"},
     "plots": {plot name: content hash},      # hashes of the PNGs, rendered on first fetch
     "reference": str | null,                 # the caller's case number, never seen by the model
     "review": {"required", "rules"} | null}  # the routing rules that fired (null: not evaluated)

Each method's result carries the parameters that shaped it (seed, num_samples,
background hash, output space) in its own ``params``.

The request is kept in every record of a call, so that each record can be shown and
replayed on its own; what a record may hold is capped instead (the store's
``max_record_bytes``, 256 KiB of canonical JSON by default). A call with one record
over the cap is refused whole with 413, naming the part that is too large, before
anything is written.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from explain_service import logs, metrics
from explain_service.audit.chain import canonical_json
from explain_service.audit.store import AuditEntry, AuditStore, AuditWriteError, RecordTooLarge
from explain_service.errors import AuditUnavailable, PayloadTooLarge
from explain_service.registry.model import LoadedModel
from explain_service.versions import library_versions


@cache
def explanation_libraries() -> dict[str, str]:
    """Versions of the libraries that compute explanations, in this process."""
    return library_versions(("explain-service", "shap", "lime", "xgboost", "scikit-learn", "numpy", "pandas"))


def quality(explanation: dict[str, Any]) -> dict[str, Any]:
    """The figures a reviewer checks first."""
    out: dict[str, Any] = {}
    if "shap" in explanation:
        out["shap_additivity_residual"] = explanation["shap"].get("additivity_residual")
    if "lime" in explanation:
        out["lime_score"] = explanation["lime"].get("score")
    if "counterfactual" in explanation:
        out["counterfactual_validity"] = (explanation["counterfactual"].get("metrics") or {}).get("validity")
    return out


def record_body(
    model: LoadedModel,
    instance: dict[str, Any],
    explanation: dict[str, Any],
    request: dict[str, Any],
    reference: str | None = None,
    review: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The body of one audit record (see the module docstring)."""
    from explain_service.plots.render import available_plots, plot_keys

    ref = {"name": model.name, "version": model.version, "sha256": model.sha256}
    plots = plot_keys(available_plots(explanation), explanation, instance, ref)
    return {
        "kind": "explanation",
        "model": ref,
        "libraries": explanation_libraries(),
        "request": request,
        "instance": instance,
        "explanation": explanation,
        "quality": quality(explanation),
        "plots": plots,
        "reference": reference,
        "review": review,
    }


def entry_for(
    model: LoadedModel,
    instance: dict[str, Any],
    explanation: dict[str, Any],
    request: dict[str, Any],
    caller: str | None = None,
    reference: str | None = None,
    review: dict[str, Any] | None = None,
) -> AuditEntry:
    """The audit entry of one explanation."""
    return AuditEntry(
        body=record_body(model, instance, explanation, request, reference, review),
        model_name=model.name,
        model_version=model.version,
        model_sha256=model.sha256,
        caller=caller,
    )


class AuditRecorder:
    """Writes one record per explanation before the answer is sent; failure means no answer."""

    def __init__(self, store: AuditStore) -> None:
        self.store = store

    def record(self, model: LoadedModel, entries: list[dict[str, Any]], caller: str | None) -> list[str]:
        """Append one record per entry, all or none; return their ids.

        Raises
        ------
        PayloadTooLarge
            A record would be over the store's size cap; nothing was written.
        AuditUnavailable
            The store refused the append; nothing was written.
        """
        audit_entries = [
            entry_for(
                model,
                e["instance"],
                e["explanation"],
                e["request"],
                caller,
                e.get("reference"),
                e.get("review"),
            )
            for e in entries
        ]
        try:
            stored = self.store.append_raw(audit_entries)
        except RecordTooLarge as exc:
            raise too_large(exc, entries[exc.index]) from None
        except AuditWriteError as exc:
            raise AuditUnavailable(exc.reason) from None
        if stored:
            metrics.observe_explanations(model.name, (e["explanation"] for e in entries))
            logs.note(audit_seq=stored[-1].seq)
        return [s.id for s in stored]

    def ping(self) -> bool:
        return self.store.ping()


def too_large(exc: RecordTooLarge, entry: dict[str, Any]) -> PayloadTooLarge:
    """The 413 for a record over the cap, naming its largest part: the options, or the instance."""
    parts = {
        "options": len(canonical_json(entry["request"])),
        f"instances.{exc.index}": len(canonical_json(entry["instance"]))
        + len(canonical_json(entry["explanation"])),
    }
    field = max(parts, key=lambda name: parts[name])
    message = (
        f"The audit record of instance {exc.index} would hold {exc.size} bytes; a record holds at most "
        f"{exc.limit}, so nothing was answered or stored"
    )
    return PayloadTooLarge(message, {field: [f"Too large to record ({parts[field]} bytes)."]})
