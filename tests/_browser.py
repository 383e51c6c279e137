"""One real browser over one real gunicorn for a test module: Debian's chromium driven by Playwright.

A module builds its models directory under ``root``, then ``served_site`` makes keys in a SQLite audit
store there and serves it with access control on; ``chromium`` and ``new_page`` back the module's
``browser`` and ``page`` fixtures. Screenshots go to ``var/artifacts/`` (not committed).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from explain_service.access.keys import KeyStore
from explain_service.audit.store import AuditStore
from tests._gunicorn import ROOT, LiveServer, serve_in

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
ARTIFACTS = ROOT / "var" / "artifacts"


class Site:
    """The running server, one key per role and its audit database."""

    def __init__(self, server: LiveServer, keys: dict[str, str], database_url: str) -> None:
        self.server = server
        self.keys = keys
        self.database_url = database_url

    def api(self, method: str, path: str, body: Any = None, role: str = "admin") -> Any:
        """Call the JSON API with ``role``'s key; the answer must be a success."""
        headers = {"Authorization": f"Bearer {self.keys[role]}", "Content-Type": "application/json"}
        answer = self.server.request(method, path, json.dumps(body).encode() if body else None, headers)
        assert answer.status < 300, answer.body[:500]
        return json.loads(answer.body)


@contextmanager
def served_site[S: Site](
    root: Path, roles: tuple[str, ...], env: Mapping[str, str], site: type[S]
) -> Iterator[S]:
    """Serve ``root/models`` with keys for ``roles`` (named ``{role}-1``) in ``root/var/audit.sqlite3``.

    ``env`` adds to (or overrides) access control on; the server is handed over as a ``site``.

    Skips when chromium is missing, before any server starts; fails instead under ``.ci/run``
    (``EXPLAIN_TEST_REQUIRE_BROWSER=1``), which installs it, so CI can never pass without the pages tested.
    """
    if not Path(CHROMIUM).exists():
        if os.environ.get("EXPLAIN_TEST_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{CHROMIUM} is missing although EXPLAIN_TEST_REQUIRE_BROWSER=1")
        pytest.skip(f"{CHROMIUM} is missing (.ci/run installs Debian's chromium)")
    (root / "var").mkdir()
    url = f"sqlite:///{root / 'var' / 'audit.sqlite3'}"
    store = AuditStore(url)
    keystore = KeyStore(store)
    keys = {role: keystore.create(f"{role}-1", role) for role in roles}
    keystore.close()
    store.close()
    with serve_in(root, env={"EXPLAIN_AUTH": "required", **env}) as server:
        yield site(server, keys, url)


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless chromium for the module."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@contextmanager
def new_page(browser: Any, base_url: str) -> Iterator[Any]:
    """A fresh browser context (no cookies) with a 1280 px wide page that records every dialog."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=base_url)
    tab = context.new_page()
    tab.dialogs = []
    tab.on("dialog", lambda d: (tab.dialogs.append(d.message), d.dismiss()))
    yield tab
    context.close()


def log_in(page: Any, site: Site, role: str) -> None:
    """Sign in to the review pages with ``role``'s key."""
    page.goto("/review/login")
    page.get_by_label("Key").fill(site.keys[role])
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/review/")


def screenshot(page: Any, name: str) -> None:
    """Save the full page as ``var/artifacts/{name}.png``."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def images(page: Any) -> list[list[Any]]:
    """``[src, complete, naturalWidth]`` of every image once the page has loaded."""
    page.wait_for_load_state("load")
    return page.eval_on_selector_all(
        "img", "all => all.map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])"
    )
