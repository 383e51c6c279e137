"""Every answered explanation is recorded, readable, re-verifiable and drawable."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner
from PIL import Image

from explain_service.audit.store import AuditStore, AuditWriteError
from explain_service.cli import main
from tests.conftest import GERMAN_ROW, open_app
from tests.test_audit_store import tamper

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def audited(demo_models_dir: Path, tmp_path: Path, url: str):
    """An app on the demo models writing to a fresh audit store (SQLite, and PostgreSQL when configured)."""
    app = open_app(demo_models_dir, url, tmp_path / "plots")
    return app, app.test_client(), url


def explain(client, name: str, body: dict) -> dict:
    r = client.post(f"/v1/models/{name}:explain", data=orjson.dumps(body), content_type="application/json")
    assert r.status_code == 200, r.get_json()
    return r.get_json()


def test_one_record_per_answered_explanation_and_none_for_errors(audited) -> None:
    _app, client, url = audited
    store = AuditStore(url)
    answer = explain(client, "german-credit", {"instances": [GERMAN_ROW, {**GERMAN_ROW, "age": 60}]})
    assert store.count() == 2
    bad = client.post("/v1/models/german-credit:explain", json={"instances": [{**GERMAN_ROW, "age": "x"}]})
    assert bad.status_code == 422 and store.count() == 2
    ids = [e["id"] for e in answer["explanations"]]
    records = [store.get(i) for i in ids]
    assert [r.seq for r in records] == [1, 2]
    body = records[0].body
    assert body["model"] == answer["model"]
    assert body["instance"] == GERMAN_ROW
    assert body["explanation"]["shap"] == answer["explanations"][0]["shap"]
    assert (
        body["quality"]["shap_additivity_residual"]
        == answer["explanations"][0]["shap"]["additivity_residual"]
    )
    assert set(body["plots"]) == {"shap_waterfall", "shap_bar"}
    assert body["libraries"]["shap"] and body["request"]["methods"] == ["shap"]
    assert store.verify().ok


def test_read_back_has_the_answer_shape_plus_audit_fields(audited) -> None:
    _, client, _ = audited
    answer = explain(client, "german-credit", {"instances": [GERMAN_ROW], "target": "good"})
    exp = answer["explanations"][0]
    stored = client.get(f"/v1/explanations/{exp['id']}").get_json()
    assert stored["model"] == answer["model"]
    assert stored["explanations"] == [exp]
    assert stored["audit"]["instance"] == GERMAN_ROW and len(stored["audit"]["hash"]) == 64
    missing = client.get("/v1/explanations/nope")
    assert missing.status_code == 404 and missing.get_json()["code"] == 404


@pytest.mark.parametrize(
    ("name", "body"),
    [
        ("german-credit", {"options": {"shap": {"output": "probability"}}}),
        ("german-credit-linear", {"target": "bad"}),
        ("wine-mlp", {"options": {"shap": {"max_evals": 5000}}}),
    ],
    ids=["tree-probability", "linear", "agnostic-permutation"],
)
def test_replay_reproduces_the_stored_explanation(audited, registry, name: str, body: dict) -> None:
    _, client, _ = audited
    row = registry.get(name).background.iloc[3].to_dict() if name == "wine-mlp" else GERMAN_ROW
    answer = explain(client, name, {"instances": [row], **body})
    report = client.get(f"/v1/explanations/{answer['explanations'][0]['id']}/verify").get_json()
    assert report == {
        "id": answer["explanations"][0]["id"],
        "model": answer["model"],
        "identical": True,
        "differing": [],
    }


def test_replay_reports_a_changed_model(audited, models_dir: Path, tmp_path: Path, url: str) -> None:
    app = open_app(models_dir, url, tmp_path / "p")
    client = app.test_client()
    answer = explain(client, "german-credit", {"instances": [GERMAN_ROW]})
    manifest = models_dir / "german-credit" / "1" / "manifest.json"
    data = orjson.loads(manifest.read_bytes())
    data["files"]["extra.txt"] = "0" * 64
    manifest.write_bytes(orjson.dumps(data))
    fresh = open_app(models_dir, url, tmp_path / "p")
    report = fresh.test_client().get(f"/v1/explanations/{answer['explanations'][0]['id']}/verify").get_json()
    assert report["identical"] is False and "changed" in report["reason"]


def test_plots_are_pngs_cached_by_content_with_etags(audited) -> None:
    _, client, _ = audited
    exp = explain(client, "german-credit", {"instances": [GERMAN_ROW]})["explanations"][0]
    assert set(exp["plots"]) == {"shap_waterfall", "shap_bar"}
    first = client.get(exp["plots"]["shap_waterfall"])
    assert first.status_code == 200 and first.mimetype == "image/png"
    image = Image.open(io.BytesIO(first.data))
    assert image.format == "PNG" and image.width >= 600
    assert "immutable" in first.headers["Cache-Control"]
    again = client.get(exp["plots"]["shap_waterfall"])
    assert again.data == first.data and again.headers["ETag"] == first.headers["ETag"]
    cached = client.get(exp["plots"]["shap_waterfall"], headers={"If-None-Match": first.headers["ETag"]})
    assert cached.status_code == 304
    for bad in ("lime_weights", "nonsense"):
        r = client.get(f"/v1/explanations/{exp['id']}/plots/{bad}.png")
        assert r.status_code == 404 and r.get_json()["code"] == 404


def test_no_answer_without_its_record(audited, monkeypatch) -> None:
    app, client, _url = audited
    store = app.extensions["explain"].audit

    def refuse(entries):
        raise AuditWriteError("disk full")

    monkeypatch.setattr(store, "append_raw", refuse)
    r = client.post("/v1/models/german-credit:explain", json={"instances": [GERMAN_ROW]})
    assert r.status_code == 503
    assert "audit record could not be written" in r.get_json()["message"]
    assert "explanations" not in r.get_json()


def test_cli_verify_and_export_catch_an_edited_record(audited, tmp_path: Path) -> None:
    _, client, url = audited
    for age in (30, 40, 50):
        explain(client, "german-credit", {"instances": [{**GERMAN_ROW, "age": age}]})
    runner = CliRunner()
    ok = runner.invoke(main, ["audit", "verify", "--database-url", url])
    assert ok.exit_code == 0 and "ok: 3 records" in ok.output
    out = tmp_path / "audit.jsonl"
    exported = runner.invoke(main, ["audit", "export", "--database-url", url, "-o", str(out)])
    assert exported.exit_code == 0
    lines = out.read_bytes().splitlines()
    assert len(lines) == 4 and orjson.loads(lines[-1])["trailer"]["count"] == 3
    tamper(
        url,
        "UPDATE audit_records SET body = replace(body, :old, :new) WHERE seq = 2",
        old='"age":40',
        new='"age":41',
    )
    broken = runner.invoke(main, ["audit", "verify", "--database-url", url])
    assert broken.exit_code == 1
    assert "BROKEN at seq 2" in broken.output and "edited" in broken.output


def _serve(url: str, models_dir: Path, plots: Path, workers: int):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "EXPLAIN_MODELS_DIR": str(models_dir),
        "EXPLAIN_DATABASE_URL": url,
        "EXPLAIN_PLOTS_DIR": str(plots),
        "EXPLAIN_AUTH": "off",
        "EXPLAIN_RATELIMIT_DEFAULT": "",
    }
    gunicorn = Path(sys.executable).with_name("gunicorn")
    proc = subprocess.Popen(
        [
            str(gunicorn),
            "-b",
            f"127.0.0.1:{port}",
            "-w",
            str(workers),
            "--log-level",
            "warning",
            "--config",
            "python:explain_service.gunicorn_conf",
            "explain_service.app:create_app()",
        ],
        cwd=ROOT,
        env=env,
    )
    deadline = time.monotonic() + 240
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                if r.status == 200:
                    return proc, port
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("gunicorn did not become ready") from None
            time.sleep(0.3)


@pytest.mark.slow
def test_concurrent_requests_across_four_gunicorn_workers_keep_one_chain(
    demo_models_dir: Path, tmp_path: Path, url: str
) -> None:
    requests_per_client, clients = 8, 6
    proc, port = _serve(url, demo_models_dir, tmp_path / "plots", workers=4)
    statuses: list[int] = []
    try:

        def client(k: int) -> None:
            for i in range(requests_per_client):
                body = orjson.dumps({"instances": [{**GERMAN_ROW, "age": 20 + k * 10 + i}]})
                req = urllib.request.Request(
                    f"http://127.0.0.1:{port}/v1/models/german-credit:explain",
                    data=body,
                    headers={"Content-Type": "application/json"},
                )
                with urllib.request.urlopen(req, timeout=30) as r:
                    statuses.append(r.status)

        threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    n = requests_per_client * clients
    assert statuses == [200] * n
    store = AuditStore(url)
    assert store.count() == n
    report = store.verify()
    assert report.ok and report.checked == n and report.head_seq == n
