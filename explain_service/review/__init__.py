"""The compliance reviewers' HTML console under ``/review/``.

::

    blueprint.py   the ``review`` blueprint, its CSRF check and page context
    session.py     the signed session cookie (key name, CSRF token); the guard's session loader
    secret.py      the cookie-signing secret: EXPLAIN_SECRET_KEY, else one kept in the audit database
    auth_views.py  /review/login, /review/logout, and ``/`` (a browser is sent to /review/)
    pages.py       list, detail, queue and print pages (read only)
    report_pages.py  a model's transparency report (page, image, PDF); incidents opened from a record
    actions.py     the forms that change something: review events, re-verify, suspend and resume
    words.py       numbers and model terms in plain words for the templates
    pdf.py         ``html_to_pdf``: the printable page as a PDF (WeasyPrint), images fetched in-process
    errors.py      HTML error pages for the blueprint's requests (JSON for clients that ask for it)
    templates/     Jinja2 (autoescaped): base.html with blocks, _macros.html with one macro per widget
    static/        one stylesheet and one small script; no inline script or style (CSP default-src 'self')

The pages read records and write review events through the audit layer and the review data layer; they
never compute an explanation themselves (re-verify calls the API's replay check).
"""

from __future__ import annotations

from flask import Flask

# The modules that add routes and handlers to the blueprint, imported for that effect.
from explain_service.review import actions, auth_views, errors, pages, report_pages, session  # noqa: F401
from explain_service.review.blueprint import blp

__all__ = ["init_app"]


def init_app(app: Flask) -> None:
    """Register the review pages, their session and ``/`` on ``app`` (after the access layer)."""
    session.configure(app)
    app.register_blueprint(blp)
    auth_views.add_root(app)
