"""The transparency report page in a real browser (Debian's chromium via Playwright) over a real gunicorn.

It renders, its images load, and every figure it shows equals the JSON report's; the queue flags the
model's disparity alert, and an incident opened from a record's page is a chain record.
Screenshots go to ``var/artifacts/`` (not committed).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from explain_service.audit.store import AuditStore
from explain_service.registry.demo import german_credit_frame
from explain_service.service import rows_as_dicts
from tests._browser import Site, chromium, images, log_in, new_page, screenshot, served_site
from tests._gunicorn import LiveServer

pytestmark = pytest.mark.slow


class ReportSite(Site):
    def __init__(self, server: LiveServer, keys: dict[str, str], database_url: str) -> None:
        super().__init__(server, keys, database_url)
        self.ids: list[str] = []


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, demo_models_dir: Path) -> Iterator[ReportSite]:
    root = tmp_path_factory.mktemp("report-site")
    shutil.copytree(demo_models_dir / "german-credit", root / "models" / "german-credit")
    env = {
        "EXPLAIN_DISPARITY_MIN_GROUP": "1",
        "EXPLAIN_DISPARITY_THRESHOLD": "1.01",  # any difference between groups raises the alert
    }
    with served_site(root, ("review", "admin"), env, ReportSite) as s:
        rows = rows_as_dicts(german_credit_frame()[0].head(40))
        answer = s.api("POST", "/v1/models/german-credit:explain", {"instances": rows, "methods": ["shap"]})
        s.ids = [e["id"] for e in answer["explanations"]]
        s.api(
            "POST",
            f"/v1/explanations/{s.ids[0]}/reviews",
            {"action": "override", "comment": "c", "decision": "good"},
        )
        yield s


@pytest.fixture(scope="module")
def browser(site: ReportSite) -> Iterator[Any]:
    with chromium() as browser:
        yield browser


@pytest.fixture
def page(browser: Any, site: ReportSite) -> Iterator[Any]:
    with new_page(browser, site.server.url) as tab:
        log_in(tab, site, "review")
        yield tab


def at(report: Any, path: str) -> Any:
    for part in path.split("."):
        report = report[int(part)] if isinstance(report, list) else report[part]
    return report


def test_the_report_page_renders_its_images_load_and_its_figures_equal_the_json(page, site) -> None:
    page.goto("/review/models/german-credit")
    assert page.get_by_role("heading", name="Transparency report: german-credit v1").is_visible()
    loaded = images(page)
    assert len(loaded) == 2 and all(complete and width > 0 for _src, complete, width in loaded), loaded
    screenshot(page, "report-model")
    shown = page.eval_on_selector_all(
        "[data-figure]", "all => all.map(e => [e.dataset.figure, JSON.parse(e.dataset.value), e.textContent])"
    )
    report = site.api("GET", "/v1/models/german-credit/report", role="review")
    assert len(shown) > 60
    for path, value, text in shown:
        assert at(report, path) == value, path
        if isinstance(value, int) and not isinstance(value, bool):
            assert text.strip() == str(value), path
    paths = {path for path, _v, _t in shown}
    assert {
        "oversight.overrides",
        "explanation_quality.explanations",
        "disparity.by_feature.sex.demographic_parity_ratio",
    } <= paths
    assert report["oversight"]["overrides"] == 1 and report["disparity"]["alert"] is True
    pdf = page.request.get("/review/models/german-credit/report.pdf")
    assert pdf.status == 200 and pdf.headers["content-type"] == "application/pdf"
    assert pdf.body().startswith(b"%PDF-") and pdf.body().count(b"/Subtype /Image") == 2  # both charts
    assert page.dialogs == []


def test_the_queue_flags_the_disparity_alert(page, site) -> None:
    page.goto("/review/queue")
    flag = page.locator(".notice.bad", has_text="Disparity alert")
    assert flag.is_visible() and "german-credit v1" in flag.inner_text()
    flag.get_by_role("link", name="german-credit v1").click()
    page.wait_for_url("**/review/models/german-credit?version=1")


def test_an_incident_opened_from_a_record_page_is_a_chain_record(page, site) -> None:
    page.goto(f"/review/explanations/{site.ids[1]}")
    page.get_by_label("Title").fill("Declined <script>alert(1)</script>")
    page.get_by_label("Severity").select_option("high")
    page.get_by_label("Harm type").select_option("discrimination")
    page.get_by_label("Description").fill("Same profile, other outcome.")
    page.get_by_label("Other explanation ids (optional, separated by spaces)").fill(site.ids[2])
    page.get_by_role("button", name="Open incident").click()
    page.wait_for_url("**/review/incidents/*")
    assert page.get_by_role("heading", name="Incident: Declined <script>alert(1)</script>").is_visible()
    incident_id = page.url.rsplit("/", 1)[1]
    incident = site.api("GET", f"/v1/incidents/{incident_id}", role="review")
    assert [e["id"] for e in incident["explanations"]] == site.ids[1:3]
    assert incident["severity"] == "high" and incident["opened_by"] == "review-1"
    assert AuditStore(site.database_url, create=False).verify().ok
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Incidents").click()
    page.get_by_role("link", name="Declined <script>alert(1)</script>").click()
    page.wait_for_url(f"**/review/incidents/{incident_id}")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Models").click()
    page.get_by_role("link", name="v1", exact=True).click()
    page.wait_for_url("**/review/models/german-credit?version=1")
    assert page.dialogs == []
