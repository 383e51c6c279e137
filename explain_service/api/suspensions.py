"""``/v1/models/{name}:suspend`` and ``:resume`` (also under ``/versions/{version}``): the stop button.

Admin keys only (``access/rules.py``). The state and its audit records are
:mod:`explain_service.audit.suspensions`; ``GET /v1/models/{name}`` shows it, and while it holds,
``:predict`` and ``:explain`` answer 503 ``model_suspended``.
"""

from __future__ import annotations

from typing import Any

from flask import current_app
from flask.views import MethodView
from marshmallow import Schema, fields

from explain_service.access import caller_name
from explain_service.api import schemas
from explain_service.api.blueprint import Blueprint
from explain_service.audit.suspensions import (
    BadSuspensionReason,
    Suspension,
    SuspensionConflict,
    SuspensionNotRecorded,
    Suspensions,
)
from explain_service.errors import AuditUnavailable, Conflict, ModelNotFound, ModelSuspended, ValidationFailed
from explain_service.jsonio import json_response

blp = Blueprint(
    "suspensions",
    __name__,
    url_prefix="/v1/models",
    description="Suspend and resume a model or one version (admin): while suspended it answers 503.",
)

SUSPEND_REQUEST = schemas.SuspendRequest()
RESUME_REQUEST = schemas.ResumeRequest()


class ResumeAnswer(Schema):
    """The state after a resumption, read back from the store (not the suspension it lifted)."""

    suspended = fields.Boolean(
        metadata={
            "description": "Whether what was resumed still answers 503: a version stays stopped while its "
            "whole model is suspended. False after resuming a whole model (versions' own suspensions are "
            "listed in `in_force`)."
        }
    )
    suspension = fields.Nested(
        schemas.SuspensionSchema,
        allow_none=True,
        metadata={"description": "The suspension that still stops the resumed version, or null."},
    )
    lifted = fields.Nested(schemas.SuspensionSchema, metadata={"description": "The suspension just lifted."})
    in_force = fields.List(
        fields.Nested(schemas.SuspensionSchema),
        metadata={"description": "Every suspension of the model still in force, the whole model's first."},
    )


def _suspensions() -> Suspensions:
    return current_app.extensions["explain"].suspensions  # type: ignore[no-any-return]


def check_not_suspended(name: str, version: str) -> None:
    """Raise :class:`ModelSuspended` (503) while ``name`` or its ``version`` is suspended."""
    found = _suspensions().active(name, version)
    if found is not None:
        raise ModelSuspended(name, version, found.scope, found.reason)


def suspension_state(name: str, version: str) -> dict[str, Any] | None:
    """What ``GET /v1/models/{name}`` shows: the suspension in force for this version, or None."""
    found = _suspensions().active(name, version)
    return None if found is None else found.to_dict()


def change_suspension(action: str, name: str, version: str | None, reason: str) -> dict[str, Any]:
    """Suspend (``action="suspend"``) or resume ``name`` or its ``version``; the answer as a dict.

    A suspension answers ``{"suspended": true, "suspension"}``; a resumption answers the state read
    back after it (:func:`_state_after_resume`), since lifting one suspension may leave another in force.

    The one path for the JSON routes and the review pages' form, so both answer alike: 404 for a model
    or version that is not registered, 422 for a bad reason, 409 for a suspension already in that
    state, 503 when the audit record cannot be written.
    """
    versions = current_app.extensions["explain"].registry.versions(name)
    if not versions or (version is not None and version not in versions):
        raise ModelNotFound(name, version)
    try:
        if action == "suspend":
            found = _suspensions().suspend(name, version, reason, by=caller_name())
        else:
            found = _suspensions().resume(name, version, by=caller_name(), reason=reason)
    except SuspensionNotRecorded as exc:
        raise AuditUnavailable(str(exc)) from None
    except BadSuspensionReason as exc:
        raise ValidationFailed({"reason": [str(exc)]}) from None
    except SuspensionConflict as exc:
        raise Conflict(str(exc)) from None
    if action == "suspend":
        return {"suspended": True, "suspension": found.to_dict()}
    return _state_after_resume(name, version, found)


def _state_after_resume(name: str, version: str | None, lifted: Suspension) -> dict[str, Any]:
    """What is in force once ``lifted`` is gone, read now: a version may still be stopped by its model."""
    in_force = _suspensions().of_model(name)
    whole = next((s for s in in_force if s.version is None), None)
    own = next((s for s in in_force if version is not None and s.version == version), None)
    still = None if version is None else (whole or own)
    return {
        "suspended": still is not None,
        "suspension": None if still is None else still.to_dict(),
        "lifted": lifted.to_dict(),
        "in_force": [s.to_dict() for s in in_force],
    }


def _suspend(body: dict[str, Any], name: str, version: str | None) -> Any:
    return json_response(change_suspension("suspend", name, version, body["reason"]))


def _resume(body: dict[str, Any], name: str, version: str | None) -> Any:
    return json_response(change_suspension("resume", name, version, body.get("reason") or ""))


@blp.route("/<name>:suspend")
class SuspendView(MethodView):
    @blp.arguments(SUSPEND_REQUEST)
    @blp.response(200, schemas.SuspensionAnswer)
    @blp.alt_response(404, schema=schemas.ErrorResponse)
    @blp.alt_response(409, schema=schemas.ErrorResponse)
    @blp.alt_response(422, schema=schemas.ErrorResponse)
    def post(self, body: dict[str, Any], name: str) -> Any:
        """Suspend every version of a model: :predict and :explain answer 503 until it is resumed."""
        return _suspend(body, name, None)


@blp.route("/<name>:resume")
class ResumeView(MethodView):
    @blp.arguments(RESUME_REQUEST)
    @blp.response(200, ResumeAnswer)
    @blp.alt_response(404, schema=schemas.ErrorResponse)
    @blp.alt_response(409, schema=schemas.ErrorResponse)
    def post(self, body: dict[str, Any], name: str) -> Any:
        """Lift a whole-model suspension (a version's own suspension stays); answer what stays in force."""
        return _resume(body, name, None)


@blp.route("/<name>/versions/<version>:suspend")
class SuspendVersionView(MethodView):
    @blp.arguments(SUSPEND_REQUEST)
    @blp.response(200, schemas.SuspensionAnswer)
    @blp.alt_response(404, schema=schemas.ErrorResponse)
    @blp.alt_response(409, schema=schemas.ErrorResponse)
    @blp.alt_response(422, schema=schemas.ErrorResponse)
    def post(self, body: dict[str, Any], name: str, version: str) -> Any:
        """Suspend one version of a model."""
        return _suspend(body, name, version)


@blp.route("/<name>/versions/<version>:resume")
class ResumeVersionView(MethodView):
    @blp.arguments(RESUME_REQUEST)
    @blp.response(200, ResumeAnswer)
    @blp.alt_response(404, schema=schemas.ErrorResponse)
    @blp.alt_response(409, schema=schemas.ErrorResponse)
    def post(self, body: dict[str, Any], name: str, version: str) -> Any:
        """Lift one version's own suspension; answer whether the version is still stopped by its model."""
        return _resume(body, name, version)
