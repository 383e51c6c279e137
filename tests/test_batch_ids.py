"""Batch ids: the caller's id columns, unguessable audit record ids, and resumes that keep both exact."""

from __future__ import annotations

import html
import itertools
import re
import stat
from pathlib import Path

import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from explain_service.access.keys import KeyAdminError
from explain_service.app import create_app
from explain_service.audit import AuditStore
from explain_service.batch.audit import AUDIT_CALLER, audit_id
from explain_service.batch.manifest import AUDIT_KEY_NAME, PartsDir
from explain_service.cli import main
from explain_service.registry.demo import german_credit_frame
from tests.test_batch_faults import run

ID_PATTERN = re.compile(r"b[0-9a-f]{32}")
BAD_ROW = 4


def applicants(n: int, seed: int) -> pd.DataFrame:
    """German-credit rows behind two id columns; ``customer`` has leading zeros that must survive."""
    X, _ = german_credit_frame()
    rows = X.sample(n, replace=True, random_state=seed).reset_index(drop=True)
    rows.insert(0, "customer", [f"{7 * i:05d}" for i in range(n)])
    rows.insert(1, "branch", [f"br-{i % 3}" for i in range(n)])
    return rows


def csv_input(tmp_path: Path, n: int = 30, seed: int = 12) -> tuple[Path, pd.DataFrame]:
    """A CSV of ``n`` applicants whose row ``BAD_ROW`` fails validation."""
    rows = applicants(n, seed).astype({"age": object})
    rows.loc[BAD_ROW, "age"] = "x"
    src = tmp_path / "in.csv"
    rows.to_csv(src, index=False)
    return src, rows


def records_by_row(url: str) -> dict[int, list]:
    """Every batch record in the store, grouped by its input row."""
    with AuditStore(url) as store:
        found = store.list_records(limit=1000)
    out: dict[int, list] = {}
    for record in found:
        out.setdefault(record.body["batch"]["row"], []).append(record)
    return out


def verify_cli(url: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["audit", "verify", "--database-url", url])
    return result.exit_code, result.output


def test_audit_ids_map_each_row_to_its_record_with_the_callers_ids(
    demo_models_dir: Path, tmp_path: Path
) -> None:
    src, rows = csv_input(tmp_path)
    url = f"sqlite:///{tmp_path}/audit.sqlite3"
    code, output = run(demo_models_dir, src, tmp_path / "plain.parquet", "--chunk-size", "8")
    assert code == 0, output
    audited = tmp_path / "a.parquet"
    args = ("--chunk-size", "8", "--audit", "--database-url", url, "--id-columns", "customer,branch")
    code, output = run(demo_models_dir, src, audited, *args)
    assert code == 0, output

    out, plain = pd.read_parquet(audited), pd.read_parquet(tmp_path / "plain.parquet")
    assert list(out.columns).index("audit_id") == len(rows.columns)
    pd.testing.assert_frame_equal(out.drop(columns="audit_id"), plain)
    assert out["customer"].tolist() == [c for i, c in enumerate(rows["customer"]) if i != BAD_ROW]
    ids = out["audit_id"].tolist()
    assert all(ID_PATTERN.fullmatch(i) for i in ids) and len(set(ids)) == len(ids) == 29

    by_row = records_by_row(url)
    assert sorted(by_row) == [r for r in range(30) if r != BAD_ROW]
    valid_rows = [r for r in range(30) if r != BAD_ROW]
    with AuditStore(url) as store:
        assert store.count() == 29 and store.verify().ok
        for k, row in enumerate(valid_rows):
            record = store.get(ids[k])
            assert record is not None and by_row[row] == [record] and record.caller == "(batch)"
            batch_ref = record.body["batch"]
            assert batch_ref["row"] == row and len(batch_ref["job"]) == 20
            assert batch_ref["ids"] == {"customer": rows["customer"][row], "branch": rows["branch"][row]}
            assert record.body["instance"]["duration"] == int(out["duration"].iloc[k])
            assert record.body["explanation"]["shap"]["values"]["age"] == out["shap.age"].iloc[k]
    code, text = verify_cli(url)
    assert code == 0 and text.startswith("ok: 29 records"), text


def test_audit_ids_are_not_predictable_from_each_other_or_from_the_input(
    demo_models_dir: Path, tmp_path: Path
) -> None:
    src, _ = csv_input(tmp_path)
    url = f"sqlite:///{tmp_path}/audit.sqlite3"
    ids = []
    for name in ("one.parquet", "two.parquet"):
        code, output = run(demo_models_dir, src, tmp_path / name, "--audit", "--database-url", url)
        assert code == 0, output
        ids.append(pd.read_parquet(tmp_path / name)["audit_id"].tolist())
    first, second = ids
    # The same rows of the same input under the same parameters: ids come from the job's random key.
    assert not set(first) & set(second)
    # No id shows its row number or shares structure with its neighbour: adjacent ids differ in about
    # half of their 128 bits (a counter or a shared prefix would differ in a handful). The key is
    # random by design; these bounds fail for random ids with odds below one in a million.
    distances = [bin(int(a[1:], 16) ^ int(b[1:], 16)).count("1") for a, b in itertools.pairwise(first)]
    assert 48 <= sum(distances) / len(distances) <= 80, distances
    assert min(distances) >= 30
    assert len({i[:9] for i in first}) == len(first)
    with AuditStore(url) as store:
        assert store.count() == 58 and store.verify().ok


def test_a_crash_between_audit_append_and_commit_is_resumed_with_the_same_ids_and_no_duplicate(
    demo_models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, rows = csv_input(tmp_path, n=40)
    url = f"sqlite:///{tmp_path}/audit.sqlite3"
    out, parts = tmp_path / "out.parquet", tmp_path / "out.parquet.parts"
    args = (
        "--chunk-size",
        "8",
        "--workers",
        "1",
        "--audit",
        "--database-url",
        url,
        "--id-columns",
        "customer",
    )
    code, output = run(demo_models_dir, src, tmp_path / "ref.parquet", "--chunk-size", "8")
    assert code == 0, output

    real_commit, commits = PartsDir.commit, []

    def crashing_commit(self, index, record, part, rejected):
        commits.append(index)
        if len(commits) == 3:  # this chunk's records are already appended
            raise OSError("power lost")
        return real_commit(self, index, record, part, rejected)

    monkeypatch.setattr(PartsDir, "commit", crashing_commit)
    code, output = run(demo_models_dir, src, out, *args)
    assert code == 1 and "power lost" in output and not out.exists()
    monkeypatch.setattr(PartsDir, "commit", real_commit)
    key_file = parts / AUDIT_KEY_NAME
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_text().strip()
    before = records_by_row(url)
    assert len(before) == 23  # three chunks of 8 appended (one row rejected), two of them committed

    code, output = run(demo_models_dir, src, out, *args, "--resume")
    assert code == 0, output
    assert not parts.exists()
    result = pd.read_parquet(out)
    valid_rows = [r for r in range(40) if r != BAD_ROW]
    assert result["audit_id"].tolist() == [audit_id(key, r) for r in valid_rows]
    assert result["customer"].tolist() == [rows["customer"][r] for r in valid_rows]
    pd.testing.assert_frame_equal(result.drop(columns="audit_id"), pd.read_parquet(tmp_path / "ref.parquet"))
    by_row = records_by_row(url)
    assert sorted(by_row) == valid_rows and all(len(found) == 1 for found in by_row.values())
    for row, found in by_row.items():
        assert found[0].id == audit_id(key, row)
        assert found[0].body["batch"]["ids"] == {"customer": rows["customer"][row]}
    for row, found in before.items():
        assert by_row[row][0].hash == found[0].hash  # the records stored before the crash, untouched
    code, text = verify_cli(url)
    assert code == 0 and text.startswith("ok: 39 records"), text


def test_a_resume_without_the_jobs_key_is_refused(
    demo_models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, _ = csv_input(tmp_path)
    url = f"sqlite:///{tmp_path}/audit.sqlite3"
    out = tmp_path / "out.parquet"
    args = ("--chunk-size", "8", "--workers", "1", "--audit", "--database-url", url)

    def crashing_commit(self, index, record, part, rejected):
        raise OSError("power lost")

    monkeypatch.setattr(PartsDir, "commit", crashing_commit)
    code, _ = run(demo_models_dir, src, out, *args)
    monkeypatch.undo()
    assert code == 1
    (tmp_path / "out.parquet.parts" / AUDIT_KEY_NAME).unlink()
    code, output = run(demo_models_dir, src, out, *args, "--resume")
    assert code == 2 and "the key of this job's audit record ids" in output, output
    with AuditStore(url) as store:
        assert store.count() == 7  # the first chunk (one row rejected), stored before the crash


def test_parquet_ids_keep_their_types_in_the_records(demo_models_dir: Path, tmp_path: Path) -> None:
    rows = applicants(12, seed=3)
    table = pa.Table.from_pandas(rows, preserve_index=False)
    table = table.append_column("account", pa.array([10**15 + i for i in range(12)], type=pa.int64()))
    pq.write_table(table, tmp_path / "in.parquet")
    url = f"sqlite:///{tmp_path}/audit.sqlite3"
    args = ("--audit", "--database-url", url, "--id-columns", "account,customer")
    code, output = run(demo_models_dir, tmp_path / "in.parquet", tmp_path / "out.parquet", *args)
    assert code == 0, output
    out = pd.read_parquet(tmp_path / "out.parquet")
    assert out["account"].tolist() == [10**15 + i for i in range(12)]
    with AuditStore(url) as store:
        for k, record_id in enumerate(out["audit_id"]):
            record = store.get(record_id)
            assert record is not None
            assert record.body["batch"]["ids"] == {"account": 10**15 + k, "customer": rows["customer"][k]}
    meta = orjson.loads(pq.read_schema(tmp_path / "out.parquet").metadata[b"explain_service"])
    assert meta["id_columns"] == ["account", "customer"]


@pytest.mark.parametrize(
    ("id_columns", "extra", "message"),
    [
        ("customer,nope", (), "id column(s) nope not in the input"),
        ("customer,age", (), "id column(s) age are features of german-credit@1"),
        ("customer,customer", (), "id column(s) customer named more than once"),
        ("customer,", (), "--id-columns holds an empty column name"),
        ("customer", ("audit_id",), "input column(s) audit_id would be overwritten"),
    ],
    ids=["absent", "a-feature", "repeated", "empty", "audit-id-clash"],
)
def test_bad_id_columns_exit_2_naming_them_before_any_work(
    demo_models_dir: Path, tmp_path: Path, id_columns: str, extra: tuple[str, ...], message: str
) -> None:
    rows = applicants(5, seed=1)
    for name in extra:
        rows[name] = "x"
    rows.to_csv(tmp_path / "in.csv", index=False)
    url = f"sqlite:///{tmp_path}/audit.sqlite3"
    out = tmp_path / "out.parquet"
    args = ("--audit", "--database-url", url, "--id-columns", id_columns)
    code, output = run(demo_models_dir, tmp_path / "in.csv", out, *args)
    assert code == 2 and message in output, output
    assert not out.exists() and not (tmp_path / "out.parquet.parts").exists()


def test_id_columns_without_audit_are_checked_and_passed_through(
    demo_models_dir: Path, tmp_path: Path
) -> None:
    rows = applicants(6, seed=2)
    rows.to_csv(tmp_path / "in.csv", index=False)
    code, output = run(demo_models_dir, tmp_path / "in.csv", tmp_path / "o.parquet", "--id-columns", "branch")
    assert code == 0, output
    out = pd.read_parquet(tmp_path / "o.parquet")
    assert "audit_id" not in out.columns and out["branch"].tolist() == rows["branch"].tolist()
    code, output = run(
        demo_models_dir, tmp_path / "in.csv", tmp_path / "p.parquet", "--id-columns", "missing"
    )
    assert code == 2 and "id column(s) missing not in the input" in output


def test_batch_records_are_read_over_http_by_audit_id_with_a_review_key(
    demo_models_dir: Path, tmp_path: Path
) -> None:
    src, _ = csv_input(tmp_path, n=6)
    url = f"sqlite:///{tmp_path}/audit.sqlite3"
    args = ("--audit", "--database-url", url, "--id-columns", "customer")
    code, output = run(demo_models_dir, src, tmp_path / "out.parquet", *args)
    assert code == 0, output
    out = pd.read_parquet(tmp_path / "out.parquet")
    app = create_app(
        {
            "models_dir": str(demo_models_dir),
            "database_url": url,
            "plots_dir": str(tmp_path / "plots"),
            "eager_load": False,
        }
    )
    keys = app.extensions["explain_access"].keys
    review, explain = keys.create("reviewer", "review"), keys.create("teller", "explain")
    with pytest.raises(KeyAdminError, match="a key name is"):
        keys.create(AUDIT_CALLER, "explain")  # so no key can ever own a job's records
    with pytest.raises(KeyAdminError, match="reserved"):
        keys.create("batch", "explain")  # the caller of batch records written before "(batch)"
    client = app.test_client()
    record_id = out["audit_id"].iloc[1]
    answer = client.get(f"/v1/explanations/{record_id}", headers={"Authorization": f"Bearer {review}"})
    assert answer.status_code == 200, answer.get_json()
    stored = answer.get_json()["explanations"][0]
    assert stored["id"] == record_id and stored["shap"]["values"]["age"] == out["shap.age"].iloc[1]
    hidden = client.get(f"/v1/explanations/{record_id}", headers={"Authorization": f"Bearer {explain}"})
    assert hidden.status_code == 404


def test_a_batch_records_job_row_and_ids_are_shown_to_reviewers(
    demo_models_dir: Path, tmp_path: Path
) -> None:
    """The README sends readers of an ``audit_id`` to GET /v1/explanations/{id}: it names the caller's ids."""
    from tests.conftest import OPEN_ACCESS

    src, rows = csv_input(tmp_path, n=6)
    url = f"sqlite:///{tmp_path}/audit.sqlite3"
    out = tmp_path / "a.parquet"
    code, output = run(
        demo_models_dir, src, out, "--audit", "--database-url", url, "--id-columns", "customer,branch"
    )
    assert code == 0, output
    app = create_app(
        {"models_dir": str(demo_models_dir), "database_url": url, "eager_load": False, **OPEN_ACCESS}
    )
    client = app.test_client()
    record_id = pd.read_parquet(out)["audit_id"].iloc[0]
    with AuditStore(url) as store:
        stored = store.get(record_id)
    assert stored is not None
    answer = client.get(f"/v1/explanations/{record_id}").get_json()
    assert answer["audit"]["batch"] == stored.body["batch"]
    assert answer["audit"]["batch"]["ids"] == {"customer": rows["customer"][0], "branch": rows["branch"][0]}
    page = client.get(f"/review/explanations/{record_id}", headers={"Accept": "text/html"}).get_data(
        as_text=True
    )
    assert (
        f"branch br-0, customer {rows['customer'][0]}" in html.unescape(page)
        and stored.body["batch"]["job"] in page
    )
