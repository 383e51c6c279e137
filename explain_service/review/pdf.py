"""A page as a PDF, with WeasyPrint, from the same HTML and print CSS the browser prints.

WeasyPrint lays out HTML and CSS itself (through pango), so the PDF needs no browser process, installs
from the package registry with only the system's pango underneath, and honours ``@media print`` and
``@page``: the download and the browser's own print of ``/print`` come from one stylesheet.

The document's resources (its stylesheet, its plot images) are fetched *inside this process*, never
over the network: :func:`app_fetcher` resolves a URL on ``base_url`` against the app's routes and
serves static files from their folder and plots from the plot cache, after the same owner check as the
API. Any other URL is refused, so a PDF cannot be made to reach another host (no SSRF), and no second
request has to authenticate.
"""

from __future__ import annotations

import mimetypes
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from flask import current_app
from werkzeug.exceptions import HTTPException

Fetcher = Callable[[str], tuple[bytes, str]]  # URL -> (body, MIME type); raises to refuse


class ResourceRefused(ValueError):
    """A document asked for a resource that is not one of the app's own static files or plots."""


def html_to_pdf(html: str, base_url: str, *, fetcher: Fetcher | None = None) -> bytes:
    """Render ``html`` (relative URLs resolved on ``base_url``) as PDF bytes.

    ``fetcher`` turns each resource URL into ``(body, mime_type)`` or raises to refuse it; by default
    :func:`app_fetcher` (call inside a request or app context). A refused resource is left out of the
    PDF (WeasyPrint logs a warning), as a browser leaves out an image it cannot load.
    """
    import weasyprint  # imported on first use: it loads pango, which most requests never need
    from weasyprint.urls import URLFetcher, URLFetcherResponse

    fetch = fetcher or app_fetcher(base_url)

    class InProcessFetcher(URLFetcher):  # type: ignore[misc]
        def fetch(self, url: str, headers: Any = None) -> URLFetcherResponse:
            body, mime_type = fetch(url)
            return URLFetcherResponse(url, body, {"Content-Type": mime_type})

    document = weasyprint.HTML(string=html, base_url=base_url, url_fetcher=InProcessFetcher())
    return bytes(document.write_pdf())


def app_fetcher(base_url: str) -> Fetcher:
    """A fetcher serving the app's static files and stored plots for URLs on ``base_url``."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    base = urlsplit(base_url)

    def fetch(url: str) -> tuple[bytes, str]:
        parts = urlsplit(url)
        if (parts.scheme, parts.netloc) != (base.scheme, base.netloc):
            raise ResourceRefused(f"not fetched: {url}")
        adapter = app.url_map.bind(base.netloc or "localhost", url_scheme=base.scheme or "http")
        try:
            endpoint, args = adapter.match(parts.path, method="GET")
        except HTTPException:
            raise ResourceRefused(f"no such resource: {parts.path}") from None
        if endpoint == "static" or endpoint.endswith(".static"):
            return _static_file(app, endpoint, str(args["filename"]))
        if endpoint == "explanations.PlotView":
            return _plot(str(args["record_id"]), str(args["plot"]))
        raise ResourceRefused(f"not a static file or a plot: {parts.path}")

    return fetch


def _static_file(app: Any, endpoint: str, filename: str) -> tuple[bytes, str]:
    blueprint = endpoint.rpartition(".")[0]
    folder = app.blueprints[blueprint].static_folder if blueprint else app.static_folder
    root = Path(folder).resolve()
    path = (root / filename).resolve()
    if root not in path.parents or not path.is_file():
        raise ResourceRefused(f"no such static file: {filename}")
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return path.read_bytes(), mime


def _plot(record_id: str, plot: str) -> tuple[bytes, str]:
    from explain_service.api.explanations import load_record  # the API's owner check

    record = load_record(record_id)
    body = record.body
    _, data, _ = current_app.extensions["explain"].plots.get_or_render(
        plot, body["explanation"], body["instance"], body["model"]
    )
    return data, "image/png"
