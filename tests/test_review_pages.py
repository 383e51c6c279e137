"""The reviewers' pages through Flask's test client: login, session, CSRF, errors, list, detail, PDF.

The browser-level checks (images load, no script runs, screenshots) are in
``test_review_pages_browser.py``; these are the fast ones, with access control on and real keys.
"""

from __future__ import annotations

import html
import re
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from explain_service.app import create_app
from explain_service.review.pdf import ResourceRefused, app_fetcher, html_to_pdf
from explain_service.review.secret import SecretKeyError
from tests.conftest import GERMAN_ROW

TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')
HTML = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}


def make_app(models_dir: Path, db: Path, **settings: Any) -> Flask:
    return create_app(
        {
            "models_dir": str(models_dir),
            "database_url": f"sqlite:///{db}",
            "plots_dir": str(db.parent / "plots"),
            "ratelimit_default": "",
            "counterfactual_daily_quota": 0,
            "request_deadline_seconds": 0,
            **settings,
        }
    )


@pytest.fixture(scope="module")
def site(demo_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One app with keys of every role and four explanations of two models (one out of range)."""
    db = tmp_path_factory.mktemp("review") / "audit.sqlite3"
    app = make_app(demo_models_dir, db)
    keys = app.extensions["explain_access"].keys
    made = {role: keys.create(f"{role}-1", role) for role in ("explain", "review", "admin")}
    client = app.test_client()
    bearer = {"Authorization": f"Bearer {made['admin']}"}
    rows = [GERMAN_ROW, {**GERMAN_ROW, "age": 99, "duration": 6}]  # age 99: above the observed max
    ids: dict[str, list[str]] = {}
    for model in ("german-credit", "german-credit-linear"):
        r = client.post(
            f"/v1/models/{model}:explain", json={"instances": rows, "methods": ["shap"]}, headers=bearer
        )
        assert r.status_code == 200, r.get_json()
        ids[model] = [e["id"] for e in r.get_json()["explanations"]]
    return {"app": app, "db": db, "keys": made, "ids": ids}


def submit_login(client: FlaskClient, key: str, addr: str | None = None) -> Any:
    """Fill in the login form with ``key`` (from the client address ``addr``); the answer."""
    env = {"REMOTE_ADDR": addr} if addr is not None else {}
    token = TOKEN.search(client.get("/review/login", environ_base=env).get_data(as_text=True))
    assert token is not None
    return client.post("/review/login", data={"key": key, "csrf_token": token.group(1)}, environ_base=env)


def log_in(client: FlaskClient, key: str) -> str:
    """Sign in with ``key``; return the session's CSRF token."""
    r = submit_login(client, key)
    assert r.status_code == 303 and r.headers["Location"] == "/review/"
    return token_of(client)


def token_of(client: FlaskClient) -> str:
    found = TOKEN.search(client.get("/review/queue").get_data(as_text=True))
    assert found is not None
    return found.group(1)


def test_login_sets_a_strict_http_only_session_cookie(site) -> None:
    client = site["app"].test_client()
    log_in(client, site["keys"]["review"])
    cookie = client.get_cookie("explain_review")
    assert cookie is not None and cookie.http_only and cookie.same_site == "Strict" and not cookie.secure
    assert cookie.expires is not None  # a permanent session: it ends LIFETIME after login
    assert "review-1" not in cookie.value and site["keys"]["review"] not in cookie.value


def test_the_cookie_is_secure_under_tls(site) -> None:
    client = site["app"].test_client()
    page = client.get("/review/login", base_url="https://review.example")
    token = TOKEN.search(page.get_data(as_text=True))
    assert token is not None
    r = client.post(
        "/review/login",
        data={"key": site["keys"]["admin"], "csrf_token": token.group(1)},
        base_url="https://review.example",
    )
    assert r.status_code == 303
    assert "Secure" in r.headers["Set-Cookie"] and "SameSite=Strict" in r.headers["Set-Cookie"]


@pytest.mark.parametrize(
    ("role", "status", "message"),
    [("explain", 403, "cannot open the review pages"), (None, 401, "not valid")],
    ids=["explain-key", "unknown-key"],
)
def test_login_refuses_keys_that_may_not_review(site, role, status, message) -> None:
    client = site["app"].test_client()
    r = submit_login(client, site["keys"][role] if role else "xsk_" + "A" * 43)
    assert r.status_code == status and message in r.get_data(as_text=True)
    assert client.get("/review/", headers=HTML).status_code == 401


def test_failed_sign_ins_are_limited_per_address_and_a_good_key_is_not_counted(
    demo_models_dir: Path, tmp_path: Path
) -> None:
    app = make_app(demo_models_dir, tmp_path / "audit.sqlite3", login_failure_limit="3/15 minutes")
    good = app.extensions["explain_access"].keys.create("reviewer", "review")
    client = app.test_client()

    def sign_in(key: str, addr: str = "10.0.0.1") -> Any:
        return submit_login(client, key, addr)

    for _ in range(3):
        assert sign_in(good).status_code == 303  # successes spend nothing
    assert [sign_in("xsk_" + "B" * 43).status_code for _ in range(4)] == [401, 401, 401, 429]
    blocked = sign_in(good)  # now even the right key waits: the form does not say which guess was right
    assert blocked.status_code == 429 and "Too many failed sign-ins" in blocked.get_data(as_text=True)
    assert 800 < int(blocked.headers["Retry-After"]) <= 900
    assert sign_in(good, addr="10.0.0.2").status_code == 303  # another address is not held back


@pytest.mark.parametrize(
    "path",
    [
        "/review/login",
        "/review/logout",
        "/review/explanations/{id}/reviews",
    ],
)
@pytest.mark.parametrize("token", ["missing", "wrong"])
def test_a_post_without_the_csrf_token_is_refused(site, path, token) -> None:
    client = site["app"].test_client()
    log_in(client, site["keys"]["admin"])
    record_id = site["ids"]["german-credit"][0]
    data = {"action": "approve", "key": site["keys"]["admin"]}
    if token == "wrong":
        data["csrf_token"] = "x" * 43
    r = client.post(path.format(id=record_id), data=data, headers=HTML)
    assert r.status_code == 400
    assert "security token" in r.get_data(as_text=True)
    assert r.mimetype == "text/html"
    assert site["app"].extensions["explain"].index.reviews(record_id) == []


def test_re_verify_is_a_page_of_its_own_that_reloads_without_posting_again(site) -> None:
    client = site["app"].test_client()
    log_in(client, site["keys"]["review"])
    record_id = site["ids"]["german-credit"][0]
    detail = client.get(f"/review/explanations/{record_id}", headers=HTML).get_data(as_text=True)
    assert (
        f'<a class="button secondary" href="/review/explanations/{record_id}/verify">Re-verify</a>' in detail
    )
    before = site["app"].extensions["explain"].audit.count()
    for _ in range(2):  # a reload recomputes and stores nothing
        r = client.get(f"/review/explanations/{record_id}/verify", headers=HTML)
        assert r.status_code == 200 and "<strong>Identical.</strong>" in r.get_data(as_text=True)
    assert site["app"].extensions["explain"].audit.count() == before
    posted = client.post(f"/review/explanations/{record_id}/verify", headers=HTML)
    assert 400 <= posted.status_code < 500  # no longer a form post


def test_the_session_opens_pages_and_their_images_but_not_the_json_api(site) -> None:
    client = site["app"].test_client()
    log_in(client, site["keys"]["review"])
    record_id = site["ids"]["german-credit"][0]
    assert client.get(f"/review/explanations/{record_id}").status_code == 200
    image = client.get(f"/v1/explanations/{record_id}/plots/shap_waterfall.png")
    assert image.status_code == 200 and image.data[:8] == b"\x89PNG\r\n\x1a\n"
    assert client.get("/v1/models").status_code == 401
    assert client.get(f"/v1/explanations/{record_id}").status_code == 401


def test_a_revoked_key_ends_its_session(demo_models_dir: Path, tmp_path: Path) -> None:
    app = make_app(demo_models_dir, tmp_path / "audit.sqlite3")
    keys = app.extensions["explain_access"].keys
    client = app.test_client()
    log_in(client, keys.create("short-lived", "review"))
    assert client.get("/review/", headers=HTML).status_code == 200
    keys.revoke("short-lived")
    r = client.get("/review/", headers=HTML)
    assert r.status_code == 401 and "Sign in" in r.get_data(as_text=True)


def test_logout_ends_the_session(site) -> None:
    client = site["app"].test_client()
    token = log_in(client, site["keys"]["review"])
    r = client.post("/review/logout", data={"csrf_token": token})
    assert r.status_code == 303 and r.headers["Location"] == "/review/login"
    assert client.get("/review/", headers=HTML).status_code == 401


def test_pages_answer_html_errors_and_scripts_json(site) -> None:
    client = site["app"].test_client()
    r = client.get("/review/", headers=HTML)
    assert r.status_code == 401 and r.mimetype == "text/html"
    assert 'href="/review/login"' in r.get_data(as_text=True)
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    r = client.get("/review/", headers={"Accept": "application/json"})
    assert r.status_code == 401 and r.get_json()["code"] == 401
    bearer = {**HTML, "Authorization": f"Bearer {site['keys']['explain']}"}
    r = client.get("/review/", headers=bearer)
    assert r.status_code == 403 and r.mimetype == "text/html"
    bearer["Authorization"] = f"Bearer {site['keys']['review']}"
    for path in ("/review/explanations/0123456789abcdef", "/review/no/such/page"):
        r = client.get(path, headers=bearer)
        assert r.status_code == 404 and r.mimetype == "text/html", path
    r = client.get("/review/no/such/page", headers={"Accept": "text/html"})
    assert r.status_code == 401, "unknown pages are not told apart from known ones without a key"


def test_root_sends_a_browser_to_the_pages_and_answers_other_clients_json(site) -> None:
    client = site["app"].test_client()
    r = client.get("/", headers=HTML)
    assert r.status_code == 303 and r.headers["Location"] == "/review/"
    r = client.get("/")
    assert r.status_code == 404 and r.get_json()["code"] == 404


def test_every_page_keeps_the_strict_content_security_policy(site) -> None:
    client = site["app"].test_client()
    log_in(client, site["keys"]["review"])
    record_id = site["ids"]["german-credit"][0]
    for path in (
        "/review/",
        "/review/queue",
        f"/review/explanations/{record_id}",
        f"/review/explanations/{record_id}/print",
    ):
        r = client.get(path)
        assert r.status_code == 200, path
        assert r.headers["Content-Security-Policy"].startswith("default-src 'self'")
        assert r.headers["Cache-Control"] == "no-store"
        html = r.get_data(as_text=True)
        assert "<style" not in html and " style=" not in html and not re.search(r"<script>(?!</)", html), path
        assert not re.search(r"<script(?![^>]*\bsrc=\"/review/static/)", html), path


def test_the_list_filters_by_model_and_flag_and_pages_by_keyset(site) -> None:
    client = site["app"].test_client()
    log_in(client, site["keys"]["review"])
    ids = site["ids"]
    html = client.get("/review/?model=german-credit&flag=out_of_range").get_data(as_text=True)
    shown = set(re.findall(r'href="/review/explanations/([0-9a-f]+)"', html))
    assert shown == {ids["german-credit"][1]}
    assert "1 match;" in html
    html = client.get("/review/?model=german-credit-linear&order=oldest").get_data(as_text=True)
    assert re.findall(r'href="/review/explanations/([0-9a-f]+)"', html) == ids["german-credit-linear"]
    assert client.get("/review/?from=yesterday&status=lost").status_code == 422
    today = (
        site["app"].extensions["explain"].index.get(ids["german-credit"][0]).created_at.astimezone(UTC).date()
    )
    for since, until, expected in (
        (today, today, 4),
        (today + timedelta(days=1), None, 0),
        (None, today - timedelta(days=1), 0),
    ):
        query = "&".join(f"{k}={v}" for k, v in (("from", since), ("to", until)) if v is not None)
        html = client.get(f"/review/?{query}").get_data(as_text=True)
        assert len(re.findall(r'href="/review/explanations/([0-9a-f]+)"', html)) == expected, query


def test_keyset_pages_cover_every_record_once(site, monkeypatch) -> None:
    from explain_service.review import listing

    monkeypatch.setattr(listing, "PAGE_SIZE", 3)
    client = site["app"].test_client()
    log_in(client, site["keys"]["review"])
    seen: list[str] = []
    url: str | None = "/review/"
    while url is not None:
        html = client.get(url).get_data(as_text=True)
        seen += re.findall(r'href="/review/explanations/([0-9a-f]+)"', html)
        nxt = re.search(r'href="([^"]+)" rel="next"', html)
        url = nxt.group(1).replace("&amp;", "&") if nxt else None
    every = [i for model_ids in site["ids"].values() for i in model_ids]
    assert sorted(seen) == sorted(every) and len(seen) == len(every)
    assert "4 matches; showing 4\u20134." in html


def test_the_detail_page_says_every_model_term_in_plain_words(site) -> None:
    client = site["app"].test_client()
    log_in(client, site["keys"]["review"])
    html = client.get(f"/review/explanations/{site['ids']['german-credit'][0]}").get_data(as_text=True)
    assert "The model decided" in html and "with a probability of" in html
    assert "log-odds, the logarithm of the odds" in html
    assert "E[f(X)] is the model&#39;s average score" in html and "f(x) its score for this case" in html
    assert "/v1/explanations/" in html and "shap_waterfall.png" in html and "shap_bar.png" in html


def test_the_pdf_is_made_from_the_print_page_with_its_images(site) -> None:
    client = site["app"].test_client()
    log_in(client, site["keys"]["review"])
    record_id = site["ids"]["german-credit"][0]
    r = client.get(f"/review/explanations/{record_id}/pdf")
    assert r.status_code == 200 and r.mimetype == "application/pdf"
    assert r.data.startswith(b"%PDF-") and b"/Subtype /Image" in r.data
    assert f'filename="explanation-{record_id}.pdf"' in r.headers["Content-Disposition"]


def test_the_pdf_fetches_nothing_outside_the_app(site) -> None:
    with site["app"].test_request_context("/"):
        fetch = app_fetcher("http://localhost/")
        body, mime = fetch("http://localhost/review/static/review.css")
        assert mime == "text/css" and b"@media print" in body
        for url in ("http://elsewhere.example/x.png", "file:///etc/passwd", "http://localhost/v1/models"):
            with pytest.raises(ResourceRefused):
                fetch(url)
        pdf = html_to_pdf('<img src="http://elsewhere.example/x.png"><p>text</p>', "http://localhost/")
        assert pdf.startswith(b"%PDF-") and b"/Subtype /Image" not in pdf


def test_workers_sharing_a_database_share_the_session_secret(demo_models_dir: Path, tmp_path: Path) -> None:
    db = tmp_path / "audit.sqlite3"
    first, second = make_app(demo_models_dir, db), make_app(demo_models_dir, db)
    key = first.extensions["explain_access"].keys.create("rev", "review")
    client = first.test_client()
    log_in(client, key)
    cookie = client.get_cookie("explain_review")
    assert cookie is not None
    other = second.test_client()
    other.set_cookie("explain_review", cookie.value)
    assert other.get("/review/", headers=HTML).status_code == 200
    assert first.secret_key == second.secret_key and len(str(first.secret_key)) >= 32


def test_a_configured_secret_wins_and_must_be_long(demo_models_dir: Path, tmp_path: Path) -> None:
    app = make_app(demo_models_dir, tmp_path / "audit.sqlite3", secret_key="s" * 40)
    app.test_client().get("/review/login")
    assert app.secret_key == "s" * 40
    with pytest.raises(SecretKeyError, match="at least 32 characters"):
        make_app(demo_models_dir, tmp_path / "audit.sqlite3", secret_key="short")


def test_an_admin_suspends_and_resumes_a_model_version_from_its_record(site) -> None:
    app, keys = site["app"], site["keys"]
    record_id = site["ids"]["german-credit-linear"][0]
    path = "/review/models/german-credit-linear/suspension"
    form = {
        "action": "suspend",
        "scope": "version",
        "version": "1",
        "reason": "drift <b>alarm</b>",
        "record": record_id,
    }
    reviewer = app.test_client()
    form["csrf_token"] = log_in(reviewer, keys["review"])
    assert reviewer.post(path, data=form, headers=HTML).status_code == 403
    admin = app.test_client()
    form["csrf_token"] = log_in(admin, keys["admin"])
    r = admin.post(path, data=form)
    assert r.status_code == 303 and r.headers["Location"] == f"/review/explanations/{record_id}#model-state"
    explain = app.test_client().post(
        "/v1/models/german-credit-linear:explain",
        json={"instances": [GERMAN_ROW], "methods": ["shap"]},
        headers={"Authorization": f"Bearer {keys['explain']}"},
    )
    assert explain.status_code == 503 and "drift <b>alarm</b>" in explain.get_json()["message"]
    for page in (f"/review/explanations/{record_id}", "/review/"):
        html = admin.get(page).get_data(as_text=True)
        assert "drift &lt;b&gt;alarm&lt;/b&gt;" in html and "by admin-1" in html, page
    assert admin.post(path, data=form, headers=HTML).status_code == 409  # already suspended
    resume = {**form, "action": "resume", "reason": ""}
    assert admin.post(path, data=resume).status_code == 303
    assert "is in service" in admin.get(f"/review/explanations/{record_id}").get_data(as_text=True)
    # The suspension and the resumption are chain records naming who and why.
    suspension_records = [
        r.body
        for r in app.extensions["explain"].audit.list_records(limit=20)
        if r.body.get("kind") == "suspension"
    ]
    assert [(b["action"], b["by"]) for b in suspension_records] == [
        ("resume", "admin-1"),
        ("suspend", "admin-1"),
    ]


def test_only_the_pages_open_a_session_so_the_api_works_without_the_secret(
    demo_models_dir: Path, tmp_path
) -> None:
    app = make_app(demo_models_dir, tmp_path / "audit.sqlite3", auth="off")
    client = app.test_client()
    assert client.get("/healthz").status_code == 200
    assert client.get("/v1/models").status_code == 200
    assert app.secret_key is None and "Set-Cookie" not in client.get("/v1/models").headers
    assert client.get("/review/login").status_code == 200
    assert app.secret_key is not None


def test_pages_answer_503_when_the_secret_cannot_be_read(
    demo_models_dir: Path, tmp_path, monkeypatch
) -> None:
    from sqlalchemy.exc import OperationalError

    from explain_service.review import session as review_session

    def unreachable(*_args: Any) -> str:
        raise OperationalError("SELECT", {}, Exception("connection refused"))

    monkeypatch.setattr(review_session, "session_secret", unreachable)
    app = make_app(demo_models_dir, tmp_path / "audit.sqlite3")
    client = app.test_client()
    r = client.get("/review/login", headers=HTML)
    assert r.status_code == 503 and r.mimetype == "text/html"  # a 5xx page shows only its summary
    assert client.get("/healthz").status_code == 200


def test_a_browser_without_a_session_is_asked_to_sign_in_in_words(site) -> None:
    """A person opening the pages is told to sign in, not that a route needs an Authorization header."""
    client = site["app"].test_client()
    for path in ("/review/", "/review/queue", f"/review/explanations/{site['ids']['german-credit'][0]}"):
        r = client.get(path, headers=HTML)
        text = r.get_data(as_text=True)
        assert r.status_code == 401 and 'href="/review/login"' in text, path
        assert "Authorization" not in text and "You are not signed in" in text, path
    bad = client.get("/review/", headers={**HTML, "Authorization": "Bearer xsk_" + "A" * 43})
    assert bad.status_code == 401 and "You are not signed in" not in bad.get_data(as_text=True)
    r = client.get("/review/", headers={"Accept": "application/json"})
    assert "Authorization" in r.get_json()["message"], "scripts keep the API's message"


def test_pages_name_an_icon_anyone_may_fetch(site) -> None:
    """Without a declared icon every page made the browser ask /favicon.ico: a 401 in its console each time."""
    client = site["app"].test_client()
    login = client.get("/review/login").get_data(as_text=True)
    icon = re.search(r'<link rel="icon" href="([^"]+)"', login)
    assert icon is not None
    r = client.get(icon.group(1))
    assert r.status_code == 200 and r.mimetype == "image/svg+xml"
    log_in(client, site["keys"]["review"])
    assert icon.group(0) in client.get("/review/queue", headers=HTML).get_data(as_text=True)


def explained_diabetes_row(
    site, demo_models_dir, methods: list[str]
) -> tuple[list[dict[str, Any]], Any, Any]:
    """One diabetes-gbr background row explained with ``methods`` by the review key: (the instances sent,
    the answered explanation, its record page as the reviewer sees it)."""
    from explain_service.registry.store import ModelRegistry
    from explain_service.service import rows_as_dicts

    client = site["app"].test_client()
    bearer = {"Authorization": f"Bearer {site['keys']['review']}"}
    row = rows_as_dicts(ModelRegistry(demo_models_dir).get("diabetes-gbr").background.iloc[:1])
    r = client.post(
        "/v1/models/diabetes-gbr:explain", json={"instances": row, "methods": methods}, headers=bearer
    )
    assert r.status_code == 200, r.get_json()
    explanation = r.get_json()["explanations"][0]
    page = client.get(f"/review/explanations/{explanation['id']}", headers={**HTML, **bearer})
    return row, explanation, page


def test_a_regression_records_page_speaks_of_the_predicted_value_not_of_a_class(
    site, demo_models_dir
) -> None:
    """A regressor has no target class: the tables said "towards 'None'"."""
    _, explanation, page = explained_diabetes_row(site, demo_models_dir, ["shap", "lime"])
    text = html.unescape(page.get_data(as_text=True))
    assert page.status_code == 200 and "None" not in text
    assert "Contributions towards the predicted value, strongest first" in text
    assert "LIME: positive bars pushed towards the predicted value." in text
    raised = sum(1 for v in explanation["shap"]["values"].values() if v > 0)
    lowered = sum(1 for v in explanation["shap"]["values"].values() if v < 0)
    assert (text.count("raised the predicted value"), text.count("lowered the predicted value")) == (
        raised,
        lowered,
    )


@pytest.mark.parametrize(
    ("raw", "signed", "plain"),
    [
        (0.123456789012, "+0.1235", "0.1235"),
        (-22.06818, "-22.07", "-22.07"),
        (12345.6, "+12,346", "12,346"),
        (0.0000123456, "+1.235e-05", "1.235e-05"),
        (-4.13, "-4.13", "-4.13"),
        (0.0, "0", "0"),
    ],
    ids=["fraction", "tens", "thousands", "tiny", "short", "zero"],
)
def test_numbers_in_the_tables_have_four_significant_digits(raw: float, signed: str, plain: str) -> None:
    from explain_service.review import words

    assert (words.signed(raw), words.feature_value(raw)) == (signed, plain)


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        (48, "48"),
        (48.0, "48"),
        ("little", "little"),
        (True, "yes"),
        (None, "missing"),
        (float("nan"), "missing"),
    ],
    ids=["int", "whole-float", "category", "boolean", "none", "nan"],
)
def test_feature_values_read_as_values(raw: Any, shown: str) -> None:
    from explain_service.review import words

    assert words.feature_value(raw) == shown


def test_the_shap_table_shows_rounded_signed_numbers_and_the_api_keeps_full_floats(
    site, demo_models_dir
) -> None:
    """The diabetes features are floats like 0.061696206518683294: the page shows 0.0617."""
    from explain_service.review import words

    row, explanation, page = explained_diabetes_row(site, demo_models_dir, ["shap"])
    bearer = {"Authorization": f"Bearer {site['keys']['review']}"}
    record = site["app"].test_client().get(f"/v1/explanations/{explanation['id']}", headers=bearer).get_json()
    assert record["explanations"][0]["shap"]["values"] == explanation["shap"]["values"]  # every digit
    table = re.search(
        r"<caption[^>]*>Contributions towards the predicted value.*?</tbody>",
        page.get_data(as_text=True),
        re.S,
    )
    assert table is not None
    cells = [html.unescape(c) for c in re.findall(r"<td[^>]*>([^<]*)</td>", table.group(0))]
    rows = [cells[i : i + 4] for i in range(0, len(cells), 4)]
    values = explanation["shap"]["values"]
    assert [r[0] for r in rows] == sorted(values, key=lambda k: -abs(values[k]))
    for feature, value, contribution, _ in rows:
        assert value == f"{row[0][feature]:.4g}", (feature, value)
        assert contribution == f"{values[feature]:+.4g}", (feature, contribution)
        assert contribution == words.signed(values[feature])
