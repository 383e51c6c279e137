"""``/v1/models/{name}/report``: a model version's transparency report, and its importance plot (review role)."""

from __future__ import annotations

from typing import Any

from flask import current_app
from flask.views import MethodView

from explain_service.api import schemas
from explain_service.api.blueprint import Blueprint
from explain_service.api.report_schemas import ReportQuery, TransparencyReport
from explain_service.fairness.reporting import report_for
from explain_service.jsonio import json_response

blp = Blueprint(
    "reports", __name__, url_prefix="/v1/models", description="Transparency reports of registered models."
)


@blp.route("/<name>/report")
class ReportView(MethodView):
    @blp.arguments(ReportQuery, location="query")
    @blp.response(200, TransparencyReport)
    @blp.alt_response(404, schema=schemas.ErrorResponse)
    @blp.alt_response(503, schema=schemas.ErrorResponse)
    def get(self, query: dict[str, Any], name: str) -> Any:
        """The transparency report of a model version (default: the newest healthy one)."""
        return json_response(report_for(current_app.extensions["explain"], name, query.get("version")))
