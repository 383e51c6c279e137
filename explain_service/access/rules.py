"""Who may call what: one table from Flask endpoint to the least role it needs.

Roles are ordered, each including the one before it::

    public  <  explain  <  review  <  admin

``explain`` keys predict, explain and read the records they created; ``review`` keys also read every
record, the HTML pages, review events, fairness and reports; ``admin`` keys also manage keys, read
``/metrics`` and verify or export the audit trail. ``owned`` marks the routes that show one record: an
``explain`` key sees only its own there, and another key's record is answered as not found (404, not
403, so ids cannot be probed). The object check itself is :func:`explain_service.access.guard.require_owner`,
called by the one function that loads a record for the API.

A route missing from :data:`RULES` is refused to everyone but ``admin`` keys, and the suite builds a test
from Flask's URL map that fails for any such route: a new route is added here in the same change.
"""

from __future__ import annotations

from dataclasses import dataclass

ROLE_RANK = {"public": 0, "explain": 1, "review": 2, "admin": 3}


@dataclass(frozen=True)
class Rule:
    """The least role an endpoint needs, and whether it shows one record owned by a key."""

    role: str
    owned: bool = False


PUBLIC = Rule("public")
EXPLAIN = Rule("explain")
OWNED = Rule("explain", owned=True)
REVIEW = Rule("review")
ADMIN = Rule("admin")

RULES: dict[str, Rule] = {
    "health.Healthz": PUBLIC,
    "health.Readyz": PUBLIC,
    "health.Metrics": ADMIN,
    "api-docs.openapi_json": EXPLAIN,
    "docs": EXPLAIN,
    "static": EXPLAIN,
    "models.ModelsView": EXPLAIN,
    "models.ModelView": EXPLAIN,
    "models.ModelVersionView": EXPLAIN,
    "models.PredictView": EXPLAIN,
    "models.PredictVersionView": EXPLAIN,
    "models.ExplainView": EXPLAIN,
    "models.ExplainVersionView": EXPLAIN,
    "explanations.ExplanationView": OWNED,
    "explanations.VerifyView": OWNED,
    "explanations.PlotView": OWNED,
    "fairness.FairnessView": REVIEW,
    "fairness.FairnessVersionView": REVIEW,
    "fairness.ImportanceView": REVIEW,
    "fairness.BeeswarmView": REVIEW,
    "incidents.IncidentsView": REVIEW,
    "incidents.IncidentView": REVIEW,
    "reports.ReportView": REVIEW,
    "reviews.ReviewsView": OWNED,  # a calling system reads the overrides of its own records
    "reviews.AddReviewView": REVIEW,
    "suspensions.SuspendView": ADMIN,
    "suspensions.ResumeView": ADMIN,
    "suspensions.SuspendVersionView": ADMIN,
    "suspensions.ResumeVersionView": ADMIN,
    # The reviewers' pages (a session cookie from /review/login also authenticates them).
    "root": PUBLIC,
    "review.static": PUBLIC,
    "review.login": PUBLIC,
    "review.logout": PUBLIC,
    "review.explanations": REVIEW,
    "review.explanation": REVIEW,
    "review.print_view": REVIEW,
    "review.pdf": REVIEW,
    "review.queue": REVIEW,
    "review.not_found": REVIEW,
    "review.add_review": REVIEW,
    "review.verify": REVIEW,
    "review.suspend": ADMIN,
    "review.model_report": REVIEW,
    "review.model_report_image": REVIEW,
    "review.model_report_pdf": REVIEW,
    "review.open_incident": REVIEW,
    "review.incident": REVIEW,
    "review.models": REVIEW,
    "review.incidents": REVIEW,
}

UNLISTED = ADMIN


def rule_for(endpoint: str) -> Rule:
    """The rule of ``endpoint``; routes nobody listed are for admin keys only."""
    return RULES.get(endpoint, UNLISTED)


def at_least(role: str, needed: str) -> bool:
    """Whether ``role`` includes ``needed``."""
    return ROLE_RANK[role] >= ROLE_RANK[needed]
