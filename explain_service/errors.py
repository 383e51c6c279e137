"""The exceptions of explain-service.

Every error the service raises on purpose derives from :class:`ServiceError`,
knows its HTTP status and builds its own message from structured arguments::

    ServiceError
    ├── BadRequest (400)
    ├── ValidationFailed (422)            errors: {field: [messages]}
    │   └── OptionError(method, option, message)
    │                                     an option this model cannot honour, named
    │                                     ``options.<method>.<option>``; raised by explainers
    ├── NotFound (404)
    │   ├── ModelNotFound(name, version)
    │   └── ExplanationNotFound(id)
    ├── RegistryError (500 when met while serving; a CLI error otherwise)
    │   ├── IntegrityError(path, reason)  a file does not match its manifest hash
    │   ├── ArtifactRefused(path, reason) pickle, unknown format or untrusted type
    │   └── RegistrationError(reason)     register_model cannot store this model
    └── Unavailable (503)
        ├── AuditUnavailable(reason)      the audit record could not be written
        └── ModelUnavailable(name, version, reason)
                                          registered, but failed verification or loading

One handler (``explain_service.api.errors``) renders them as the JSON error
shape ``{"code", "status", "message", "errors"}``; the review pages render the
same exceptions as HTML.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

# Reason phrases pinned here: Python 3.13 renamed 422 to "Unprocessable Content", and the
# error shape is part of the external contract.
_PHRASES = {422: "Unprocessable Entity", 413: "Request Entity Too Large"}


def status_phrase(status: int) -> str:
    """The reason phrase of an HTTP status, stable across Python versions."""
    return _PHRASES.get(status) or HTTPStatus(status).phrase


class ServiceError(Exception):
    """Root of all deliberate errors; ``status`` is the HTTP status to answer with."""

    status: int = 500

    def __init__(self, message: str, errors: dict[str, list[str]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.errors = errors or {}

    def to_dict(self) -> dict[str, object]:
        """The JSON error shape of the external contract."""
        out: dict[str, object] = {
            "code": self.status,
            "status": status_phrase(self.status),
            "message": self.message,
        }
        if self.errors:
            out["errors"] = self.errors
        return out


class BadRequest(ServiceError):
    status = 400


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


class RegistryError(ServiceError):
    status = 500


class IntegrityError(RegistryError):
    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"Integrity check failed for {path}: {reason}")
        self.path = path
        self.reason = reason


class ArtifactRefused(RegistryError):
    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"Refused to load {path}: {reason}")
        self.path = path
        self.reason = reason


class RegistrationError(RegistryError):
    def __init__(self, reason: str) -> None:
        super().__init__(f"Cannot register model: {reason}")


class Unavailable(ServiceError):
    status = 503


class AuditUnavailable(Unavailable):
    def __init__(self, reason: str) -> None:
        super().__init__(f"The audit record could not be written, so no answer is given: {reason}")


class ModelUnavailable(Unavailable):
    """A registered version that cannot be served; ``reason`` never holds a filesystem path."""

    def __init__(self, name: str, version: str, reason: str) -> None:
        super().__init__(
            f"model_unavailable: model {name!r} version {version!r} cannot be served: {reason}",
            {"model": [f"{name} version {version}: {reason}"]},
        )
        self.name = name
        self.version = version
        self.reason = reason


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
