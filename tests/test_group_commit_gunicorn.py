"""XGBoost answers and the audit chain under the threaded worker: many requests at once, all correct.

A real ``explain-service serve`` (1 worker x 4 threads, one native thread each) serves an XGBoost model;
8 client threads each send 12 one-row ``:explain`` calls over their own kept-alive connection. Every
answer must carry the model's own probability (predict_proba in this process) and SHAP values that
xgboost's own ``pred_contribs`` gives for that row; the chain must verify and hold exactly one record
per answered instance, with the id the answer named.
"""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pytest
import xgboost as xgb

from explain_service.audit.store import AuditStore
from explain_service.registry.store import register_model
from tests._gunicorn import ROOT, serve_in

pytestmark = pytest.mark.slow

CLIENTS = 8
CALLS = 12
FEATURES = ["f0", "f1", "f2", "f3", "f4"]


def _xgb_model(models_dir: Path) -> tuple[xgb.XGBClassifier, pd.DataFrame]:
    rng = np.random.default_rng(7)
    frame = pd.DataFrame(rng.normal(size=(400, len(FEATURES))), columns=FEATURES)
    labels = np.where(frame["f0"] - frame["f1"] * frame["f2"] + 0.3 * frame["f3"] > 0, "yes", "no")
    model = xgb.XGBClassifier(n_estimators=40, max_depth=4, random_state=0, n_jobs=1).fit(
        frame, (labels == "yes").astype(int)
    )
    register_model(
        model,
        "trees",
        background=frame.iloc[:100],
        models_dir=models_dir,
        class_names=["no", "yes"],
        favorable="yes",
    )
    return model, frame


def test_concurrent_threads_get_the_models_own_answers_and_one_record_each(tmp_path: Path) -> None:
    model, frame = _xgb_model(tmp_path / "models")
    rows = frame.sample(CLIENTS * CALLS, random_state=3).reset_index(drop=True)
    expected_p = model.predict_proba(rows)[:, 1]
    contribs = model.get_booster().predict(xgb.DMatrix(rows), pred_contribs=True)
    answers: dict[int, tuple[int, dict]] = {}
    errors: list[BaseException] = []

    with serve_in(tmp_path, workers=1) as live:

        def client(c: int) -> None:
            conn = http.client.HTTPConnection("127.0.0.1", live.port, timeout=60)
            try:
                for k in range(CALLS):
                    i = c * CALLS + k
                    row = {name: float(rows.at[i, name]) for name in FEATURES}
                    body = orjson.dumps({"instances": [row], "methods": ["shap"], "target": "yes"})
                    conn.request(
                        "POST", "/v1/models/trees:explain", body, {"Content-Type": "application/json"}
                    )
                    resp = conn.getresponse()
                    answers[i] = (resp.status, orjson.loads(resp.read()))
            except BaseException as exc:
                errors.append(exc)
            finally:
                conn.close()

        threads = [threading.Thread(target=client, args=(c,)) for c in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        log = live.logs()

    assert not errors, errors
    assert sorted(answers) == list(range(CLIENTS * CALLS))
    assert all(status == 200 for status, _ in answers.values()), log[-3000:]
    ids = []
    for i, (_, answer) in answers.items():
        explained = answer["explanations"][0]
        ids.append(explained["id"])
        assert explained["prediction"]["probabilities"]["yes"] == pytest.approx(expected_p[i], abs=1e-6)
        shap = explained["shap"]["values"]
        assert [shap[name] for name in FEATURES] == pytest.approx(contribs[i, :-1].tolist(), abs=1e-5)
    store = AuditStore(f"sqlite:///{tmp_path / 'var' / 'audit.sqlite3'}", create=False)
    try:
        assert store.verify().ok
        stored = [r for r in store.list_records(limit=1000) if r.body["kind"] == "explanation"]
        assert sorted(r.id for r in stored) == sorted(ids) and len(set(ids)) == len(ids)
    finally:
        store.close()


def test_a_worker_caps_native_thread_pools_loaded_before_it_started() -> None:
    # numpy's BLAS is loaded first with the environment unset (as a preloaded app would), then capped
    script = (
        "import os\n"
        "for name in ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS'): os.environ.pop(name, None)\n"
        "import numpy, xgboost\n"
        "from threadpoolctl import threadpool_info\n"
        "before = max(p['num_threads'] for p in threadpool_info())\n"
        "from explain_service.gunicorn_conf import one_native_thread\n"
        "one_native_thread()\n"
        "print(before, max(p['num_threads'] for p in threadpool_info()))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    before, after = map(int, out.stdout.split())
    assert (before, after) == (os.cpu_count(), 1), out.stderr
