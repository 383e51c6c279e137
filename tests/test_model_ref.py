"""``--model NAME[@VERSION]``: one rule for every command; an empty name or version is refused, not guessed."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from explain_service.cli import main
from explain_service.model_ref import parse_model_ref


@pytest.mark.parametrize(
    ("value", "parsed"),
    [("german-credit", ("german-credit", None)), ("german-credit@2", ("german-credit", "2"))],
    ids=["newest", "version"],
)
def test_a_name_with_or_without_a_version(value: str, parsed: tuple[str, str | None]) -> None:
    assert parse_model_ref(value) == parsed


@pytest.mark.parametrize(
    "value", ["german-credit@", "@1", "@", ""], ids=["no-version", "no-name", "at", "empty"]
)
def test_an_empty_name_or_version_is_refused(value: str) -> None:
    with pytest.raises(click.BadParameter, match="expected NAME or NAME@VERSION") as caught:
        parse_model_ref(value)
    assert caught.value.param_hint == "--model"


def command_args(command: str, ref: str, tmp_path: Path, models_dir: Path) -> list[str]:
    data = tmp_path / "rows.csv"
    data.write_text("age,risk\n30,good\n")
    where = ["--models-dir", str(models_dir), "--database-url", f"sqlite:///{tmp_path / 'a.sqlite3'}"]
    if command == "batch":
        return ["batch", "--model", ref, "--input", str(data), "--output", str(tmp_path / "out.parquet")]
    if command == "fairness":
        return ["fairness", "--model", ref, "--data", str(data), "--label", "risk", *where]
    return ["report", "--model", ref, "--output", str(tmp_path / "report.json"), *where]


@pytest.mark.parametrize("command", ["batch", "fairness", "report"])
@pytest.mark.parametrize("ref", ["german-credit@", "@1"], ids=["no-version", "no-name"])
def test_every_command_refuses_an_empty_part_with_exit_2_and_one_line(
    command: str, ref: str, tmp_path: Path, demo_models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EXPLAIN_MODELS_DIR", str(demo_models_dir))
    result = CliRunner().invoke(main, command_args(command, ref, tmp_path, demo_models_dir))
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert errors == [f"Error: Invalid value for --model: expected NAME or NAME@VERSION, not {ref!r}"]
    assert not (tmp_path / "out.parquet").exists() and not (tmp_path / "report.json").exists()
