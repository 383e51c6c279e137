"""Batch jobs under hostile input and faults: malformed rows anywhere, changed inputs, typed Parquet,
unwritable outputs; each failure is a rejected row or one clear line, never a traceback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from explain_service.batch import engines
from explain_service.batch.command import batch
from explain_service.batch.job import JobSpec, prepare
from explain_service.batch.manifest import PartsDir
from explain_service.batch.validate import decoded_records, validate_chunk
from explain_service.registry.demo import german_credit_frame
from explain_service.registry.schema import Feature, FeatureSchema

ROOT = Path(__file__).resolve().parent.parent
MODEL = ("--model", "german-credit")


def german_rows(n: int, seed: int) -> pd.DataFrame:
    """``n`` German-credit rows resampled with ``seed``, behind an ``id`` column."""
    X, _ = german_credit_frame()
    rows = X.sample(n, replace=True, random_state=seed).reset_index(drop=True)
    rows.insert(0, "id", [f"r{i}" for i in range(n)])
    return rows


def run(models: Path, src: Path, out: Path, *args: str) -> tuple[int, str]:
    """Invoke ``batch`` in process; returns (exit code, stdout + stderr)."""
    argv = ["--models-dir", str(models), "--progress-every", "0", *MODEL, "--input", str(src)]
    result = CliRunner().invoke(batch, [*argv, "--output", str(out), *args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def rejected(out: Path) -> list[dict]:
    path = out.with_name(out.name.replace(".parquet", ".rejected.jsonl"))
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def error_line(output: str) -> str:
    """The one line a refused job prints (click's usage text aside)."""
    lines = [line for line in output.splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1 and "Traceback" not in output, output
    return lines[0]


# -- 1. a changed input is never resumed ------------------------------------------------------------


def start_job(models: Path, src: Path, out: Path) -> None:
    """Leave the parts directory of a started, unfinished job (as after a kill)."""
    spec = JobSpec(model="german-credit", input=src, output=out, models_dir=models, chunk_size=100)
    parts = PartsDir(out)
    parts.open(prepare(spec).identity, resume=False)
    parts.close()


def test_resume_refuses_an_input_changed_in_the_middle_with_size_and_mtime_kept(
    demo_models_dir: Path, tmp_path: Path
) -> None:
    src, out = tmp_path / "in.csv", tmp_path / "out.parquet"
    german_rows(50_000, seed=1).to_csv(src, index=False)
    start_job(demo_models_dir, src, out)
    data = bytearray(src.read_bytes())
    middle = data.index(b"\nr25000,male,", len(data) // 3) + len(b"\nr25000,")
    data[middle : middle + 4] = b"male"[::-1] if data[middle : middle + 4] == b"male" else b"elam"
    stat = src.stat()
    src.write_bytes(bytes(data))
    os.utime(src, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert src.stat().st_size == stat.st_size and src.stat().st_mtime_ns == stat.st_mtime_ns

    code, output = run(demo_models_dir, src, out, "--chunk-size", "100", "--resume")
    assert code == 2
    line = error_line(output)
    assert f"the input {src} changed since the job started" in line, line
    assert not out.exists()


def test_resume_takes_the_same_content_with_another_mtime(demo_models_dir: Path, tmp_path: Path) -> None:
    src, out = tmp_path / "in.csv", tmp_path / "out.parquet"
    german_rows(300, seed=2).to_csv(src, index=False)
    start_job(demo_models_dir, src, out)
    os.utime(src, ns=(1, 1))
    code, output = run(demo_models_dir, src, out, "--chunk-size", "100", "--resume")
    assert code == 0, output
    assert pd.read_parquet(out)["id"].tolist() == [f"r{i}" for i in range(300)]


# -- 2. malformed rows anywhere ---------------------------------------------------------------------


def malformed_csv(path: Path, n: int, seed: int) -> tuple[pd.DataFrame, dict[int, dict]]:
    """A CSV of ``n`` rows with malformed ones spread over the file; returns (rows, expected errors)."""
    source = german_rows(n, seed)
    source.loc[10, "id"] = 'r10, "big"\nsecond line'  # valid: a quoted comma, quote and newline
    text = source.to_csv(index=False, lineterminator="\n").encode()
    lines = text.split(b"\n")
    header, rows = lines[0], lines[1:-1]
    # Row 10 spans two physical lines; rows after it are shifted by one line.
    rows = [*rows[:10], rows[10] + b"\n" + rows[11], *rows[12:]]
    assert len(rows) == n
    expected = {
        0: {"_row": ["Expected 10 fields, found 11."]},
        150: {"_row": ["Expected 10 fields, found 11."]},
        260: {"id": ["Not valid UTF-8 text."]},
        261: {"_row": ["Expected 10 fields, found 9."]},
        n - 1: {"_row": ["Expected 10 fields, found 12."]},
    }
    rows[0] += b",surplus"
    rows[150] += b",surplus"
    rows[260] = rows[260].replace(b"r260,", b"r2\xe960,")
    rows[261] = rows[261].rsplit(b",", 1)[0]
    rows[n - 1] += b",x,y"
    body = b"\n".join([header, *rows[:200], b"", *rows[200:]]) + b"\n"  # a blank line is no row
    path.write_bytes(body)
    return source, expected


@pytest.fixture
def bad_rows_csv(tmp_path: Path) -> tuple[Path, pd.DataFrame, dict[int, dict]]:
    src = tmp_path / "in.csv"
    source, expected = malformed_csv(src, 400, seed=3)
    return src, source, expected


def test_malformed_rows_anywhere_are_rejected_with_their_row_and_the_job_goes_on(
    demo_models_dir: Path, tmp_path: Path, bad_rows_csv
) -> None:
    src, source, expected = bad_rows_csv
    out = tmp_path / "out.parquet"
    code, output = run(demo_models_dir, src, out, "--chunk-size", "100")
    assert code == 0, output
    got = rejected(out)
    assert [r["row"] for r in got] == sorted(expected)
    assert [r["errors"] for r in got] == [expected[r["row"]] for r in got]
    assert got[1]["input"]["_fields"][0] == "r150" and len(got[1]["input"]["_fields"]) == 11
    assert got[2]["input"]["id"] == "r2\\xe960" and got[2]["input"]["age"] == str(source["age"].iloc[260])

    good = [i for i in range(len(source)) if i not in expected]
    explained = pd.read_parquet(out)
    assert explained["id"].tolist() == source["id"].iloc[good].tolist()
    assert explained["id"].iloc[good.index(10)] == 'r10, "big"\nsecond line'
    clean = tmp_path / "clean.csv"
    source.iloc[good].to_csv(clean, index=False)
    code, output = run(demo_models_dir, clean, tmp_path / "clean.parquet", "--chunk-size", "100")
    assert code == 0, output
    reference = pd.read_parquet(tmp_path / "clean.parquet")
    pd.testing.assert_frame_equal(explained, reference)


def test_resume_after_a_failure_keeps_rejected_rows_exactly_once(
    demo_models_dir: Path, tmp_path: Path, bad_rows_csv, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, _, expected = bad_rows_csv
    code, output = run(demo_models_dir, src, tmp_path / "ref.parquet", "--chunk-size", "50", "--workers", "1")
    assert code == 0, output

    real = engines.explain_chunk

    def failing(model, chunk, plan):
        if chunk.index == 5:
            raise OSError("disk went away")
        return real(model, chunk, plan)

    out = tmp_path / "out.parquet"
    monkeypatch.setattr(engines, "explain_chunk", failing)
    code, output = run(demo_models_dir, src, out, "--chunk-size", "50", "--workers", "1")
    assert code == 1 and "disk went away" in output and not out.exists()
    monkeypatch.setattr(engines, "explain_chunk", real)
    code, output = run(demo_models_dir, src, out, "--chunk-size", "50", "--workers", "1", "--resume")
    assert code == 0, output
    assert "5 taken over from an earlier run" in output
    assert out.read_bytes() == (tmp_path / "ref.parquet").read_bytes()
    assert (tmp_path / "out.rejected.jsonl").read_bytes() == (tmp_path / "ref.rejected.jsonl").read_bytes()
    assert [r["row"] for r in rejected(out)] == sorted(expected)


# -- 3. unwritable outputs, unreadable inputs -------------------------------------------------------


def test_an_output_directory_that_cannot_be_made_is_one_clear_line(
    demo_models_dir: Path, tmp_path: Path
) -> None:
    german_rows(20, seed=4).to_csv(tmp_path / "in.csv", index=False)
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "sub" / "out.parquet"
    code, output = run(demo_models_dir, tmp_path / "in.csv", out)
    assert code == 2
    assert str(out.parent) in error_line(output) and "cannot write" in error_line(output)


def without_root_overrides() -> list[str]:
    """A command prefix under which even root is held to file permissions."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: permissions cannot be enforced")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--"]


@pytest.mark.slow
def test_permission_denied_on_output_or_input_is_one_clear_line(
    demo_models_dir: Path, tmp_path: Path
) -> None:
    german_rows(20, seed=5).to_csv(tmp_path / "in.csv", index=False)
    german_rows(20, seed=5).to_csv(tmp_path / "secret.csv", index=False)
    (tmp_path / "locked").mkdir()
    (tmp_path / "locked").chmod(0o555)
    (tmp_path / "secret.csv").chmod(0o000)
    cmd = [*without_root_overrides(), sys.executable, "-m", "explain_service.batch.command"]
    cmd += ["--models-dir", str(demo_models_dir), *MODEL, "--progress-every", "0"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for src, out, named in [
        (tmp_path / "in.csv", tmp_path / "locked" / "out.parquet", tmp_path / "locked"),
        (tmp_path / "in.csv", tmp_path / "locked" / "new" / "out.parquet", tmp_path / "locked"),
        (tmp_path / "secret.csv", tmp_path / "out.parquet", tmp_path / "secret.csv"),
    ]:
        proc = subprocess.run(
            [*cmd, "--input", str(src), "--output", str(out)],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        assert str(named) in error_line(proc.stderr), proc.stderr
    assert list((tmp_path / "locked").iterdir()) == []


# -- 4, 5. Parquet values are judged by their type, as the API judges JSON --------------------------


def test_parquet_text_in_a_number_column_is_rejected_while_csv_text_is_parsed(
    demo_models_dir: Path, tmp_path: Path
) -> None:
    source = german_rows(30, seed=6)
    source.to_csv(tmp_path / "in.csv", index=False)
    source.astype({"age": str}).to_parquet(tmp_path / "in.parquet")
    code, output = run(demo_models_dir, tmp_path / "in.csv", tmp_path / "a.parquet")
    assert code == 0, output
    assert len(pd.read_parquet(tmp_path / "a.parquet")) == 30
    code, output = run(demo_models_dir, tmp_path / "in.parquet", tmp_path / "b.parquet")
    assert code == 0, output
    got = rejected(tmp_path / "b.parquet")
    assert [(r["row"], r["errors"]) for r in got] == [
        (i, {"age": ["Not a valid number."]}) for i in range(30)
    ]
    assert got[0]["input"]["age"] == str(source["age"].iloc[0])


def test_a_parquet_timestamp_feature_is_rejected_naming_the_field(
    demo_models_dir: Path, tmp_path: Path
) -> None:
    source = german_rows(12, seed=7)
    source["age"] = pd.Timestamp("2000-01-01") + pd.to_timedelta(source["age"], unit="D")
    source.to_parquet(tmp_path / "in.parquet")
    code, output = run(demo_models_dir, tmp_path / "in.parquet", tmp_path / "o.parquet")
    assert code == 0, output
    got = rejected(tmp_path / "o.parquet")
    assert [(r["row"], r["errors"]) for r in got] == [
        (i, {"age": ["Not a valid number."]}) for i in range(12)
    ]


TYPED = FeatureSchema(
    (
        Feature("x", "numeric"),
        Feature("n", "integer"),
        Feature("c", "categorical", categories=("a", "1")),
        Feature("flag", "boolean"),
    )
)


class FakeModel:
    name, sha256, schema, preprocessor = "typed", "1" * 64, TYPED, None


def test_typed_values_are_judged_by_type_and_match_the_instance_schema() -> None:
    frame = pd.DataFrame(
        {
            "x": pd.Series([1.5, "2.5", 3, None], dtype=object),
            "n": pd.Series([67, "67", 2.0, True], dtype=object),
            "c": pd.Series(["a", 1, "1", None], dtype=object),
            "flag": pd.Series([True, "true", 1, False], dtype=object),
        }
    )
    checked = validate_chunk(FakeModel, frame, typed=True)  # type: ignore[arg-type]
    assert checked.valid.tolist() == [True, False, False, False]
    assert checked.errors == {
        1: {
            "x": ["Not a valid number."],
            "n": ["Not a valid number."],
            "c": ["Not a valid string."],
            "flag": ["Not a valid boolean."],
        },
        2: {"flag": ["Not a valid boolean."]},
        3: {"x": ["Field may not be null."], "n": ["Not a valid number."], "c": ["Field may not be null."]},
    }
    assert decoded_records(FakeModel, frame, typed=True)[1]["n"] == "67"  # type: ignore[arg-type]
    as_text = validate_chunk(FakeModel, frame.iloc[[1]].reset_index(drop=True))  # type: ignore[arg-type]
    assert as_text.valid.tolist() == [True]  # CSV cells are text: "2.5", "67", "true" are parsed


# -- 6. duplicate columns ---------------------------------------------------------------------------


def test_duplicate_columns_are_refused_naming_them(demo_models_dir: Path, tmp_path: Path) -> None:
    source = german_rows(10, seed=8)
    text = source.to_csv(index=False)
    lines = text.splitlines()
    lines = [lines[0] + ",age", *(line + ",1" for line in lines[1:])]
    (tmp_path / "in.csv").write_text("\n".join(lines) + "\n")
    table = pa.Table.from_pandas(source, preserve_index=False)
    table = table.append_column("age", pa.array(np.ones(10, dtype=np.int64)))
    pq.write_table(table, tmp_path / "in.parquet")
    for src in (tmp_path / "in.csv", tmp_path / "in.parquet"):
        code, output = run(demo_models_dir, src, tmp_path / "o.parquet")
        assert code == 2
        assert f"{src} has duplicate column(s) age" in error_line(output)
        assert not (tmp_path / "o.parquet.parts").exists()


# -- 7. progress lines carry timestamps -------------------------------------------------------------


def test_progress_lines_start_with_a_utc_timestamp(demo_models_dir: Path, tmp_path: Path) -> None:
    german_rows(300, seed=9).to_csv(tmp_path / "in.csv", index=False)
    before = datetime.now(UTC).replace(microsecond=0)
    code, output = run(demo_models_dir, tmp_path / "in.csv", tmp_path / "o.parquet", "--chunk-size", "100")
    after = datetime.now(UTC)
    assert code == 0, output
    lines = output.splitlines()
    assert len(lines) >= 3
    for line in lines:
        stamp, _, rest = line.partition(" ")
        when = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        assert before <= when <= after + timedelta(seconds=1), line
        assert rest.startswith(("batch: ", "done: ")), line


# -- 5. values that overflow once preprocessed ------------------------------------------------------


def test_a_row_that_overflows_once_scaled_is_rejected_as_the_api_rejects_it(
    demo_models_dir: Path, tmp_path: Path
) -> None:
    from explain_service.errors import ValidationFailed
    from explain_service.registry.store import ModelRegistry
    from explain_service.validation import validate_instances

    model = ModelRegistry(demo_models_dir).get("wine-mlp")
    scales = dict(zip(model.schema.names, model.preprocessor.scale_, strict=True))  # a StandardScaler
    feature = min(scales, key=scales.get)
    assert scales[feature] < 1  # 3e38 is a valid float32 input that leaves the range once scaled
    rows = model.background.iloc[:5].astype({feature: float}).reset_index(drop=True)
    rows.loc[3, feature] = 3e38
    rows.to_csv(tmp_path / "in.csv", index=False)
    argv = ["--models-dir", str(demo_models_dir), "--progress-every", "0", "--model", "wine-mlp"]
    out = tmp_path / "out.parquet"
    result = CliRunner().invoke(batch, [*argv, "--input", str(tmp_path / "in.csv"), "--output", str(out)])
    assert result.exit_code == 0, result.output
    with pytest.raises(ValidationFailed) as api:
        validate_instances(model, [rows.iloc[3].to_dict()])
    assert [(r["row"], r["errors"]) for r in rejected(out)] == [
        (3, {feature: api.value.errors[f"instances.0.{feature}"]})
    ]
    explained = pd.read_parquet(out)
    assert (
        len(explained) == 4
        and np.isfinite(explained.filter(like="shap.").select_dtypes("number")).all().all()
    )
