"""``explain-service report``: a model version's transparency report as an HTML file, a PDF or JSON."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import click

from explain_service.model_ref import parse_model_ref

HELP = """Write the transparency report of a model version.

\b
MODEL is NAME or NAME@VERSION (default: the newest healthy version). The
output's suffix picks the form: .html (one self-contained file), .pdf (the
review page's print layout) or .json (GET /v1/models/{name}/report). With
--data and --label, performance on that labelled CSV or Parquet file is added
(accuracy, ROC AUC, calibration); labels are class names. Live figures
(decisions, quality, reviews, disparity) come from the audit database.
"""


@click.command("report", help=HELP)
@click.option("--model", "target", required=True, help="NAME or NAME@VERSION")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, writable=True, path_type=Path))
@click.option("--data", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None)
@click.option("--label", default=None, help="the label column of --data")
@click.option("--models-dir", default=None, help="default: $EXPLAIN_MODELS_DIR or models/")
@click.option("--database-url", default=None, help="default: $EXPLAIN_DATABASE_URL")
def report(
    target: str,
    output: Path,
    data: Path | None,
    label: str | None,
    models_dir: str | None,
    database_url: str | None,
) -> None:
    """Build the report through the same app and functions as the HTTP API and the review page."""
    import orjson

    from explain_service.app import create_app
    from explain_service.errors import ServiceError
    from explain_service.fairness.performance import performance, read_labelled
    from explain_service.fairness.reporting import report_for
    from explain_service.review.pdf import app_fetcher, html_to_pdf
    from explain_service.review.report_pages import (
        IMAGES,
        render_report_document,
        render_report_page,
        report_image,
    )

    suffix = output.suffix.lower()
    if suffix not in (".html", ".pdf", ".json"):
        raise click.BadParameter("the output ends in .html, .pdf or .json", param_hint="--output")
    if (data is None) != (label is None):
        raise click.BadParameter("--data and --label go together")
    name, version = parse_model_ref(target)
    started = time.monotonic()
    _step(f"loading {target} and the audit database")
    overrides = {"models_dir": models_dir, "database_url": database_url, "eager_load": False, "auth": "off"}
    app = create_app({k: v for k, v in overrides.items() if v is not None})
    services = app.extensions["explain"]
    base = "http://localhost/"
    with app.test_request_context("/review/", base_url=base):
        try:
            perf = None
            if data is not None and label is not None:
                model = services.registry.get(name, version)
                _step(f"measuring performance on {data}")
                rows, labels, digest = read_labelled(data, label)
                perf = performance(model, rows, labels, digest)
            _step("reading the audit figures and computing global importance over the background")
            found = report_for(services, name, version, performance=perf)
        except ServiceError as exc:
            raise click.ClickException(exc.message) from None
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
        if suffix == ".json":
            output.write_bytes(orjson.dumps(found, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
        elif suffix == ".html":
            _step("drawing the images and writing the HTML file")
            output.write_text(render_report_document(found), encoding="utf-8")
        else:
            _step("drawing the images and rendering the PDF")
            fallback = app_fetcher(base)

            def fetch(url: str) -> tuple[bytes, str]:
                for image in IMAGES:
                    if url.split("?")[0].endswith(f"/review/models/{name}/{image}.png"):
                        return report_image(found, image), "image/png"
                return fallback(url)

            page = render_report_page(found, _image_urls(name, found["model"]["version"]))
            output.write_bytes(html_to_pdf(page, base, fetcher=fetch))
    seconds = time.monotonic() - started
    click.echo(
        f"report of {found['model']['name']} v{found['model']['version']} written to {output} ({seconds:.1f} s)"
    )


def _step(what: str) -> None:
    """One timestamped progress line on stderr: a report takes seconds, and the PDF the longest."""
    click.echo(f"{datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ} report: {what}", err=True)


def _image_urls(name: str, version: str) -> Callable[[str], str]:
    from flask import url_for

    return lambda image: url_for("review.model_report_image", name=name, image=image, version=version)
