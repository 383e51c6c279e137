"""The model's transparency report as a page (and PDF), the incident form's target, and the queue's flag.

::

    GET  /review/models/<name>[?version=V]           the report (the same dict as GET /v1/models/{name}/report)
    GET  /review/models/<name>/importance.png        its global-importance chart
    GET  /review/models/<name>/report.pdf            the page as a PDF (WeasyPrint, resources in-process)
    POST /review/incidents                           open an incident from the detail page's form
    GET  /review/incidents/<incident_id>             one incident

Templates: ``report.html`` (extends the base) and ``report_document.html`` (a file, for the ``report``
command) both include ``_report_body.html``; ``_incident_form.html`` is included by the detail page and
``_disparity_flag.html`` by the queue.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable
from importlib import resources
from typing import Any

from flask import Response, current_app, redirect, render_template, request, url_for
from werkzeug.wrappers import Response as BaseResponse

from explain_service.api.incidents import create
from explain_service.audit.incidents import HARM_TYPES, SEVERITIES, incident_json, is_incident
from explain_service.counts import count
from explain_service.errors import NotFound, ValidationFailed
from explain_service.fairness.monitor import disparity, monitored_versions
from explain_service.fairness.reporting import importance_of, report_for
from explain_service.plots.importance import importance_bars
from explain_service.plots.render import render_png
from explain_service.review.blueprint import blp
from explain_service.review.pdf import app_fetcher, html_to_pdf
from explain_service.review.words import output_space

IMAGES = ("importance", "beeswarm")


def _services() -> Any:
    return current_app.extensions["explain"]


@blp.app_template_filter("counted")
def counted(n: Any, noun: str, plural: str | None = None) -> str:
    """``{{ rows|counted('row') }}`` -> ``1 row``, ``2,000 rows``."""
    return count(int(n), noun, plural)


@blp.app_template_filter("report_num")
def report_num(value: Any, digits: int = 4) -> str:
    """A report figure in words: ``—`` for none, integers as they are, others to ``digits`` significant."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return "—"
        return f"{value:.{digits}g}"
    return str(value)


@blp.app_context_processor
def _report_context() -> dict[str, Any]:
    return {
        "disparity_alerts": disparity_alerts,
        "incident_severities": SEVERITIES,
        "incident_harm_types": HARM_TYPES,
    }


def disparity_alerts() -> list[dict[str, Any]]:
    """The model versions whose live decisions are in disparity alert, and the features in alert."""
    services = _services()
    services.tally.catch_up()
    out = []
    with services.tally.connect() as conn:
        for name, version in monitored_versions(conn):
            found = disparity(conn, name, version, services.disparity)
            if found["alert"]:
                features = [f for f, v in found["by_feature"].items() if v["alert"]]
                out.append({"model": name, "version": version, "features": features})
    return out


def report_image(report: dict[str, Any], name: str) -> bytes:
    """The PNG of one of the report's images: global importance bars, or the beeswarm of the same values."""
    if name == "beeswarm" and report.get("importance"):
        from explain_service.plots.beeswarm import beeswarm

        model = _services().registry.get(report["model"]["name"], report["model"]["version"])
        result = importance_of(model)
        numeric = [f.name for f in model.schema.features if f.is_numeric]
        fig = beeswarm(
            result.values,
            result.rows,
            result.model,
            numeric=numeric,
            output=result.output,
            target=result.target,
        )
        return render_png(fig)
    if name == "importance" and report.get("importance"):
        importance = report["importance"]
        fig = importance_bars(
            importance["mean_abs_shap"],
            report["model"],
            reference=importance["reference"],
            rows=importance["rows"],
        )
        return render_png(fig)
    raise NotFound(f"The report has no image {name!r}")


def importance_units(report: dict[str, Any]) -> str | None:
    """The sentence saying in words what the importance figures are measured in (log-odds, ...)."""
    if not report.get("importance"):
        return None
    model = _services().registry.get(report["model"]["name"], report["model"]["version"])
    result = importance_of(model)
    return output_space(result.output, result.target)[1]


def render_report_page(report: dict[str, Any], image_src: Callable[[str], str] | None) -> str:
    """The report page's HTML."""
    versions = _services().registry.versions(report["model"]["name"])
    return render_template(
        "review/report.html",
        report=report,
        image_src=image_src,
        versions=versions,
        importance_units=importance_units(report),
    )


def render_report_document(report: dict[str, Any]) -> str:
    """The report as one self-contained HTML file: stylesheet inline, images as data URLs (not served)."""
    css = resources.files("explain_service.review").joinpath("static/review.css").read_text()

    def embedded(name: str) -> str:
        return "data:image/png;base64," + base64.b64encode(report_image(report, name)).decode()

    return render_template(
        "review/report_document.html",
        report=report,
        image_src=embedded if report.get("importance") else None,
        stylesheet=css,
        stylesheet_url=None,
        importance_units=importance_units(report),
    )


def _page_images(name: str, version: str) -> Callable[[str], str]:
    return lambda image: url_for("review.model_report_image", name=name, image=image, version=version)


@blp.route("/models/<name>")
def model_report(name: str) -> Response:
    """The transparency report of a model version."""
    report = report_for(_services(), name, request.args.get("version") or None)
    html = render_report_page(report, _page_images(name, report["model"]["version"]))
    return Response(html, mimetype="text/html")


@blp.route("/models/<name>/<image>.png")
def model_report_image(name: str, image: str) -> Response:
    """An image of the report (global importance)."""
    if image not in IMAGES:
        raise NotFound(f"The report has no image {image!r}")
    report = report_for(_services(), name, request.args.get("version") or None)
    return Response(report_image(report, image), mimetype="image/png", headers={"Cache-Control": "no-store"})


@blp.route("/models/<name>/report.pdf")
def model_report_pdf(name: str) -> Response:
    """The report page as a PDF, from the same HTML and print stylesheet."""
    report = report_for(_services(), name, request.args.get("version") or None)
    version = report["model"]["version"]
    html = render_report_page(report, _page_images(name, version))
    fallback = app_fetcher(request.host_url)

    def fetch(url: str) -> tuple[bytes, str]:
        for image in IMAGES:
            if f"/review/models/{name}/{image}.png" in url:
                return report_image(report, image), "image/png"
        return fallback(url)

    data = html_to_pdf(html, request.host_url, fetcher=fetch)
    filename = f"report-{name}-v{version}.pdf"
    return Response(
        data,
        mimetype="application/pdf",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


@blp.route("/incidents", methods=["POST"])
def open_incident() -> BaseResponse:
    """Open an incident from the detail page's form; on success show it."""
    form = request.form
    ids = [form.get("explanations", ""), *form.get("more", "").split()]
    body = {
        "title": form.get("title", "").strip(),
        "severity": form.get("severity", ""),
        "harm_type": form.get("harm_type", ""),
        "description": form.get("description", ""),
        "explanations": [i for i in ids if i],
    }
    from explain_service.api.incidents import INCIDENT_REQUEST

    errors = INCIDENT_REQUEST.validate(body)
    if errors:
        raise ValidationFailed(
            {k: [str(m) for m in v] if isinstance(v, list) else [str(v)] for k, v in errors.items()}
        )
    incident = create(body)
    return redirect(url_for("review.incident", incident_id=incident["id"]), code=303)


@blp.route("/incidents/<incident_id>")
def incident(incident_id: str) -> Response:
    """One incident: what was reported, by whom, about which decisions."""
    record = _services().audit.get(incident_id[:64])
    if not is_incident(record):
        raise NotFound(f"No incident with id {incident_id[:64]!r}")
    assert record is not None
    html = render_template("review/incident.html", incident=incident_json(record))
    return Response(html, mimetype="text/html")


@blp.route("/models")
def models() -> Response:
    """Every registered model with its versions, linking to their reports, and the disparity alerts."""
    registry = _services().registry
    rows = [{"name": name, "versions": registry.versions(name)} for name in registry.names()]
    html = render_template("review/models.html", models=[r for r in rows if r["versions"]])
    return Response(html, mimetype="text/html")


@blp.route("/incidents", methods=["GET"])
def incidents() -> Response:
    """Incidents, newest first (one page of 100)."""
    from explain_service.audit.incidents import list_incidents

    tally = _services().tally
    tally.catch_up()
    with tally.connect() as conn:
        rows = list_incidents(conn, limit=100)
    return Response(render_template("review/incidents.html", incidents=rows), mimetype="text/html")
