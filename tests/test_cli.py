"""The ``explain-service`` command line."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from explain_service.cli import main


def test_models_list_and_verify(models_dir: Path) -> None:
    runner = CliRunner()
    listed = runner.invoke(main, ["models", "list", "--models-dir", str(models_dir)])
    assert listed.exit_code == 0
    assert "german-credit@1\tclassification" in listed.output
    verified = runner.invoke(main, ["models", "verify", "--models-dir", str(models_dir)])
    assert verified.exit_code == 0, verified.output
    assert verified.output.count("ok ") == 5


def test_verify_names_the_tampered_model_and_fails(models_dir: Path) -> None:
    artifact = models_dir / "wine-mlp" / "1" / "estimator.skops"
    artifact.write_bytes(artifact.read_bytes() + b"x")
    result = CliRunner().invoke(main, ["models", "verify", "--models-dir", str(models_dir)])
    assert result.exit_code == 1
    assert "FAIL wine-mlp@1" in result.output and "does not match manifest" in result.output
    single = CliRunner().invoke(
        main, ["models", "verify", "german-credit@1", "--models-dir", str(models_dir)]
    )
    assert single.exit_code == 0


def test_build_demo_builds_only_what_is_missing(tmp_path: Path) -> None:
    runner = CliRunner()
    first = runner.invoke(
        main, ["models", "build-demo", "--models-dir", str(tmp_path), "--only", "diabetes-gbr"]
    )
    assert first.exit_code == 0 and "built diabetes-gbr" in first.output
    again = runner.invoke(
        main, ["models", "build-demo", "--models-dir", str(tmp_path), "--only", "diabetes-gbr"]
    )
    assert "already present" in again.output
    bad = runner.invoke(main, ["models", "build-demo", "--models-dir", str(tmp_path), "--only", "nope"])
    assert bad.exit_code != 0 and "unknown demo model" in bad.output
