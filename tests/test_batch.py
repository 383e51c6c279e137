"""The batch job: same numbers as in process, bad rows aside, resumable exactly once, on every engine."""

from __future__ import annotations

import contextlib
import io
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from explain_service.batch.command import batch
from explain_service.batch.engines import ModelBundle
from explain_service.batch.job import JobSpec, prepare
from explain_service.batch.manifest import PartsDir
from explain_service.batch.progress import Progress
from explain_service.batch.validate import decoded_records, validate_chunk
from explain_service.errors import IntegrityError
from explain_service.explainers import EXPLAINERS
from explain_service.explainers.shap import ShapExplainer, ShapOptions
from explain_service.registry.demo import build_demo, german_credit_frame
from explain_service.registry.schema import Feature, FeatureSchema, frame_from_records
from explain_service.registry.store import ModelRegistry
from explain_service.validation import validate_row_errors

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def batch_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("batch-models")
    build_demo(root, only=["german-credit", "diabetes-gbr"])
    return root


@pytest.fixture(scope="session")
def batch_registry(batch_models: Path) -> ModelRegistry:
    return ModelRegistry(batch_models)


def german_rows(n: int, seed: int) -> pd.DataFrame:
    """``n`` German-credit rows resampled with ``seed``, behind an ``id`` column."""
    X, _ = german_credit_frame()
    rows = X.sample(n, replace=True, random_state=seed).reset_index(drop=True)
    rows.insert(0, "id", [f"app-{seed}-{i}" for i in range(n)])
    return rows


def run(models: Path, *args: str) -> tuple[int, str]:
    """Invoke ``batch`` in process; returns (exit code, stdout + stderr)."""
    result = CliRunner().invoke(batch, ["--models-dir", str(models), "--progress-every", "0", *args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def explain_file(models: Path, src: Path, out: Path, *args: str) -> pd.DataFrame:
    code, output = run(models, "--input", str(src), "--output", str(out), *args)
    assert code == 0, output
    return pd.read_parquet(out)


def typed(model, frame: pd.DataFrame) -> pd.DataFrame:
    return frame_from_records(model.schema, frame[model.schema.names].to_dict("records"))


# -- the numbers -------------------------------------------------------------------------------------

SHAP_CASES = [
    (("--target", "predicted"), "predicted", None),
    ((), "good", None),
    (("--target", "bad", "--output-space", "probability"), "bad", "probability"),
]


@pytest.mark.parametrize(
    ("args", "target", "space"),
    SHAP_CASES,
    ids=["predicted-class-log-odds", "default-favourable-log-odds", "bad-probability"],
)
def test_german_credit_columns_equal_in_process_explanations(
    batch_models: Path, batch_registry: ModelRegistry, tmp_path: Path, args, target, space
) -> None:
    source = german_rows(700, seed=1)
    source.to_csv(tmp_path / "in.csv", index=False)
    out = explain_file(
        batch_models,
        tmp_path / "in.csv",
        tmp_path / "out.parquet",
        "--model",
        "german-credit",
        "--chunk-size",
        "256",
        *args,
    )

    model = batch_registry.get("german-credit")
    rows = typed(model, source)
    proba = model.predict_proba(rows)
    targets = (
        proba.argmax(axis=1) if target == "predicted" else np.full(len(rows), model.class_names.index(target))
    )
    expected = ShapExplainer().explain(model, rows, targets, ShapOptions().load({"output": space}))

    assert list(out.columns[:10]) == ["id", *model.schema.names]
    assert out["id"].tolist() == source["id"].tolist()
    pd.testing.assert_frame_equal(out[model.schema.names], rows, check_dtype=False)
    assert out["prediction"].tolist() == [model.class_names[k] for k in proba.argmax(axis=1)]
    np.testing.assert_array_equal(out[["proba.bad", "proba.good"]].to_numpy(), proba)
    assert out["shap.target"].tolist() == [e["target"] for e in expected]
    assert set(out["shap.output"]) == {expected[0]["output"]}
    np.testing.assert_allclose(
        out["shap.base_value"], [e["base_value"] for e in expected], rtol=0, atol=1e-12
    )
    for name in model.schema.names:
        np.testing.assert_allclose(
            out[f"shap.{name}"], [e["values"][name] for e in expected], rtol=0, atol=1e-12
        )
    np.testing.assert_allclose(
        out["shap.additivity_residual"], [e["additivity_residual"] for e in expected], rtol=0, atol=1e-12
    )
    meta = orjson.loads(pq.read_schema(tmp_path / "out.parquet").metadata[b"explain_service"])
    assert (
        meta["model"]["sha256"] == model.sha256 and meta["methods"] == ["shap"] and meta["target"] == target
    )


def test_regression_model_has_value_prediction_and_raw_shap(
    batch_models: Path, batch_registry: ModelRegistry, tmp_path: Path
) -> None:
    model = batch_registry.get("diabetes-gbr")
    source = model.background.iloc[:300].reset_index(drop=True)
    source.to_parquet(tmp_path / "in.parquet")
    out = explain_file(
        batch_models, tmp_path / "in.parquet", tmp_path / "out.parquet", "--model", "diabetes-gbr@1"
    )

    expected = ShapExplainer().explain(model, source, None, ShapOptions().load({}))
    assert out.columns.tolist() == [
        *model.schema.names,
        "prediction",
        "flags",
        "shap.target",
        "shap.output",
        "shap.base_value",
        *(f"shap.{n}" for n in model.schema.names),
        "shap.additivity_residual",
    ]
    assert out["prediction"].dtype == np.float64
    np.testing.assert_array_equal(out["prediction"], model.predict_value(source))
    assert out["shap.target"].isna().all() and set(out["shap.output"]) == {"raw"}
    for name in model.schema.names:
        np.testing.assert_allclose(
            out[f"shap.{name}"], [e["values"][name] for e in expected], rtol=0, atol=1e-12
        )
    assert (out["shap.additivity_residual"].abs() <= 1e-5 * np.maximum(1, out["prediction"].abs())).all()


def test_csv_and_parquet_inputs_give_the_same_file(batch_models: Path, tmp_path: Path) -> None:
    source = german_rows(500, seed=2)
    source.to_csv(tmp_path / "in.csv", index=False)
    source.to_parquet(tmp_path / "in.parquet", row_group_size=77)
    args = ("--model", "german-credit", "--chunk-size", "128")
    from_csv = explain_file(batch_models, tmp_path / "in.csv", tmp_path / "a.parquet", *args)
    from_parquet = explain_file(batch_models, tmp_path / "in.parquet", tmp_path / "b.parquet", *args)
    assert len(from_csv) == 500
    pd.testing.assert_frame_equal(from_csv, from_parquet)


def test_lime_and_counterfactual_columns(
    batch_models: Path, batch_registry: ModelRegistry, tmp_path: Path
) -> None:
    source = german_rows(4, seed=11)
    source.to_csv(tmp_path / "in.csv", index=False)
    out = explain_file(
        batch_models, tmp_path / "in.csv", tmp_path / "out.parquet",
        "--model", "german-credit", "--methods", "counterfactual,lime,shap",
        "--options", '{"lime": {"num_samples": 500}, "counterfactual": {"count": 2}}',
    )  # fmt: skip
    model = batch_registry.get("german-credit")
    names = model.schema.names
    assert out.columns.tolist()[13] == "flags"
    assert out.columns.tolist()[14:] == [
        *[
            "shap.target",
            "shap.output",
            "shap.base_value",
            *(f"shap.{n}" for n in names),
            "shap.additivity_residual",
        ],
        *["lime.target", "lime.intercept", "lime.score", *(f"lime.{n}" for n in names)],
        *(f"lime.slope.{n}" for n in names),
        "counterfactual.json",
    ]
    lime = EXPLAINERS["lime"]
    rows = typed(model, source)
    targets = np.full(len(rows), model.class_names.index("good"))  # the favourable class, for every row
    expected = lime.explain(model, rows, targets, lime.options_schema().load({"num_samples": 500}))
    assert out["lime.target"].tolist() == ["good"] * len(rows)
    for name in names:
        assert out[f"lime.{name}"].tolist() == [e["contributions"][name] for e in expected]
        assert out[f"lime.slope.{name}"].tolist() == [e["weights"][name] for e in expected]
    assert out["lime.score"].tolist() == [e["score"] for e in expected]
    # rows predicted "good" (the favourable class) aim at "bad", the others at "good"
    goals = ["bad" if t == model.class_names.index("good") else "good" for t in targets]
    for text, goal in zip(out["counterfactual.json"], goals, strict=True):
        answer = orjson.loads(text)
        assert answer["target"] == goal and "metrics" in answer and len(answer["counterfactuals"]) <= 2


# -- bad rows ----------------------------------------------------------------------------------------


def test_bad_rows_go_to_the_side_file_and_the_rest_is_explained(batch_models: Path, tmp_path: Path) -> None:
    source = german_rows(400, seed=3).astype({"age": object, "job": object, "credit_amount": object})
    source.loc[5, "age"] = "old"
    source.loc[17, "sex"] = "unknown"
    source.loc[150, "job"] = 1.5
    source.loc[151, "credit_amount"] = ""
    source.loc[399, "age"] = "inf"
    source.to_csv(tmp_path / "in.csv", index=False)
    out = explain_file(
        batch_models,
        tmp_path / "in.csv",
        tmp_path / "out.parquet",
        "--model",
        "german-credit",
        "--chunk-size",
        "100",
    )

    lines = [orjson.loads(line) for line in (tmp_path / "out.rejected.jsonl").read_bytes().splitlines()]
    assert [(r["row"], r["errors"]) for r in lines] == [
        (5, {"age": ["Not a valid number."]}),
        (17, {"sex": ["Must be one of: female, male."]}),
        (150, {"job": ["Not a valid integer."]}),
        (151, {"credit_amount": ["Field may not be null."]}),
        (399, {"age": ["Not a finite number."]}),
    ]
    assert lines[0]["input"]["id"] == "app-3-5" and lines[0]["input"]["age"] == "old"
    bad = {5, 17, 150, 151, 399}
    assert out["id"].tolist() == [i for k, i in enumerate(source["id"]) if k not in bad]
    assert out["shap.age"].notna().all()


def test_missing_feature_columns_fail_before_any_work(batch_models: Path, tmp_path: Path) -> None:
    german_rows(20, seed=4).drop(columns=["age", "sex"]).to_csv(tmp_path / "in.csv", index=False)
    code, output = run(
        batch_models,
        "--model",
        "german-credit",
        "--input",
        str(tmp_path / "in.csv"),
        "--output",
        str(tmp_path / "o.parquet"),
    )
    assert code == 2 and "lacks feature column(s) sex, age" in output
    assert not (tmp_path / "o.parquet.parts").exists() and not (tmp_path / "o.parquet").exists()


@dataclass
class FakeModel:
    """Just what validation needs: a name, a hash, a schema with every kind of feature, no preprocessing."""

    name: str
    sha256: str
    schema: FeatureSchema
    preprocessor: None = None


MIXED = FakeModel(
    "mixed",
    "0" * 64,
    FeatureSchema(
        (
            Feature("x", "numeric"),
            Feature("n", "integer"),
            Feature("c", "categorical", categories=("a", "b", "NA")),
            Feature("flag", "boolean"),
        )
    ),
)
CELLS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["a", "b", "NA", "", "true", "False", "1", "2.5", "1e400", "x", "nan", "-7"]),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.fixed_dictionaries({"x": CELLS, "n": CELLS, "c": CELLS, "flag": CELLS}), min_size=1, max_size=12
    ),
    st.sampled_from(["object", "inferred"]),
    st.booleans(),
)
def test_vectorised_validation_accepts_exactly_what_the_instance_schema_accepts(
    rows: list[dict], how: str, typed: bool
) -> None:
    frame = pd.DataFrame(rows, dtype=object)
    if how == "inferred":
        frame = frame.infer_objects()
    checked = validate_chunk(MIXED, frame, typed=typed)  # type: ignore[arg-type]
    records = decoded_records(MIXED, frame, typed=typed)  # type: ignore[arg-type]
    per_row = [validate_row_errors(MIXED, r) for r in records]  # type: ignore[arg-type]
    assert checked.valid.tolist() == [not e for e in per_row]
    assert {i: e for i, e in enumerate(per_row) if e} == checked.errors
    good = [r for r, e in zip(records, per_row, strict=True) if not e]
    for name in ("x", "n", "c", "flag"):
        assert checked.columns[name].tolist() == [r[name] for r in good]


# -- audit -------------------------------------------------------------------------------------------


# Audit records, their ids and the caller's id columns: tests/test_batch_ids.py.


# -- resume and exactly-once -------------------------------------------------------------------------


def committed(parts: Path) -> int:
    try:
        return len(orjson.loads((parts / "manifest.json").read_bytes())["chunks"])
    except (OSError, ValueError):
        return -1


@pytest.mark.slow
def test_killed_at_random_moments_and_resumed_equals_an_uninterrupted_run(
    batch_models: Path, tmp_path: Path
) -> None:
    source = german_rows(9000, seed=5).astype({"age": object})
    source.loc[[7, 4321, 8999], "age"] = "n/a?"
    source.to_csv(tmp_path / "in.csv", index=False)
    common = ["--model", "german-credit", "--input", str(tmp_path / "in.csv"), "--chunk-size", "300"]
    code, output = run(batch_models, *common, "--output", str(tmp_path / "ref.parquet"))
    assert code == 0, output

    out, parts = tmp_path / "out.parquet", tmp_path / "out.parquet.parts"
    cmd = [sys.executable, "-m", "explain_service.batch.command", "--models-dir", str(batch_models), *common]
    cmd += ["--output", str(out), "--resume", "--progress-every", "0"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    rng = random.Random(20261129)
    progress_seen = []
    for attempt in range(6):
        log = tmp_path / f"attempt-{attempt}.log"
        with open(log, "wb") as sink:
            proc = subprocess.Popen(cmd, env=env, stdout=sink, stderr=sink, start_new_session=True)
        try:
            if attempt == 0:
                time.sleep(rng.uniform(0.5, 2.0))  # anywhere, start-up included
            else:  # after this run's first commit, however loaded the machine
                deadline, before = time.monotonic() + 120, committed(parts)
                while committed(parts) <= before and proc.poll() is None:
                    assert time.monotonic() < deadline, log.read_text()
                    time.sleep(0.01)
                time.sleep(rng.uniform(0.0, 0.4))
        finally:
            with contextlib.suppress(ProcessLookupError):  # it may have finished before the kill
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        progress_seen.append(committed(parts))
        if out.exists():
            break
    assert any(0 < c < 30 for c in progress_seen), progress_seen

    code, output = run(batch_models, *common, "--output", str(out), "--resume")
    assert code == 0, output
    assert out.read_bytes() == (tmp_path / "ref.parquet").read_bytes()
    assert (tmp_path / "out.rejected.jsonl").read_bytes() == (tmp_path / "ref.rejected.jsonl").read_bytes()
    assert not parts.exists()
    assert pd.read_parquet(out)["id"].tolist() == [
        i for k, i in enumerate(source["id"]) if k not in (7, 4321, 8999)
    ]


def test_resume_refuses_changed_parameters_or_input(batch_models: Path, tmp_path: Path) -> None:
    src, out = tmp_path / "in.csv", tmp_path / "out.parquet"
    german_rows(300, seed=6).to_csv(src, index=False)
    spec = JobSpec(model="german-credit", input=src, output=out, models_dir=batch_models, chunk_size=100)
    started = PartsDir(out)
    started.open(prepare(spec).identity, resume=False)
    started.close()
    common = ["--model", "german-credit", "--input", str(src), "--output", str(out)]

    code, output = run(batch_models, *common, "--chunk-size", "100")
    assert code == 2 and "pass --resume" in output
    code, output = run(batch_models, *common, "--chunk-size", "50", "--resume")
    assert code == 2 and "different chunk_size" in output
    code, output = run(batch_models, *common, "--chunk-size", "100", "--target", "bad", "--resume")
    assert code == 2 and "different target" in output
    with open(src, "a") as f:
        f.write("male,1,own,little,little,1000,12,car,30\n")
    code, output = run(batch_models, *common, "--chunk-size", "100", "--resume")
    assert code == 2 and f"the input {src.resolve()} changed since the job started" in output


# -- engines and progress ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("engine", "described"),
    [
        (("--workers", "2"), "local, 2 processes x 1 thread(s)"),
        (("--engine", "dask", "--workers", "2"), "dask LocalCluster, 2 processes x 1 thread"),
    ],
    ids=["local-processes", "dask-local-cluster"],
)
@pytest.mark.slow
def test_worker_processes_give_the_in_process_file(
    batch_models: Path, tmp_path: Path, engine: tuple[str, ...], described: str
) -> None:
    source = german_rows(1200, seed=7)
    source.loc[3, "purpose"] = "yacht"
    source.to_parquet(tmp_path / "in.parquet")
    common = ["--model", "german-credit@1", "--input", str(tmp_path / "in.parquet"), "--chunk-size", "250"]
    code, output = run(batch_models, *common, "--output", str(tmp_path / "local.parquet"))
    assert code == 0, output
    code, output = run(batch_models, *common, "--output", str(tmp_path / "workers.parquet"), *engine)
    assert code == 0, output
    assert described in output
    assert (tmp_path / "workers.parquet").read_bytes() == (tmp_path / "local.parquet").read_bytes()
    assert (tmp_path / "workers.rejected.jsonl").read_bytes() == (
        tmp_path / "local.rejected.jsonl"
    ).read_bytes()


def test_workers_refuse_a_model_bundle_that_does_not_match_its_hashes(batch_registry: ModelRegistry) -> None:
    model = batch_registry.get("german-credit")
    bundle = ModelBundle.from_dir(batch_registry.models_dir / "german-credit" / "1", model.sha256)
    assert bundle.load().sha256 == model.sha256
    files = dict(bundle.files)
    files["estimator.ubj"] = files["estimator.ubj"][:-1] + b"\x00"
    with pytest.raises(IntegrityError, match=r"estimator\.ubj"):
        ModelBundle(bundle.name, bundle.version, bundle.sha256, files).load()
    with pytest.raises(RuntimeError, match="unsafe file name"):
        ModelBundle(bundle.name, bundle.version, bundle.sha256, {**bundle.files, "../x": b""}).load()


def test_progress_lines_and_summary_when_stderr_is_not_a_terminal(batch_models: Path, tmp_path: Path) -> None:
    german_rows(600, seed=8).to_csv(tmp_path / "in.csv", index=False)
    code, output = run(
        batch_models, "--model", "german-credit", "--input", str(tmp_path / "in.csv"),
        "--output", str(tmp_path / "o.parquet"), "--chunk-size", "200",
    )  # fmt: skip
    assert code == 0
    lines = [line.partition("Z ")[2] for line in output.splitlines()]
    assert lines[0] == "batch: explaining ~600 rows"
    assert any(line.startswith("batch: 200/~600 rows (33.3%), ") and "rows/s, ETA " in line for line in lines)
    assert lines[-1].startswith("done: 600 rows (600 explained, 0 rejected) in 3 chunks, ")
    assert "\r" not in output


def test_progress_bar_on_a_terminal() -> None:
    stream = io.StringIO()
    progress = Progress(stream, bar=True)
    progress.start(1000, exact=True, done=200)
    progress.advance(300)
    progress.close()
    text = stream.getvalue()
    assert "500/1.00k" in text and "rows/s" in text and "\r" in text


ARGUMENT_ERRORS = [
    (["--model", "nope"], "No model 'nope' is registered"),
    (["--model", "german-credit@9"], "No model 'german-credit' version '9'"),
    (["--model", "german-credit", "--chunk-size", "0"], "Invalid value for '--chunk-size'"),
    (
        ["--model", "german-credit", "--methods", "shap,anchors"],
        "unknown or repeated method(s) anchors; available: shap",
    ),
    (["--model", "german-credit", "--target", "maybe"], "target: Must be one of: bad, good."),
    (["--model", "german-credit", "--output-space", "raw"], "output 'raw' is not available for this model"),
    (
        ["--model", "german-credit", "--options", '{"shap": {"max_evals": 5}}'],
        "options.shap.max_evals: Must be",
    ),
    (["--model", "german-credit", "--output", "{tmp}/o.csv"], "the output must be a .parquet file"),
    (["--model", "german-credit", "--input", "{tmp}/missing.csv"], "'{tmp}/missing.csv' does not exist"),
    (["--model", "german-credit", "--input", "{tmp}/in.txt"], "unsupported input extension '.txt'"),
    (["--model", "german-credit", "--scheduler", "tcp://127.0.0.1:1"], "--scheduler needs --engine dask"),
]


@pytest.mark.parametrize(
    ("args", "message"),
    ARGUMENT_ERRORS,
    ids=[m.split(" ")[0] + str(i) for i, (_, m) in enumerate(ARGUMENT_ERRORS)],
)
def test_argument_errors_exit_2_with_a_clear_message(
    batch_models: Path, tmp_path: Path, args, message
) -> None:
    german_rows(10, seed=9).to_csv(tmp_path / "in.csv", index=False)
    (tmp_path / "in.txt").write_text("x\n")
    given_args = {"--input": str(tmp_path / "in.csv"), "--output": str(tmp_path / "o.parquet")}
    for i in range(0, len(args), 2):
        given_args[args[i]] = args[i + 1].replace("{tmp}", str(tmp_path))
    flat = [x for kv in given_args.items() for x in kv]
    code, output = run(batch_models, *flat)
    assert code == 2, output
    assert message.replace("{tmp}", str(tmp_path)) in " ".join(output.split()), output
    assert "Traceback" not in output
