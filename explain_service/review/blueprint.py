"""The ``review`` blueprint: its templates, static files, the CSRF check and what every page sees."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, request

from explain_service.access import current_principal, has_role
from explain_service.review import session

blp = Blueprint(
    "review",
    __name__,
    url_prefix="/review",
    template_folder="templates",
    static_folder="static",
    static_url_path="/static",
)


@blp.before_request
def _csrf() -> None:
    session.check_csrf()


@blp.after_request
def _no_store(response: Response) -> Response:
    # Pages hold personal data and a CSRF token: no shared or back-button cache keeps them.
    if request.endpoint != "review.static":
        response.headers["Cache-Control"] = "no-store"
    return response


@blp.context_processor
def _page_context() -> dict[str, Any]:
    principal = current_principal()
    return {
        "csrf_token": session.csrf_token,
        "csrf_field": session.CSRF_FIELD,
        "principal": principal,
        "is_admin": has_role("admin"),
        "signed_in": principal.name is not None,
        "auth_required": session.auth_required(),
    }
