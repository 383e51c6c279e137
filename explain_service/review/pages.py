"""The read-only pages: the list of explanations, one explanation, the queue, the printable record."""

from __future__ import annotations

from typing import Any

from flask import Response, current_app, render_template, request

from explain_service.audit.reviews import ACTIONS, STATUSES
from explain_service.errors import NotFound
from explain_service.quality import QUALITY_FLAGS
from explain_service.review import listing, words
from explain_service.review.blueprint import blp
from explain_service.review.pdf import html_to_pdf
from explain_service.review.record_view import RecordView, record_view


def _services() -> Any:
    return current_app.extensions["explain"]


def _html(html: str, status: int = 200) -> Response:
    return Response(html, status=status, mimetype="text/html")


@blp.route("/")
def explanations() -> Response:
    """The list of explanations with filters, sort and keyset pages."""
    query = listing.parse(request.args)
    page = None
    if query.filters is not None:
        page = _services().index.search(
            query.filters, after=query.after, limit=listing.PAGE_SIZE, order=listing.ORDERS[query.order]
        )
    html = render_template(
        "review/list.html",
        query=query,
        page=page,
        models=_model_options(),
        suspended=[
            found for name in _services().registry.names() for found in _services().suspensions.of_model(name)
        ],
        statuses=STATUSES,
        flags=QUALITY_FLAGS,
        flag_text=words.FLAG_TEXT,
        when=words.when,
    )
    return _html(html, 422 if query.errors else 200)


@blp.route("/queue")
def queue() -> Response:
    """Flagged and escalated explanations, and those that need a review, oldest first."""
    after = request.args.get("after", "")
    shown = request.args.get("n", "")
    page = _services().index.queue(
        after=int(after) if after.isdigit() and len(after) < 19 else None, limit=listing.PAGE_SIZE
    )
    html = render_template(
        "review/queue.html",
        page=page,
        shown=int(shown) if shown.isdigit() and len(shown) < 19 else 0,
        when=words.when,
    )
    return _html(html)


@blp.route("/explanations/<record_id>")
def explanation(record_id: str) -> Response:
    """One explanation: decision, reasons, plots, LIME, counterfactuals, quality, provenance, reviews."""
    return _html(render_detail(record_view(record_id)))


def render_detail(
    view: RecordView,
    *,
    verify: dict[str, Any] | None = None,
    form: dict[str, Any] | None = None,
    form_errors: dict[str, list[str]] | None = None,
) -> str:
    """The detail page of ``view``, with a re-verify result or a review form to show again."""
    return render_template(
        "review/detail.html",
        v=view,
        verify=verify,
        form=form or {},
        form_errors=form_errors or {},
        actions=ACTIONS,
        flag_text=words.FLAG_TEXT,
        legend=words.PLOT_LEGEND,
        when=words.when,
    )


@blp.route("/explanations/<record_id>/print")
def print_view(record_id: str) -> Response:
    """The printable record: decision, reasons, waterfall, counterfactuals, provenance, review history."""
    return _html(_render_print(record_view(record_id)))


@blp.route("/explanations/<record_id>/pdf")
def pdf(record_id: str) -> Response:
    """The printable record as a PDF, made from the same HTML."""
    view = record_view(record_id)
    data = html_to_pdf(_render_print(view, pdf=True), request.host_url)
    name = f"explanation-{view.id}.pdf"
    return Response(
        data,
        mimetype="application/pdf",
        headers={"Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store"},
    )


def _render_print(view: RecordView, *, pdf: bool = False) -> str:
    return render_template(
        "review/print.html",
        v=view,
        legend=words.PLOT_LEGEND,
        flag_text=words.FLAG_TEXT,
        when=words.when,
        pdf=pdf,
    )


@blp.route("/<path:anything>")
def not_found(anything: str) -> Response:
    """Any other path under /review/: an HTML 404 (after the guard, so paths cannot be probed)."""
    raise NotFound(f"No review page at /review/{anything}")


def _model_options() -> list[tuple[str, str]]:
    registry = _services().registry
    return [(name, name) for name in registry.names()]
