"""A bias audit as a record of the audit chain (``kind: "fairness"``).

The record holds what a report needs to cite the audit and what anyone needs to redo it::

    {"kind": "fairness",
     "model": {"name", "version", "sha256"},
     "data": {"source", "sha256", "rows", "used", "rejected", ...},   # the data audited
     "request": {"label", "features": [...in order], "sensitive": {feature: edges or null},
                 "positive", "intersect", "resamples", "seed"},
     "libraries": {"explain-service", "fairlearn", ...},
     "figures": {"positive", "bootstrap", "by_feature", "warnings"}}

Running the same audit again on data with the same sha256 gives the same figures (the
bootstrap is seeded, and counts do not depend on chunking): :func:`replay_plan` rebuilds the
audit's parameters from its record and :func:`differences` compares a rerun with it
(``explain-service fairness --verify ID --data F``). ``explain-service audit verify`` checks the
record's place in the chain like any other.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import orjson

from explain_service.audit.chain import AuditEntry, StoredRecord
from explain_service.audit.store import AuditStore, AuditWriteError, RecordTooLarge
from explain_service.errors import AuditUnavailable, PayloadTooLarge
from explain_service.fairness.audit import AuditPlan
from explain_service.registry.model import LoadedModel
from explain_service.versions import library_versions

KIND = "fairness"
FIGURES = ("positive", "bootstrap", "by_feature", "warnings")


@cache
def fairness_libraries() -> dict[str, str]:
    """Versions of what computes an audit's figures, in this process."""
    return library_versions(("explain-service", "fairlearn", "numpy", "pandas", "scikit-learn", "xgboost"))


def fairness_entry(
    model: LoadedModel, plan: AuditPlan, label: str | None, answer: dict[str, Any], caller: str | None
) -> AuditEntry:
    """The audit entry of one bias audit (see the module docstring)."""
    return AuditEntry(
        body={
            "kind": KIND,
            "model": answer["model"],
            "data": answer["data"],
            "request": {"label": label, **plan.request()},
            "libraries": fairness_libraries(),
            "figures": {k: answer[k] for k in FIGURES},
        },
        model_name=model.name,
        model_version=model.version,
        model_sha256=model.sha256,
        caller=caller,
    )


def store_audit(
    store: AuditStore,
    model: LoadedModel,
    plan: AuditPlan,
    label: str | None,
    answer: dict[str, Any],
    caller: str | None,
) -> dict[str, Any]:
    """Append the audit's record and return the answer with its ``id`` first.

    Raises
    ------
    PayloadTooLarge
        The figures (many intersections) are over the store's record cap; nothing was stored.
    AuditUnavailable
        The store refused the append; nothing was stored.
    """
    try:
        (stored,) = store.append([fairness_entry(model, plan, label, answer, caller)])
    except RecordTooLarge as exc:
        raise PayloadTooLarge(
            f"The audit's record would hold {exc.size} bytes; a record holds at most {exc.limit}",
            {"sensitive": ["Too many groups to record; audit fewer features or no intersection."]},
        ) from None
    except AuditWriteError as exc:
        raise AuditUnavailable(exc.reason) from None
    return {"id": stored.id, **answer}


def replay_plan(record: StoredRecord) -> tuple[AuditPlan, str | None]:
    """The plan and label column of a stored audit, to run it again; ValueError if not an audit."""
    body = record.body
    if body.get("kind") != KIND:
        raise ValueError(f"record {record.id} is not a bias audit (kind {body.get('kind')!r})")
    request = body["request"]
    plan = AuditPlan(
        sensitive={
            k: (tuple(v) if (v := request["sensitive"][k]) is not None else None) for k in request["features"]
        },
        positive=request["positive"],
        intersect=bool(request["intersect"]),
        resamples=int(request["resamples"]),
        seed=int(request["seed"]),
    )
    return plan, request.get("label")


def differences(record: StoredRecord, model: LoadedModel, answer: dict[str, Any]) -> list[str]:
    """What differs between a stored audit and ``answer``, a rerun of it (empty: verified)."""
    body = record.body
    found = []
    if body["model"]["sha256"] != model.sha256:
        found.append(f"model sha256 {model.sha256} is not the audited {body['model']['sha256']}")
    if body["data"].get("sha256") != answer["data"].get("sha256"):
        found.append(
            f"data sha256 {answer['data'].get('sha256')} is not the audited {body['data'].get('sha256')}"
        )
    rerun = orjson.loads(orjson.dumps({k: answer[k] for k in FIGURES}))
    for key in FIGURES:
        if rerun[key] != body["figures"][key]:
            found.append(f"figures differ: {key}")
    return found
