"""The reviewers' console in a real browser: Debian's chromium driven by Playwright, over a real
``explain-service serve`` (gunicorn) with access control on and a real SQLite audit store.

One server and one browser for the module; the tests run in file order and share its records:
log in, filter, open a record (every image loads), escalate, resolve as admin, override, print, and
untrusted text (feature names, categories, references, comments) stays text. Screenshots of the
list, detail, queue and print pages go to ``var/artifacts/`` (not committed).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder

from explain_service.registry.store import register_model
from tests._browser import Site, chromium, images, log_in, new_page, screenshot, served_site
from tests._gunicorn import ROOT, LiveServer, register_tiny_model

pytestmark = pytest.mark.slow

FEATURE = '<script>alert("feature")</script>'
CATEGORY = '"><img src=x onerror=alert("category")>'
REFERENCE = "\"><img src=x onerror=alert('reference')>"
COMMENT = "<script>alert('comment')</script>\"><img src=x onerror=alert('comment')>"
CASE = "case-2026-0412"


def register_xss_model(models_dir: Path) -> None:
    """A logistic regression whose categorical feature's name and one category are HTML payloads."""
    rng = np.random.default_rng(1)
    n = 300
    frame = pd.DataFrame({"income": rng.normal(50, 10, n), FEATURE: rng.choice([CATEGORY, "plain"], n)})
    labels = np.where(
        frame["income"] + 8 * (frame[FEATURE] == CATEGORY) + rng.normal(0, 3, n) > 54, "yes", "no"
    )
    encode = ColumnTransformer([("cat", OneHotEncoder(), [FEATURE])], remainder="passthrough")
    model = Pipeline([("prep", encode), ("clf", LogisticRegression())]).fit(frame, labels)
    register_model(
        model,
        "xss",
        background=frame.iloc[:60],
        models_dir=models_dir,
        favorable="yes",
        constraints={FEATURE: {"mutable": False}, "income": {"direction": "increase"}},
    )


class ReviewSite(Site):
    """The running server, its keys and the records made for the tests."""

    def __init__(self, server: LiveServer, keys: dict[str, str], database_url: str) -> None:
        super().__init__(server, keys, database_url)
        self.ids: dict[str, str] = {}

    def explain(
        self, model: str, instances: list[dict[str, Any]], refs: list[str | None], methods: list[str]
    ) -> list[str]:
        body = {"instances": instances, "references": refs, "methods": methods}
        return [e["id"] for e in self.api("POST", f"/v1/models/{model}:explain", body)["explanations"]]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReviewSite]:
    root = tmp_path_factory.mktemp("review-site")
    register_tiny_model(root / "models")
    register_xss_model(root / "models")
    env = {"EXPLAIN_COUNTERFACTUAL_DAILY_QUOTA": "0"}
    with served_site(root, ("explain", "review", "admin"), env, ReviewSite) as s:
        ids = s.explain(
            "tiny",
            [{"x1": 1.0, "x2": 0.0}, {"x1": 50.0, "x2": 0.0}, {"x1": -1.0, "x2": 0.5}],
            [None, CASE, None],
            ["shap", "lime", "counterfactual"],
        )
        s.ids.update(plain=ids[0], out_of_range=ids[1], other=ids[2])
        (xss,) = s.explain(
            "xss", [{"income": 45.0, FEATURE: CATEGORY}], [REFERENCE], ["shap", "lime", "counterfactual"]
        )
        s.ids["xss"] = xss
        yield s


@pytest.fixture(scope="module")
def browser(site: ReviewSite) -> Iterator[Any]:
    with chromium() as browser:
        yield browser


@pytest.fixture
def page(browser: Any, site: ReviewSite) -> Iterator[Any]:
    with new_page(browser, site.server.url) as tab:
        yield tab


def shot(page: Any, name: str) -> None:
    screenshot(page, f"review-{name}")


def record_links(page: Any) -> list[str]:
    hrefs = page.eval_on_selector_all("table.rows a", "all => all.map(a => a.getAttribute('href'))")
    return [h.rsplit("/", 1)[1] for h in hrefs]


def status_of(page: Any) -> str:
    return str(page.locator("#history .badge").inner_text()).strip()


def test_log_in_filter_to_a_model_and_a_flag_and_open_a_record(page, site) -> None:
    page.goto("/review/")
    assert (
        "401" in page.title()
        and page.get_by_role("link", name="Sign in with a review or admin key").is_visible()
    )
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    log_in(page, site, "review")
    assert len(record_links(page)) == 4
    page.get_by_label("Model").select_option("tiny")
    page.get_by_label("out of range").check()
    page.get_by_role("button", name="Apply filters").click()
    page.wait_for_url("**/review/?*")
    assert record_links(page) == [site.ids["out_of_range"]]
    assert "1 match;" in page.locator(".counts").inner_text()
    shot(page, "list")
    page.locator("table.rows a").first.click()
    page.wait_for_url(f"**/review/explanations/{site.ids['out_of_range']}")
    loaded = images(page)
    assert {Path(src).stem for src, _, _ in loaded} >= {"shap_waterfall", "shap_bar", "lime_weights"}
    assert all(complete and width > 0 for _, complete, width in loaded), loaded
    contributions = page.locator("section[aria-labelledby=shap-h] td.num").all_inner_texts()
    assert contributions and all(c == "0" or c[0] in "+-" for c in contributions), contributions
    assert all(float(c.replace(",", "")) == float(f"{float(c.replace(',', '')):.4g}") for c in contributions)
    text = page.locator("main").inner_text()
    assert CASE in text and "needs review" in text and "outside the range" in text
    page.get_by_role("link", name="Re-verify").click()
    assert "Identical." in page.locator("#verify-result").inner_text()


def test_the_list_fits_a_phone_screen(page, site) -> None:
    page.set_viewport_size({"width": 390, "height": 844})
    log_in(page, site, "review")
    for path in ("/review/", f"/review/explanations/{site.ids['xss']}"):
        page.goto(path)
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, (path, overflow)
    shot(page, "detail-phone")


def review(page: Any, action: str, comment: str, decision: str | None = None) -> None:
    page.get_by_label("Action").select_option(action)
    page.get_by_label("Comment").fill(comment)
    if decision is not None:
        page.get_by_label("Decision to substitute (override only)").select_option(decision)
    page.get_by_role("button", name="Save review").click()
    page.wait_for_load_state("load")


def test_escalate_resolve_as_admin_and_override(page, site) -> None:
    record = site.ids["plain"]
    log_in(page, site, "review")
    page.goto(f"/review/explanations/{record}")
    assert status_of(page) == "unreviewed"
    review(page, "escalate", "Income proof missing; second opinion please")
    assert status_of(page) == "escalated"
    assert "Income proof missing; second opinion please" in page.locator("#history").inner_text()
    page.goto("/review/queue")
    assert record in record_links(page)
    shot(page, "queue")
    page.goto(f"/review/explanations/{record}")
    review(page, "approve", "looks fine to me")
    assert "403" in page.title()  # a reviewer cannot resolve an escalation
    page.get_by_role("button", name="Sign out").click()
    log_in(page, site, "admin")
    page.goto(f"/review/explanations/{record}")
    review(page, "approve", "checked the income proof")
    assert status_of(page) == "approved"
    original = site.api("GET", f"/v1/explanations/{record}")["explanations"][0]["prediction"]["label"]
    other = "no" if original == "yes" else "yes"
    review(page, "override", "policy exception 7", decision=other)
    assert status_of(page) == "overridden"
    assert f"A reviewer replaced this decision with {other}." in page.locator("main").inner_text()
    answer = site.api("GET", f"/v1/explanations/{record}/reviews")
    events = answer["reviews"]
    assert [(e["action"], e["by"]) for e in events] == [
        ("escalate", "review-1"),
        ("approve", "admin-1"),
        ("override", "admin-1"),
    ]
    assert events[-1]["decision"] == other
    assert (answer["status"], answer["decision"]) == ("overridden", other)
    page.get_by_role("link", name="Re-verify").click()
    assert "Identical." in page.locator("#verify-result").inner_text()
    assert all(complete and width > 0 for _, complete, width in images(page))
    shot(page, "detail")


def test_print_view_renders_and_downloads_as_pdf(page, site) -> None:
    log_in(page, site, "review")
    record = site.ids["plain"]
    page.emulate_media(media="print")
    page.goto(f"/review/explanations/{record}/print")
    loaded = images(page)
    assert loaded and all(complete and width > 0 for _, complete, width in loaded), loaded
    text = page.locator("main").inner_text()
    for part in ("Decision", "Main reasons", "Provenance", "Review history", "policy exception 7"):
        assert part in text, part
    assert not page.locator("form").first.is_visible()
    shot(page, "print")
    pdf = page.request.get(f"/review/explanations/{record}/pdf")
    assert pdf.status == 200 and pdf.body().startswith(b"%PDF-")


def test_untrusted_text_renders_as_text(page, site) -> None:
    record = site.ids["xss"]
    log_in(page, site, "review")
    page.goto(f"/review/explanations/{record}")
    review(page, "flag", COMMENT)
    pages = [
        f"/review/explanations/{record}",
        f"/review/explanations/{record}/print",
        "/review/?model=xss",
        "/review/queue",
        "/review/?reference=" + REFERENCE.replace('"', "%22").replace("'", "%27").replace(" ", "+"),
    ]
    for path in pages:
        page.goto(path)
        page.wait_for_load_state("load")
        assert page.locator("img[src='x']").count() == 0, path
        scripts = page.eval_on_selector_all("script", "all => all.map(s => s.getAttribute('src'))")
        assert all(src == "/review/static/review.js" for src in scripts), (path, scripts)
        assert page.locator("img[onerror]").count() == 0, path
    assert page.dialogs == []
    page.goto(f"/review/explanations/{record}")
    text = page.locator("main").inner_text()
    for payload in (FEATURE, CATEGORY, REFERENCE, COMMENT):
        assert payload in text, payload
    page.goto("/review/?reference=" + REFERENCE.replace('"', "%22").replace("'", "%27").replace(" ", "+"))
    assert record_links(page) == [record]


def test_a_form_post_without_its_token_is_refused(page, site) -> None:
    log_in(page, site, "admin")
    answer = page.request.post(
        f"/review/explanations/{site.ids['other']}/reviews", form={"action": "approve", "comment": "no token"}
    )
    assert answer.status == 400
    assert site.api("GET", f"/v1/explanations/{site.ids['other']}/reviews")["reviews"] == []


def test_audit_verify_passes_after_the_reviews(site) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "explain_service.cli", "audit", "verify", "--database-url", site.database_url],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    # 3 key creations, 4 explanations and the 4 reviews above, all in one chain.
    assert done.stdout.startswith("ok: 11 records"), done.stdout
