"""``explain-service fairness``: a bias audit of a model on a labelled CSV or Parquet file."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
import orjson

from explain_service.config import Settings
from explain_service.counts import count
from explain_service.model_ref import parse_model_ref

HELP = """Audit a model for bias on a labelled CSV or Parquet file.

\b
MODEL is NAME or NAME@VERSION (default: the newest version). The label column
holds class names; the positive outcome is the model's favourable class (else
its second class), and a row's decision is the class the service answers.
Per sensitive feature and group: count, selection rate, true and false
positive rates; per feature: demographic parity difference and ratio, equal
opportunity difference and equalized odds difference (fairlearn's
definitions), each with a seeded bootstrap 95% interval. A group of fewer
than 30 rows is warned about; a demographic parity ratio below 0.8 is flagged
(four-fifths rule).

\b
--sensitive names features (default: those the model registered) or other
columns of the file (grouped by value). Numeric features are grouped by the
bin edges they were registered with, or by --bins FEATURE=E1,E2,... .
--intersect adds the groups of all the sensitive features together.

\b
The audit is stored as a record of the audit chain (kind "fairness": model
sha256, data sha256, figures); its id is the answer's "id". The file is read
in chunks (--chunk-size); the figures do not depend on the chunk size.

\b
--verify ID --data F reruns a stored audit with its own parameters on F and
exits 0 when the model, the data's sha256 and every figure match the record,
1 naming what differs (nothing is stored).
"""


def _parse_bins(values: tuple[str, ...]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for value in values:
        name, sep, edges = value.partition("=")
        try:
            if not sep or not name:
                raise ValueError
            out[name] = [float(e) for e in edges.split(",")]
        except ValueError:
            raise click.BadParameter(
                f"expected FEATURE=E1,E2,..., not {value!r}", param_hint="--bins"
            ) from None
    return out


@click.command("fairness", help=HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", "model_ref", default=None, metavar="NAME[@VERSION]", help="registered model")
@click.option(
    "--data",
    "data_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="labelled rows (.csv or .parquet)",
)
@click.option("--label", default=None, metavar="COLUMN", help="column of true class names")
@click.option("--sensitive", default=None, metavar="F1[,F2]", help="features or columns to group by")
@click.option("--bins", multiple=True, metavar="FEATURE=E1,E2,...", help="bin edges of a numeric feature")
@click.option("--intersect", is_flag=True, help="also audit the intersection of the sensitive features")
@click.option("--output", "output_path", type=click.Path(dir_okay=False, path_type=Path), help="JSON answer")
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path), help="HTML report")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="bootstrap seed")
@click.option(
    "--resamples", type=click.IntRange(min=0, max=10_000), default=1000, show_default=True, help="bootstrap"
)
@click.option("--chunk-size", type=click.IntRange(min=1), default=50_000, show_default=True)
@click.option("--models-dir", default=None, help="default: $EXPLAIN_MODELS_DIR or models/")
@click.option("--database-url", default=None, help="audit store (default: $EXPLAIN_DATABASE_URL)")
@click.option(
    "--verify", "verify_id", default=None, metavar="RECORD_ID", help="rerun a stored audit on --data"
)
def fairness(
    model_ref: str | None,
    data_path: Path,
    label: str | None,
    sensitive: str | None,
    bins: tuple[str, ...],
    intersect: bool,
    output_path: Path | None,
    html_path: Path | None,
    seed: int,
    resamples: int,
    chunk_size: int,
    models_dir: str | None,
    database_url: str | None,
    verify_id: str | None,
) -> None:
    settings = Settings.from_env(models_dir=models_dir, database_url=database_url)
    if verify_id is not None:
        _verify(settings, verify_id, data_path, chunk_size)
        return
    if model_ref is None or label is None:
        raise click.UsageError("--model and --label are required (unless --verify)")
    from explain_service.audit.store import AuditStore
    from explain_service.errors import ServiceError
    from explain_service.fairness.audit import AuditPlan, answer, positive_class, resolve_sensitive
    from explain_service.fairness.data import InputError, audit_file, file_columns
    from explain_service.fairness.record import store_audit
    from explain_service.registry.store import ModelRegistry

    name, version = parse_model_ref(model_ref)
    names = [s.strip() for s in sensitive.split(",") if s.strip()] if sensitive else None
    try:
        model = ModelRegistry(settings.models_dir).get(name, version)
        positive = positive_class(model)
        extra = file_columns(model, data_path, label)
        plan = AuditPlan(
            sensitive=resolve_sensitive(
                model, names, _parse_bins(bins), extra_columns=extra, field_name="--sensitive"
            ),
            positive=positive,
            intersect=intersect,
            resamples=resamples,
            seed=seed,
        )
        acc, data = audit_file(model, data_path, label, plan, chunk_size=chunk_size)
        with AuditStore(settings.database_url, durability=settings.audit_durability) as store:  # type: ignore[arg-type]
            result = store_audit(store, model, plan, label, answer(model, acc, label, data), "cli")
    except InputError as exc:
        raise click.UsageError(str(exc)) from None
    except ServiceError as exc:
        raise click.ClickException(_message(exc)) from None
    text = orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n"
    if output_path is None:
        sys.stdout.buffer.write(text)
        sys.stdout.buffer.flush()
    else:
        output_path.write_bytes(text)
    if html_path is not None:
        from explain_service.fairness.html import render_audit_html

        html_path.write_text(render_audit_html(result), encoding="utf-8")
    click.echo(_summary(result), err=True)


def _verify(settings: Settings, record_id: str, data_path: Path, chunk_size: int) -> None:
    """Rerun the stored audit ``record_id`` on ``data_path``; exit 1 naming what differs."""
    from explain_service.audit.store import AuditError, AuditStore
    from explain_service.errors import ServiceError
    from explain_service.fairness.audit import answer
    from explain_service.fairness.data import audit_file
    from explain_service.fairness.record import differences, replay_plan
    from explain_service.registry.store import ModelRegistry

    try:
        with AuditStore(settings.database_url, create=False) as store:  # type: ignore[arg-type]
            record = store.get(record_id)
        if record is None:
            raise click.ClickException(f"no audit record {record_id!r}")
        plan, label = replay_plan(record)
        model = ModelRegistry(settings.models_dir).get(record.model_name, record.model_version)
        if label is None:
            raise click.ClickException(f"record {record_id} audited labels sent over HTTP, not a file")
        acc, data = audit_file(model, data_path, label, plan, chunk_size=chunk_size)
    except (AuditError, ValueError) as exc:  # InputError is a ValueError
        raise click.ClickException(str(exc)) from None
    except ServiceError as exc:
        raise click.ClickException(_message(exc)) from None
    found = differences(record, model, answer(model, acc, label, data))
    if found:
        click.echo(f"MISMATCH {record_id}: " + "; ".join(found), err=True)
        sys.exit(1)
    click.echo(
        f"verified {record_id}: {model.name}@{model.version}, data sha256 {data['sha256'][:16]}, figures equal"
    )


def _message(exc: Any) -> str:
    """The error's fields and messages, which name the option or feature at fault."""
    details = "; ".join(f"{field}: {' '.join(msgs)}" for field, msgs in (exc.errors or {}).items())
    return details or exc.message


def _summary(result: dict[str, Any]) -> str:
    parts = []
    for feature, figures in result["by_feature"].items():
        ratio = figures["demographic_parity_ratio"]
        flag = " FLAGGED (four-fifths rule)" if figures["four_fifths_rule"]["flagged"] else ""
        parts.append(
            f"  {feature}: demographic parity ratio {ratio if ratio is None else f'{ratio:.3f}'}{flag}"
        )
    data = result["data"]
    head = f"audit {result['id']}: {count(data['used'], 'row')} used, {data['rejected']} rejected"
    return "\n".join([head, *parts])
