"""Incidents as JSON Lines for an incident database, with withheld inputs, and the check a recipient runs.

One line per incident, oldest first, then a trailer; keys sorted, no whitespace::

    {"incident": {<the incident's chain record, as in an audit export: seq, id, created_at, model_name,
                   model_version, model_sha256, caller, body, prev_hash, hash>},
     "openings": {explanation id: {feature: {"salt": hex, "value": v}}},   # inputs released
     "withheld": {explanation id: [feature, ...]}}                        # inputs not released
    {"trailer": {"format": "explain-service.incidents/1", "count": n, "redacted": bool,
                 "genesis": {"chain_id", "created_at", "hash"}, "head_hash", "head_seq"}}

Without ``redact`` every input is opened. With it, the inputs of the model version's sensitive and
personal features (its manifest's ``sensitive`` and ``personal``), plus any named by the exporter, are
withheld; when the model version is no longer registered, all of its inputs are. The incident record
itself holds commitments, not values (:mod:`.incidents`), so redaction changes no byte of it.

How a recipient checks a file (:func:`verify_incident_export` does exactly this):

1. each incident record's ``hash`` equals ``sha256(prev_hash + canonical_json(envelope))``, the envelope
   being the record without ``hash`` and ``prev_hash`` and canonical JSON being sorted keys, no
   whitespace (as for an audit export): the title, severity, description, the linked decisions and the
   commitments are as sealed in the chain;
2. each opened input's ``sha256(canonical_json({"feature", "record", "salt", "value"}))`` equals the
   commitment under ``body.explanations[].inputs[feature]``: the value is the one recorded;
3. every committed input is either opened or listed as withheld.

What the file alone cannot show is that the records sit in the operator's chain: for that the operator runs
``explain-service audit verify --expected-head <trailer head_hash> --expected-genesis <chain_id>``, and
each link's ``hash`` names the explanation record it was about.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import orjson

from explain_service.audit.chain import RawRecord, canonical_json
from explain_service.audit.incidents import INCIDENT, OPENINGS, commitment, incident_index
from explain_service.audit.store import AuditStore
from explain_service.audit.tally import Tally

FORMAT = "explain-service.incidents/1"
Withheld = Callable[[str, str], "set[str] | None"]
"""The features to withhold for a model ``(name, version)``; None when the version is unknown (all)."""


def export_incidents(
    store: AuditStore, tally: Tally, out: BinaryIO, *, withheld: Withheld | None = None
) -> int:
    """Write every incident as a line (format above), then the trailer; return how many were written.

    ``withheld`` None opens every input (no redaction).
    """
    tally.catch_up(force=True, max_records=None)
    head_seq, head_hash = store.head()
    genesis = store.genesis()
    with tally.connect() as conn:
        query = incident_index.select().where(incident_index.c.seq <= head_seq).order_by(incident_index.c.seq)
        rows = [dict(row._mapping) for row in conn.execute(query)]
    for row in rows:
        incident = store.require(row["id"])
        salts = store.require(row["openings_id"]).body["salts"] if row["openings_id"] else {}
        openings: dict[str, dict[str, Any]] = {}
        hidden: dict[str, list[str]] = {}
        for link in incident.body["explanations"]:
            explanation = store.get(link["id"])
            instance = explanation.body["instance"] if explanation is not None else {}
            model = link["model"]
            drop = None if withheld is None else withheld(model["name"], model["version"])
            features = sorted(link["inputs"])
            shown = [
                f
                for f in features
                if f in instance
                and f in salts.get(link["id"], {})
                and (withheld is None or (drop is not None and f not in drop))
            ]
            openings[link["id"]] = {f: {"salt": salts[link["id"]][f], "value": instance[f]} for f in shown}
            hidden[link["id"]] = [f for f in features if f not in shown]
        line = {"incident": incident.to_dict(), "openings": openings, "withheld": hidden}
        out.write(canonical_json(line) + b"\n")
    trailer = {
        "format": FORMAT,
        "count": len(rows),
        "redacted": withheld is not None,
        "genesis": genesis.to_dict() if genesis is not None else None,
        "head_hash": head_hash,
        "head_seq": head_seq,
    }
    out.write(canonical_json({"trailer": trailer}) + b"\n")
    return len(rows)


@dataclass
class ExportCheck:
    """What :func:`verify_incident_export` found: ``ok`` when ``problems`` is empty."""

    incidents: int = 0
    opened: int = 0
    withheld: int = 0
    problems: list[str] = field(default_factory=list)
    trailer: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return not self.problems and self.trailer is not None


def verify_incident_export(lines: Iterable[bytes]) -> ExportCheck:
    """Check an incidents export as a recipient can, without the operator's database (steps above)."""
    check = ExportCheck()
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            line = orjson.loads(raw)
        except orjson.JSONDecodeError:
            check.problems.append(f"line {number}: not JSON")
            continue
        if "trailer" in line:
            check.trailer = line["trailer"]
            if line["trailer"].get("count") != check.incidents:
                check.problems.append(
                    f"the trailer counts {line['trailer'].get('count')}, the file holds {check.incidents}"
                )
            continue
        check.incidents += 1
        _check_line(number, line, check)
    if check.trailer is None:
        check.problems.append("no trailer: the file is cut short")
    return check


def _check_line(number: int, line: dict[str, Any], check: ExportCheck) -> None:
    record = line.get("incident") or {}
    try:
        raw = RawRecord(**{**record, "body": canonical_json(record["body"]).decode()})
    except (TypeError, KeyError):
        check.problems.append(f"line {number}: not an incident record")
        return
    if raw.content_hash() != raw.hash:
        check.problems.append(f"line {number}: incident {raw.id} does not match its chain hash")
        return
    body = record["body"]
    if body.get("kind") != INCIDENT:
        check.problems.append(f"line {number}: record {raw.id} is a {body.get('kind')!r} record")
        return
    openings, withheld = line.get("openings") or {}, line.get("withheld") or {}
    for link in body["explanations"]:
        rid = link["id"]
        opened, hidden = openings.get(rid) or {}, set(withheld.get(rid) or ())
        for feature, sealed in link["inputs"].items():
            if feature in opened:
                value = opened[feature]
                if commitment(rid, feature, value.get("value"), value.get("salt")) != sealed:
                    check.problems.append(
                        f"line {number}: the value of {feature} of {rid} is not the recorded one"
                    )
                check.opened += 1
            elif feature in hidden:
                check.withheld += 1
            else:
                check.problems.append(
                    f"line {number}: input {feature} of {rid} is neither opened nor withheld"
                )
        extra = set(opened) - set(link["inputs"])
        if extra:
            check.problems.append(f"line {number}: {rid} opens inputs it never committed: {sorted(extra)}")


__all__ = [
    "FORMAT",
    "OPENINGS",
    "ExportCheck",
    "export_incidents",
    "manifest_withheld",
    "verify_incident_export",
]


def manifest_withheld(models_dir: str, also: Iterable[str] = ()) -> Withheld:
    """Withhold each model version's sensitive and personal features (from its manifest), and ``also``."""
    from pathlib import Path

    from explain_service.errors import IntegrityError
    from explain_service.registry.loading import read_manifest

    named = set(also)

    def withheld(name: str, version: str) -> set[str] | None:
        try:
            manifest = read_manifest(Path(models_dir) / name / version)
        except IntegrityError:  # gone or unreadable: nothing can say which inputs are safe to release
            return None
        sensitive = getattr(manifest, "sensitive", None) or {}
        return set(sensitive) | set(manifest.personal) | named

    return withheld
