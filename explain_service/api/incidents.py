"""``/v1/incidents``: open an incident from stored explanations, list and read incidents (review role)."""

from __future__ import annotations

from typing import Any

from flask import current_app
from flask.views import MethodView
from marshmallow import Schema, fields, validate

from explain_service.access import caller_name
from explain_service.api import schemas
from explain_service.api.blueprint import Blueprint
from explain_service.audit.incidents import (
    HARM_TYPES,
    MAX_LINKS,
    SEVERITIES,
    IncidentError,
    incident_json,
    is_incident,
    list_incidents,
    open_incident,
)
from explain_service.audit.store import AuditWriteError
from explain_service.errors import AuditUnavailable, NotFound, ValidationFailed
from explain_service.jsonio import json_response

blp = Blueprint(
    "incidents",
    __name__,
    url_prefix="/v1/incidents",
    description="Incidents: reviewers' reports that decisions caused harm, kept in the audit chain.",
)


class IncidentRequest(Schema):
    title = fields.String(required=True, validate=validate.Length(min=1, max=200))
    severity = fields.String(required=True, validate=validate.OneOf(SEVERITIES))
    harm_type = fields.String(required=True, validate=validate.OneOf(HARM_TYPES))
    description = fields.String(load_default="", validate=validate.Length(max=10_000))
    explanations = fields.List(
        fields.String(validate=validate.Length(min=1, max=64)),
        required=True,
        validate=validate.Length(min=1, max=MAX_LINKS),
        metadata={"description": "Ids of the explanation records the incident is about."},
    )


class IncidentLink(Schema):
    id = fields.String()
    seq = fields.Integer(metadata={"description": "Where the explanation record sits in the chain."})
    hash = fields.String(metadata={"description": "The explanation record's chain hash, as sealed."})
    model = fields.Nested(schemas.ModelRefSchema)
    prediction = fields.Nested(schemas.PredictionSchema, allow_none=True)


class Incident(Schema):
    id = fields.String()
    seq = fields.Integer()
    hash = fields.String()
    created_at = fields.String()
    opened_by = fields.String(allow_none=True, metadata={"description": "The key that opened it."})
    title = fields.String()
    severity = fields.String(metadata={"enum": list(SEVERITIES)})
    harm_type = fields.String(metadata={"enum": list(HARM_TYPES)})
    description = fields.String()
    explanations = fields.List(fields.Nested(IncidentLink))


class IncidentSummary(Schema):
    id = fields.String()
    seq = fields.Integer()
    created_at = fields.String()
    model_name = fields.String()
    model_version = fields.String()
    severity = fields.String()
    harm_type = fields.String()
    title = fields.String()
    opened_by = fields.String(allow_none=True)


class IncidentList(Schema):
    incidents = fields.List(fields.Nested(IncidentSummary))
    next_before_seq = fields.Integer(
        allow_none=True, metadata={"description": "Pass as before_seq for the next page; null on the last."}
    )


class IncidentQuery(Schema):
    model = fields.String(validate=validate.Length(min=1, max=64))
    before_seq = fields.Integer(validate=validate.Range(min=1))
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=200))


INCIDENT_REQUEST = IncidentRequest()


def _services() -> Any:
    return current_app.extensions["explain"]


def create(body: dict[str, Any]) -> dict[str, Any]:
    """Open an incident from a validated request body; the API and the review form share it."""
    try:
        record = open_incident(
            _services().audit,
            body["explanations"],
            title=body["title"],
            severity=body["severity"],
            harm_type=body["harm_type"],
            description=body["description"],
            caller=caller_name(),
        )
    except IncidentError as exc:
        raise ValidationFailed({exc.field: [exc.message]}) from None
    except AuditWriteError as exc:
        raise AuditUnavailable(exc.reason) from None
    _services().tally.catch_up(force=True)  # listed at once, by this worker and every other
    return incident_json(record)


@blp.route("")
class IncidentsView(MethodView):
    @blp.arguments(IncidentQuery, location="query")
    @blp.response(200, IncidentList)
    def get(self, query: dict[str, Any]) -> Any:
        """Incidents, newest first, one keyset page at a time."""
        tally = _services().tally
        tally.catch_up()
        with tally.connect() as conn:
            rows = list_incidents(
                conn, model_name=query.get("model"), before_seq=query.get("before_seq"), limit=query["limit"]
            )
        items = [
            {
                **{k: v for k, v in row.items() if k not in ("caller", "openings_id")},
                "opened_by": row["caller"],
            }
            for row in rows
        ]
        following = rows[-1]["seq"] if len(rows) == query["limit"] else None
        return json_response({"incidents": items, "next_before_seq": following})

    @blp.arguments(INCIDENT_REQUEST)
    @blp.response(201, Incident)
    @blp.alt_response(422, schema=schemas.ErrorResponse)
    def post(self, body: dict[str, Any]) -> Any:
        """Open an incident about stored explanations; it is appended to the audit chain."""
        return json_response(create(body), 201)


@blp.route("/<incident_id>")
class IncidentView(MethodView):
    @blp.response(200, Incident)
    @blp.alt_response(404, schema=schemas.ErrorResponse)
    def get(self, incident_id: str) -> Any:
        """One incident, with the decisions it links and where it sits in the chain."""
        record = _services().audit.get(incident_id[:64])
        if not is_incident(record):
            raise NotFound(f"No incident with id {incident_id[:64]!r}")
        return json_response(incident_json(record))
