"""Login, logout, and where ``/`` leads a browser."""

from __future__ import annotations

import logging

from flask import Flask, Response, redirect, render_template, request, url_for
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.wrappers import Response as BaseResponse

from explain_service.access import limits
from explain_service.access.guard import access_state
from explain_service.counts import count
from explain_service.errors import NotFound, Unavailable
from explain_service.review import session
from explain_service.review.blueprint import blp

log = logging.getLogger(__name__)


@blp.route("/login", methods=["GET", "POST"])
def login() -> BaseResponse | str:
    """The login form; a ``review`` or ``admin`` key starts a session."""
    if request.method == "GET":
        return render_template("review/login.html", error=None)
    wait = limits.login_blocked()
    if wait is not None:
        minutes = max(1, round(wait / 60))
        response = _refused(
            f"Too many failed sign-ins from this address; try again in {count(minutes, 'minute')}.", 429
        )
        response.headers["Retry-After"] = str(wait)
        return response
    presented = request.form.get("key", "").strip()
    try:
        key = access_state().keys.authenticate(presented) if presented else None
    except SQLAlchemyError:
        raise Unavailable("The key store does not answer; retry shortly") from None
    if key is None:
        limits.count_failed_login()
        log.warning("failed sign-in to the review pages from %s", request.remote_addr)
        return _refused("That key is not valid (unknown or revoked).", 401)
    if not session.page_role_ok(key.role):
        return _refused(f"A {key.role} key cannot open the review pages; use a review or admin key.", 403)
    session.log_in(key.name, key.role)
    return redirect(url_for("review.explanations"), code=303)


@blp.route("/logout", methods=["POST"])
def logout() -> BaseResponse:
    """End the session."""
    session.log_out()
    return redirect(url_for("review.login"), code=303)


def _refused(message: str, status: int) -> Response:
    html = render_template("review/login.html", error=message)
    return Response(html, status=status, mimetype="text/html")


def root() -> BaseResponse:
    """``/``: a browser is sent to the review pages; anything else gets the API's 404, as before."""
    # "*/*" (curl, most clients) prefers the first listed: JSON; a browser names text/html.
    if request.accept_mimetypes.best_match(["application/json", "text/html"]) == "text/html":
        return redirect(url_for("review.explanations"), code=303)
    raise NotFound("No resource here; the API lives under /v1 (see /docs)")


def add_root(app: Flask) -> None:
    """Route ``/`` (public: it only points elsewhere)."""
    app.add_url_rule("/", endpoint="root", view_func=root, methods=["GET"])
