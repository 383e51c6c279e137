"""Human oversight reaches audited batch jobs: the stop button, and the review routing of their records."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from explain_service.app import create_app
from explain_service.audit import AuditStore
from explain_service.audit import suspensions as suspensions_module
from explain_service.audit.projections import TrailIndex
from explain_service.audit.suspensions import Suspensions
from explain_service.batch.job import JobFailed, JobSpec, run_job
from explain_service.batch.progress import Progress
from explain_service.registry.demo import german_credit_frame
from tests.test_batch_faults import error_line, run

MODEL = "german-credit"


def applicants(tmp_path: Path, n: int) -> Path:
    X, _ = german_credit_frame()
    src = tmp_path / "in.csv"
    X.sample(n, replace=True, random_state=5).reset_index(drop=True).to_csv(src, index=False)
    return src


def test_routed_batch_records_carry_the_review_routing_the_api_gives_the_same_row(
    demo_models_dir: Path, tmp_path: Path
) -> None:
    src = applicants(tmp_path, 12)
    url = f"sqlite:///{tmp_path}/audit.sqlite3"
    args = ("--audit", "--database-url", url)
    code, output = run(demo_models_dir, src, tmp_path / "plain.parquet", *args)
    assert code == 0, output
    code, output = run(demo_models_dir, src, tmp_path / "routed.parquet", *args, "--route-reviews")
    assert code == 0, output
    routed: dict[int, dict] = {}
    with AuditStore(url) as store:
        for record in store.list_records(limit=100):
            if record.body["review"] is None:  # the job without --route-reviews: not evaluated
                continue
            routed[record.body["batch"]["row"]] = record.body["review"]
        assert store.count() == 24
    assert sorted(routed) == list(range(12))

    app = create_app(
        {
            "models_dir": str(demo_models_dir),
            "database_url": f"sqlite:///{tmp_path}/api.sqlite3",
            "plots_dir": str(tmp_path / "plots"),
            "auth": "off",
            "ratelimit_default": "",
        }
    )
    client = app.test_client()
    rows = pd.read_csv(src).to_dict("records")
    for row, review in routed.items():
        answer = client.post(f"/v1/models/{MODEL}:explain", json={"instances": [rows[row]]})
        assert answer.status_code == 200
        assert review == answer.get_json()["explanations"][0]["review"]  # as the API routes the row
    flagged = sum(review["required"] for review in routed.values())
    assert 0 < flagged < len(routed)  # the rows differ in routing, so the comparison means something

    with AuditStore(url) as store:
        index = TrailIndex(store)
        queued = index.queue(limit=100)
        index.close()
    assert queued.total == flagged  # the routed job's flagged rows wait for a reviewer; the other job's none
    assert {item.id for item in queued.items} <= set(ids_of(url, routed=True))

    code, output = run(demo_models_dir, src, tmp_path / "x.parquet", "--route-reviews")
    assert code == 2 and "--route-reviews needs --audit" in output


def test_an_audited_batch_does_not_start_while_its_model_is_suspended(
    demo_models_dir: Path, tmp_path: Path
) -> None:
    src = applicants(tmp_path, 6)
    url = f"sqlite:///{tmp_path}/audit.sqlite3"
    out = tmp_path / "out.parquet"
    with AuditStore(url) as store:
        Suspensions(store).suspend(MODEL, None, "drift found in review", by="alice")
        before = store.count()
    code, output = run(demo_models_dir, src, out, "--audit", "--database-url", url)
    assert code == 2
    line = error_line(output)
    assert line.startswith(f"Error: {MODEL} is suspended by alice since ")
    assert line.endswith("(drift found in review): this job cannot run until it is resumed")
    assert not out.exists() and not Path(f"{out}.parts").exists()
    with AuditStore(url) as store:
        assert store.count() == before  # no record of the refused job
        Suspensions(store).resume(MODEL, None, by="alice")
    code, output = run(demo_models_dir, src, out, "--audit", "--database-url", url)
    assert code == 0, output
    assert len(pd.read_parquet(out)) == 6

    # Without --audit a job reads no database, so it cannot see the stop button; it still runs.
    with AuditStore(url) as store:
        Suspensions(store).suspend(MODEL, "1", "version withdrawn", by="alice")
    code, output = run(demo_models_dir, src, tmp_path / "plain.parquet")
    assert code == 0, output


def ids_of(url: str, *, routed: bool) -> list[str]:
    with AuditStore(url) as store:
        found = store.list_records(limit=100)
    return [r.id for r in found if (r.body["review"] is not None) == routed]


class SuspendAfterFirstChunk(Progress):
    """Suspends the model once the first chunk is committed, as an admin would while the job runs."""

    def __init__(self, url: str) -> None:
        super().__init__(None, interval=0)
        self.url = url
        self.chunks = 0

    def advance(self, rows: int) -> None:
        super().advance(rows)
        self.chunks += 1
        if self.chunks == 1:
            with AuditStore(self.url) as store:
                Suspensions(store).suspend(MODEL, "1", "wrong threshold", by="bob")


def test_a_suspension_made_while_a_job_runs_stops_it_before_the_next_records(
    demo_models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(suspensions_module, "CACHE_SECONDS", 0.0)  # no wait for the per-process cache
    src = applicants(tmp_path, 12)
    url = f"sqlite:///{tmp_path}/audit.sqlite3"
    out = tmp_path / "out.parquet"
    spec = JobSpec(
        model=MODEL, input=src, output=out, models_dir=demo_models_dir, chunk_size=4, audit_url=url,
        engine="local", workers=1,
    )  # fmt: skip
    with pytest.raises(
        JobFailed, match=r"german-credit@1 is suspended by bob .*\(wrong threshold\): the job stopped"
    ):
        run_job(spec, SuspendAfterFirstChunk(url))
    with AuditStore(url) as store:
        batch_rows = sorted(
            r.body["batch"]["row"] for r in store.list_records(limit=100) if "batch" in r.body
        )
    assert batch_rows == [0, 1, 2, 3]  # the first chunk only
    assert not out.exists()

    with AuditStore(url) as store:
        Suspensions(store).resume(MODEL, "1", by="bob")
    code, output = run(
        demo_models_dir, src, out, "--chunk-size", "4", "--audit", "--database-url", url, "--resume"
    )
    assert code == 0, output
    with AuditStore(url) as store:
        batch_rows = sorted(
            r.body["batch"]["row"] for r in store.list_records(limit=100) if "batch" in r.body
        )
        assert store.verify().ok
    assert batch_rows == list(range(12))  # each row once
    assert len(pd.read_parquet(out)) == 12
