"""The exceptions of explain-service.

Every error the service raises on purpose derives from :class:`ServiceError`,
knows its HTTP status and builds its own message from structured arguments::

    ServiceError
    ├── BadRequest (400)
    ├── Unauthorized (401)                no key, or not a valid one; WWW-Authenticate: Bearer
    ├── Forbidden (403)                   a valid key whose role is too low
    ├── TooManyRequests (429)             a per-key limit or quota; Retry-After
    ├── BodyTooLarge(limit) (413)
    ├── UnsupportedMediaType(expected) (415)
    ├── ValidationFailed (422)            errors: {field: [messages]}
    │   └── OptionError(method, option, message)
    │                                     an option this model cannot honour, named
    │                                     ``options.<method>.<option>``; raised by explainers
    ├── PayloadTooLarge (413)             errors: {field: [messages]}
    ├── NotFound (404)
    │   ├── ModelNotFound(name, version)
    │   └── ExplanationNotFound(id)
    ├── Conflict (409)                    the resource is not in a state that allows the change
    ├── RegistryError (500 when met while serving; a CLI error otherwise)
    │   ├── IntegrityError(path, reason)  a file does not match its manifest hash
    │   ├── ArtifactRefused(path, reason) pickle, unknown format or untrusted type
    │   └── RegistrationError(reason)     register_model cannot store this model
    └── Unavailable (503)
        ├── AuditUnavailable(reason)      the audit record could not be written
        ├── ModelUnavailable(name, version, reason)
        │                                 registered, but failed verification or loading
        ├── ModelSuspended(name, version, scope, reason)
        │                                 an admin suspended the model or version (the stop button)
        └── DeadlineExceeded(seconds)     the request's compute deadline passed; Retry-After

One handler (``explain_service.api.errors``) renders them as the JSON error
shape ``{"code", "status", "message", "errors"}``; the review pages render the
same exceptions as HTML. A 4xx answer carries the message; a 5xx answer only its
class's ``summary`` (the message may name files, hosts or databases: it goes to
the log), unless the class builds its message from safe values (``detail_is_public``).
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any, ClassVar

# Reason phrases pinned here: Python 3.13 renamed 422 to "Unprocessable Content", and the
# error shape is part of the external contract.
_PHRASES = {422: "Unprocessable Entity", 413: "Request Entity Too Large"}


def status_phrase(status: int) -> str:
    """The reason phrase of an HTTP status, stable across Python versions."""
    return _PHRASES.get(status) or HTTPStatus(status).phrase


MAX_LISTED_ERRORS = 50


def cap_errors(errors: dict[str, list[str]], limit: int = MAX_LISTED_ERRORS) -> dict[str, list[str]]:
    """At most ``limit`` fields of ``errors``, plus ``_more`` saying how many were left out."""
    if len(errors) <= limit:
        return errors
    kept = dict(list(errors.items())[:limit])
    kept["_more"] = [f"{len(errors) - limit} more fields have errors; the first {limit} are listed."]
    return kept


class ServiceError(Exception):
    """Root of all deliberate errors; ``status`` is the HTTP status to answer with."""

    status: int = 500
    summary: ClassVar[str] = "Internal error."
    # A 5xx class whose message and errors are built only from safe, structured values may publish them.
    detail_is_public: ClassVar[bool] = False
    # A 5xx that is someone's decision (an admin's suspension), not a fault: the answer says it all, so
    # it points to no log and is logged as information, not as an error.
    is_fault: ClassVar[bool] = True

    def __init__(
        self,
        message: str,
        errors: dict[str, list[str]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.errors = errors or {}
        self.headers = headers or {}

    @property
    def public_message(self) -> str:
        """What an answer may say: the message of a 4xx, only the class's summary for a 5xx."""
        return self.message if self.status < 500 or self.detail_is_public else self.summary

    def to_dict(self) -> dict[str, object]:
        """The JSON error shape of the external contract."""
        out: dict[str, object] = {
            "code": self.status,
            "status": status_phrase(self.status),
            "message": self.public_message,
        }
        if self.errors:
            out["errors"] = cap_errors(self.errors)
        return out


class BadRequest(ServiceError):
    status = 400


class Unauthorized(ServiceError):
    status = 401

    def __init__(self, message: str, *, invalid: bool = False) -> None:
        challenge = 'Bearer realm="explain-service"' + (', error="invalid_token"' if invalid else "")
        super().__init__(message, headers={"WWW-Authenticate": challenge})


class Forbidden(ServiceError):
    status = 403


class TooManyRequests(ServiceError):
    status = 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, int(retry_after)))})


class BodyTooLarge(ServiceError):
    status = 413

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"The request body is larger than {limit} bytes", {"_body": [f"At most {limit} bytes."]}
        )


class UnsupportedMediaType(ServiceError):
    status = 415

    def __init__(self, expected: str, given: str | None) -> None:
        what = f"not {given!r}" if given else "none was given"
        super().__init__(
            f"Content-Type must be {expected} ({what})", {"Content-Type": [f"Must be {expected}."]}
        )


class ValidationFailed(ServiceError):
    """The request is well-formed JSON but names a field with a bad value."""

    status = 422

    def __init__(self, errors: dict[str, list[str]], message: str | None = None) -> None:
        fields = ", ".join(sorted(errors)[:5])
        super().__init__(message or f"Invalid request: {fields}", errors)


class OptionError(ValidationFailed):
    """A well-formed option that the method cannot honour for this model.

    Explainers raise it for what only the model can judge (an output space the model
    has no exact path for, a feature the model does not have, ...); the schema of the
    method's options has already refused what is wrong for every model.
    """

    def __init__(self, method: str, option: str, message: str) -> None:
        self.method = method
        self.option = option
        self.field = f"options.{method}.{option}"
        super().__init__({self.field: [message]}, f"{self.field}: {message}")


class PayloadTooLarge(ServiceError):
    """The request, or what it would store, is larger than allowed; the field names the part."""

    status = 413


class NotFound(ServiceError):
    status = 404


class ModelNotFound(NotFound):
    def __init__(self, name: str, version: str | None = None) -> None:
        what = f"model {name!r}" + (f" version {version!r}" if version is not None else "")
        super().__init__(f"No {what} is registered")
        self.name = name
        self.version = version


class ExplanationNotFound(NotFound):
    def __init__(self, explanation_id: str) -> None:
        super().__init__(f"No explanation with id {explanation_id!r}")


class Conflict(ServiceError):
    status = 409


class RegistryError(ServiceError):
    status = 500
    summary = "The model could not be loaded."


class IntegrityError(RegistryError):
    summary = "The model's files do not match their recorded hashes."

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"Integrity check failed for {path}: {reason}")
        self.path = path
        self.reason = reason


class ArtifactRefused(RegistryError):
    summary = "The model's artifact was refused."

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"Refused to load {path}: {reason}")
        self.path = path
        self.reason = reason


class RegistrationError(RegistryError):
    summary = "The model could not be registered."

    def __init__(self, reason: str) -> None:
        super().__init__(f"Cannot register model: {reason}")


class Unavailable(ServiceError):
    status = 503
    summary = "The service cannot answer this request right now."


class AuditUnavailable(Unavailable):
    summary = "The audit record could not be written, so no answer is given."

    def __init__(self, reason: str) -> None:
        super().__init__(f"The audit record could not be written, so no answer is given: {reason}")


class ModelUnavailable(Unavailable):
    """A registered version that cannot be served; ``reason`` never holds a filesystem path."""

    detail_is_public = True

    def __init__(self, name: str, version: str, reason: str) -> None:
        super().__init__(
            f"model_unavailable: model {name!r} version {version!r} cannot be served: {reason}",
            {"model": [f"{name} version {version}: {reason}"]},
        )
        self.name = name
        self.version = version
        self.reason = reason


class ModelSuspended(Unavailable):
    """An admin suspended the model (``scope`` "model") or this version; the reason is theirs to publish."""

    detail_is_public = True
    is_fault = False

    def __init__(self, name: str, version: str, scope: str, reason: str) -> None:
        what = f"model {name!r}" if scope == "model" else f"model {name!r} version {version!r}"
        end = "" if reason.endswith((".", "!", "?")) else "."
        super().__init__(
            f"model_suspended: {what} is suspended: {reason}{end}",
            {"model": [f"model_suspended: {reason}"]},
        )
        self.name = name
        self.version = version
        self.reason = reason


class DeadlineExceeded(Unavailable):
    """The request's compute deadline passed before its answer was ready; nothing was recorded."""

    detail_is_public = True

    def __init__(self, seconds: float, retry_after: int = 5) -> None:
        super().__init__(
            f"deadline_exceeded: the request did not finish within its {seconds:g} s compute deadline; "
            "ask for less work (fewer instances, samples or evaluations) or retry later",
            {"_request": ["deadline_exceeded"]},
            headers={"Retry-After": str(retry_after)},
        )


def flatten_errors(errors: Any, prefix: str = "") -> dict[str, list[str]]:
    """``{"instances": {0: {"age": [...]}}}`` -> ``{"instances.0.age": [...]}``."""
    out: dict[str, list[str]] = {}
    if isinstance(errors, dict):
        for key, value in errors.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            out.update(flatten_errors(value, path))
    elif isinstance(errors, list) and all(isinstance(e, str) for e in errors):
        out[prefix or "_body"] = list(errors)
    elif isinstance(errors, list):
        for e in errors:
            out.update(flatten_errors(e, prefix))
    else:
        out[prefix or "_body"] = [str(errors)]
    return out
