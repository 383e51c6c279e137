"""Incidents: a reviewer's report that decisions went wrong, kept in the audit chain.

Opening an incident appends two records to the chain in one batch (both stored, or neither)::

    {"kind": "incident", "title", "severity", "harm_type", "description",
     "explanations": [{"id", "seq", "hash",                  # the linked record, as sealed in the chain
                       "model": {"name", "version", "sha256"},
                       "prediction": {...},                  # the decision as answered
                       "inputs": {feature: commitment}}]}    # no input value in the clear
    {"kind": "incident_openings", "incident": <incident id>,
     "salts": {explanation id: {feature: salt}}}

An input's commitment is ``sha256(canonical_json({"feature", "record", "salt", "value"}))`` (hex) with a
fresh random 128-bit salt per input: given the salt and the value anyone can check the commitment; without
the salt a withheld value cannot be guessed from it, however few values the feature takes. The incident
record holds no input value, so it can be handed over whole and its chain hash recomputed by the recipient;
the values are opened (value + salt) only for the features an export releases (:mod:`.incident_export`).

The envelope's model fields name the first linked record's model; each link names its own. ``caller`` is
the key that opened the incident.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Index,
    MetaData,
    String,
    Table,
    Text,
    insert,
    select,
    update,
)

from explain_service.audit.chain import AuditEntry, StoredRecord, canonical_json, new_record_id, utc_text
from explain_service.audit.store import AuditStore

SEVERITIES = ("low", "medium", "high", "critical")
HARM_TYPES = (
    "discrimination",  # a protected group treated worse
    "wrong_decision",  # an individual decision that should have gone the other way
    "financial",  # money lost or credit denied
    "privacy",  # personal data exposed or misused
    "safety",  # physical or psychological harm
    "explanation",  # a reason given that does not hold (additivity, replay, wording)
    "other",
)
MAX_LINKS = 100
INCIDENT = "incident"
OPENINGS = "incident_openings"
_index_metadata = MetaData()


class IncidentError(ValueError):
    """An incident cannot be opened as asked; ``field`` names the offending part of the request."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def commitment(record_id: str, feature: str, value: Any, salt: str) -> str:
    """The commitment to one input ``value`` of record ``record_id`` (hex sha256)."""
    payload = {"feature": feature, "record": record_id, "salt": salt, "value": value}
    return hashlib.sha256(canonical_json(payload)).hexdigest()


def _link(record: StoredRecord) -> tuple[dict[str, Any], dict[str, str]]:
    """The incident's view of one explanation record, and the salts of its inputs."""
    body = record.body
    salts = {feature: os.urandom(16).hex() for feature in sorted(body["instance"])}
    inputs = {f: commitment(record.id, f, body["instance"][f], salts[f]) for f in salts}
    link = {
        "id": record.id,
        "seq": record.seq,
        "hash": record.hash,
        "model": body["model"],
        "prediction": body["explanation"].get("prediction"),
        "inputs": inputs,
    }
    return link, salts


def incident_entries(
    linked: Sequence[StoredRecord],
    *,
    title: str,
    severity: str,
    harm_type: str,
    description: str,
    caller: str | None,
) -> list[AuditEntry]:
    """The two chain entries of a new incident about the explanation records ``linked``."""
    if severity not in SEVERITIES:
        raise IncidentError("severity", f"one of {', '.join(SEVERITIES)}")
    if harm_type not in HARM_TYPES:
        raise IncidentError("harm_type", f"one of {', '.join(HARM_TYPES)}")
    if not linked:
        raise IncidentError("explanations", "link at least one explanation")
    links, salts = [], {}
    for record in linked:
        link, record_salts = _link(record)
        links.append(link)
        salts[record.id] = record_salts
    first = linked[0]
    incident_id = new_record_id()
    model = {
        "model_name": first.model_name,
        "model_version": first.model_version,
        "model_sha256": first.model_sha256,
    }
    body = {
        "kind": INCIDENT,
        "title": title,
        "severity": severity,
        "harm_type": harm_type,
        "description": description,
        "explanations": links,
    }
    openings = {"kind": OPENINGS, "incident": incident_id, "salts": salts}
    return [
        AuditEntry(body=body, caller=caller, id=incident_id, **model),
        AuditEntry(body=openings, caller=caller, **model),
    ]


def open_incident(
    store: AuditStore,
    explanation_ids: Sequence[str],
    *,
    title: str,
    severity: str,
    harm_type: str,
    description: str,
    caller: str | None,
) -> StoredRecord:
    """Append a new incident linking ``explanation_ids``; return its stored incident record.

    Raises
    ------
    IncidentError
        A field is out of its set, an id repeats, or an id names no explanation record.
    AuditWriteError
        The store refused the append; nothing was stored.
    """
    if len(set(explanation_ids)) != len(explanation_ids):
        raise IncidentError("explanations", "an explanation is linked twice")
    if len(explanation_ids) > MAX_LINKS:
        raise IncidentError("explanations", f"at most {MAX_LINKS} explanations per incident")
    linked = []
    for record_id in explanation_ids:
        record = store.get(record_id)
        if record is None or record.body.get("kind") != "explanation":
            raise IncidentError("explanations", f"no explanation with id {record_id!r}")
        linked.append(record)
    entries = incident_entries(
        linked, title=title, severity=severity, harm_type=harm_type, description=description, caller=caller
    )
    return store.append(entries)[0]


def incident_json(record: StoredRecord) -> dict[str, Any]:
    """An incident record as the API answers it: its fields, who opened it and where it sits in the chain."""
    body = record.body
    return {
        "id": record.id,
        "seq": record.seq,
        "hash": record.hash,
        "created_at": record.created_at.isoformat(),
        "opened_by": record.caller,
        "title": body["title"],
        "severity": body["severity"],
        "harm_type": body["harm_type"],
        "description": body["description"],
        "explanations": [
            {k: link[k] for k in ("id", "seq", "hash", "model", "prediction")}
            for link in body["explanations"]
        ],
    }


def is_incident(record: StoredRecord | None) -> bool:
    """Whether ``record`` is an incident record."""
    return record is not None and record.body.get("kind") == INCIDENT


def salts_of(openings: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """The salts an openings record holds, by explanation id and feature."""
    return {rid: dict(features) for rid, features in openings["salts"].items()}


incident_index = Table(
    "incident_index",
    _index_metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("id", String(64), nullable=False, unique=True),
    Column("created_at", String(32), nullable=False),
    Column("model_name", String, nullable=False),
    Column("model_version", String, nullable=False),
    Column("severity", String(16), nullable=False),
    Column("harm_type", String(32), nullable=False),
    Column("title", Text, nullable=False),
    Column("caller", String, nullable=True),
    Column("openings_id", String(64), nullable=True),
    Index("ix_incident_index_model_name_seq", "model_name", "seq"),
)


class IncidentIndex:
    """The projection listing incidents (one row each) and where their openings sit in the chain."""

    name = "incident_index"
    tables = (incident_index,)

    def apply(self, conn: Connection, batch: Sequence[StoredRecord]) -> None:
        """Index the incident records of ``batch`` and attach their openings."""
        for record in batch:
            kind = record.body.get("kind")
            if kind == INCIDENT:
                body = record.body
                conn.execute(
                    insert(incident_index).values(
                        seq=record.seq,
                        id=record.id,
                        created_at=utc_text(record.created_at),
                        model_name=record.model_name,
                        model_version=record.model_version,
                        severity=body["severity"],
                        harm_type=body["harm_type"],
                        title=body["title"],
                        caller=record.caller,
                    )
                )
            elif kind == OPENINGS:
                conn.execute(
                    update(incident_index)
                    .where(incident_index.c.id == record.body["incident"])
                    .values(openings_id=record.id)
                )


def list_incidents(
    conn: Connection, *, model_name: str | None = None, before_seq: int | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    """Index rows of incidents, newest first (keyset pages: ``before_seq`` is the last page's last ``seq``)."""
    clauses = []
    if model_name is not None:
        clauses.append(incident_index.c.model_name == model_name)
    if before_seq is not None:
        clauses.append(incident_index.c.seq < before_seq)
    query = select(incident_index).where(*clauses).order_by(incident_index.c.seq.desc()).limit(limit)
    return [dict(row._mapping) for row in conn.execute(query)]
