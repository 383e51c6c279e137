"""The evidence map: for each obligation a compliance officer must show, what in this service answers it.

Each entry names the obligation, what it asks in a line, the report fields, pages, API routes and commands
that answer it, and live counts read from the report being built (never a second source). The wording of
the obligations is a summary for orientation, not legal advice; the citations are the texts to read.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def evidence_map(report: Mapping[str, Any], chain: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The entries of the evidence map for ``report`` (the other sections already filled in)."""
    name = report["model"]["name"]
    version = report["model"]["version"]
    quality = report["explanation_quality"]
    over = report["oversight"]
    decisions = over["decisions"]
    favourable = report["classes"]["positive"]
    adverse = sum(n for label, n in decisions.items() if favourable is not None and label != favourable)
    return [
        {
            "obligation": "EU AI Act Art. 12: record-keeping",
            "asks": "automatic, tamper-evident logs of the system's operation over its lifetime",
            "answered_by": {
                "fields": ["explanation_quality.explanations", "oversight"],
                "pages": ["/review/", "/review/explanations/{id}"],
                "api": ["GET /v1/explanations/{id}", "GET /v1/explanations/{id}/verify"],
                "commands": ["explain-service audit verify", "explain-service audit export"],
            },
            "counts": {
                "records_of_this_version": quality["explanations"],
                "records_in_chain": chain.get("records"),
                "chain_head": chain.get("head_hash"),
            },
        },
        {
            "obligation": "EU AI Act Art. 13: transparency and information to deployers",
            "asks": "intended purpose, characteristics, accuracy, known limits and risks, in instructions for use",
            "answered_by": {
                "fields": [
                    "description",
                    "intended_use",
                    "owner",
                    "training_data",
                    "features",
                    "performance",
                    "importance",
                    "bias_audit",
                ],
                "pages": [f"/review/models/{name}"],
                "api": [f"GET /v1/models/{name}/report", f"GET /v1/models/{name}"],
                "commands": [f"explain-service report --model {name}@{version} --output report.pdf"],
            },
            "counts": {
                "performance_measured": report["performance"] is not None,
                "bias_audit_id": (report["bias_audit"] or {}).get("id"),
            },
        },
        {
            "obligation": "EU AI Act Art. 14: human oversight",
            "asks": "people who can understand, monitor, override and interrupt the system",
            "answered_by": {
                "fields": ["oversight", "disparity"],
                "pages": ["/review/queue", "/review/explanations/{id}"],
                "api": ["POST /v1/explanations/{id}/reviews", "GET /v1/explanations/{id}/reviews"],
                "commands": ["explain-service models suspend NAME[@V] --reason ..."],
            },
            "counts": {
                "reviews": over["reviews"],
                "overrides": over["overrides"],
                "escalations": over["escalations"],
                "review_required": over["review_required"],
                "suspensions": over["suspensions"],
            },
        },
        {
            "obligation": "EU AI Act Art. 86: right to explanation of individual decision-making",
            "asks": "clear and meaningful explanations of the system's role in a decision about a person",
            "answered_by": {
                "fields": ["explanation_quality"],
                "pages": ["/review/explanations/{id}", "/review/explanations/{id}/print"],
                "api": ["GET /v1/explanations/{id}", "GET /v1/explanations/{id}/plots/{plot}.png"],
                "commands": [],
            },
            "counts": {
                "explanations": quality["explanations"],
                "with_shap": quality["shap"]["count"],
                "over_additivity_bar": quality["shap"]["over_additivity_bar"],
            },
        },
        {
            "obligation": "US ECOA / Regulation B (12 CFR 1002.9): adverse-action reasons",
            "asks": "the specific principal reasons for a denial of credit, stated to the applicant",
            "answered_by": {
                "fields": ["explanations[].reasons in each :explain answer"],
                "pages": ["/review/explanations/{id}/print"],
                "api": [f"POST /v1/models/{name}:explain", "GET /v1/explanations/{id}"],
                "commands": ["explain-service batch --methods shap"],
            },
            "counts": {"adverse_decisions": adverse, "overrides": over["overrides"]},
        },
        {
            "obligation": "EU AI Act Art. 72-73: post-market monitoring and serious incidents",
            "asks": "watch the system in use, and report serious incidents",
            "answered_by": {
                "fields": ["disparity", "oversight.incidents"],
                "pages": [f"/review/models/{name}", "/review/explanations/{id}"],
                "api": ["GET /metrics (explain_disparity_*)", "POST /v1/incidents", "GET /v1/incidents"],
                "commands": ["explain-service incidents export --redact"],
            },
            "counts": {"incidents": over["incidents"], "disparity_alert": report["disparity"]["alert"]},
        },
    ]
