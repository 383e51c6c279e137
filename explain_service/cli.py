"""The ``explain-service`` command line.

Sub-commands reach the same services as the HTTP API, through the same
factory functions: ``serve``, ``models list|verify|build-demo``, ``batch``,
``audit verify|export|reindex``, ``keys create|list|revoke``, ``models suspend|resume|suspensions``,
``fairness``, ``report``, ``incidents export|verify``.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click

from explain_service.access.commands import keys
from explain_service.audit.incident_commands import incidents
from explain_service.batch.command import batch
from explain_service.config import Settings
from explain_service.counts import count
from explain_service.fairness.command import fairness
from explain_service.fairness.report_command import report
from explain_service.logs import configure_app_logging
from explain_service.model_ref import parse_model_ref

log = logging.getLogger("explain_service.cli")  # not __name__: that is "__main__" under `python -m`


def _settings(models_dir: str | None = None) -> Settings:
    return Settings.from_env(models_dir=models_dir)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="explain-service")
def main() -> None:
    """Explanations for every prediction of a registered model."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option(
    "--workers", default=2, show_default=True, type=int, help="gunicorn worker processes (at most the cores)"
)
@click.option(
    "--threads",
    default=4,
    show_default=True,
    type=click.IntRange(min=1),
    help="request threads per worker (each runs native code on one thread)",
)
@click.option("--timeout", default=60, show_default=True, type=int, help="worker timeout in seconds")
@click.option(
    "--access-log/--no-access-log",
    default=False,
    show_default=True,
    envvar="EXPLAIN_ACCESS_LOG",
    help="one line per request on stdout",
)
@click.option("--certfile", default=None, type=click.Path(exists=True, dir_okay=False), help="serve TLS")
@click.option("--keyfile", default=None, type=click.Path(exists=True, dir_okay=False))
def serve(
    host: str,
    port: int,
    workers: int,
    threads: int,
    timeout: int,
    access_log: bool,
    certfile: str | None,
    keyfile: str | None,
) -> None:
    """Run the service under gunicorn (settings in explain_service/gunicorn_conf.py)."""
    from explain_service.access.commands import prepare_serve

    configure_app_logging()
    try:  # a bad setting is one line here, not a worker that fails to boot with a traceback
        settings = _settings()
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    os.environ["EXPLAIN_ACCESS_LOG"] = "1" if access_log else "0"
    if bool(certfile) != bool(keyfile):
        raise click.ClickException("--certfile and --keyfile go together")
    if settings.request_deadline_seconds >= timeout:
        log.warning(
            "EXPLAIN_REQUEST_DEADLINE_SECONDS (%g) is not below the worker timeout (%d): a slow request "
            "will be killed with its worker instead of answered 503",
            settings.request_deadline_seconds,
            timeout,
        )
    _prepare_audit_store(settings)
    metrics_dir = Path(os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", "var/prometheus"))
    try:
        for directory in (Path(settings.plots_dir), Path("var")):
            directory.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
    except OSError as exc:
        raise click.ClickException(f"cannot create {exc.filename}: {exc.strerror}") from None
    gunicorn = Path(sys.executable).with_name("gunicorn")
    args = [
        str(gunicorn),
        "--bind",
        f"{host}:{port}",
        "--workers",
        str(workers),
        "--threads",
        str(threads),
        "--timeout",
        str(timeout),
        "--graceful-timeout",
        "20",
        "--config",
        "python:explain_service.gunicorn_conf",
        "explain_service.app:create_app()",
    ]
    scheme = "https" if certfile else "http"
    if certfile and keyfile:
        args[-1:-1] = ["--certfile", certfile, "--keyfile", keyfile]
    prepare_serve(settings, host, port, scheme)
    log.info(
        "explain-service on %s://%s:%d (%d workers x %d threads, models in %s)",
        scheme,
        host,
        port,
        workers,
        threads,
        settings.models_dir,
    )
    os.execv(args[0], args)


def _prepare_audit_store(settings: Settings) -> None:
    """Create the audit schema (and SQLite's WAL mode) once, before gunicorn forks its workers.

    A SQLite store that cannot be created or written (a directory that cannot be made, a read-only
    file) stops ``serve`` with exit status 2: it will not heal by itself. A PostgreSQL server that does
    not answer yet only warns; ``/readyz`` reports it until it does.
    """
    from explain_service.access.commands import StoreUnusable
    from explain_service.audit.errors import AuditError
    from explain_service.audit.store import AuditStore

    with AuditStore(settings.database_url, durability=settings.audit_durability) as store:  # type: ignore[arg-type]
        try:
            store.check_writable()
        except AuditError as exc:
            detail = getattr(exc, "detail", "") or str(exc)
            if store.backend == "sqlite":
                raise StoreUnusable(f"the audit store cannot be used: {detail}") from None
            log.warning("the audit store does not answer yet (%s); /readyz will say so", detail)


@main.group()
def models() -> None:
    """Registered models."""


@models.command("list")
@click.option("--models-dir", default=None, help="default: $EXPLAIN_MODELS_DIR or models/")
def models_list(models_dir: str | None) -> None:
    """List registered models and versions."""
    from explain_service.registry.store import list_names, list_versions, read_manifest

    root = Path(_settings(models_dir).models_dir)
    names = list_names(root)
    if not names:
        click.echo(f"no models under {root}")
        return
    for name in names:
        for version in list_versions(root, name):
            m = read_manifest(root / name / version)
            click.echo(f"{name}@{version}\t{m.task}\t{m.estimator.cls}\t{m.sha256[:12]}\t{m.description}")


@models.command("verify")
@click.argument("model", required=False)
@click.option("--models-dir", default=None)
def models_verify(model: str | None, models_dir: str | None) -> None:
    """Check every file hash, load each model and predict on its background rows.

    MODEL is NAME or NAME@VERSION (default: all). Exits 1 naming each failure.
    """
    from explain_service.errors import ServiceError
    from explain_service.registry.store import list_names, list_versions, load_version_dir

    root = Path(_settings(models_dir).models_dir)
    targets: list[tuple[str, str]] = []
    if model:
        name, _, version = model.partition("@")
        versions = [version] if version else list_versions(root, name)
        if not versions or (version and version not in list_versions(root, name)):
            raise click.ClickException(f"no model {model} under {root}")
        targets = [(name, v) for v in versions]
    else:
        targets = [(n, v) for n in list_names(root) for v in list_versions(root, n)]
    failures = 0
    for name, version in targets:
        try:
            loaded = load_version_dir(root / name / version)
            rows = loaded.background.iloc[:50]
            (loaded.predict_proba if loaded.is_classifier else loaded.predict_value)(rows)
        except ServiceError as exc:
            failures += 1
            click.echo(f"FAIL {name}@{version}: {exc.message}", err=True)
        except Exception as exc:
            failures += 1
            click.echo(f"FAIL {name}@{version}: {type(exc).__name__}: {exc}", err=True)
        else:
            click.echo(
                f"ok   {name}@{version} {loaded.sha256[:12]} ({loaded.family} path, {loaded.transform_path} transform)"
            )
    if failures:
        sys.exit(1)


@models.command("build-demo")
@click.option("--models-dir", default=None)
@click.option("--only", multiple=True, help="build only these demo models")
def models_build_demo(models_dir: str | None, only: tuple[str, ...]) -> None:
    """Register the demo models that are missing (data ships with installed packages)."""
    from explain_service.registry.demo import DEMO_MODELS, build_demo

    root = Path(_settings(models_dir).models_dir)
    unknown = [o for o in only if o not in DEMO_MODELS]
    if unknown:
        raise click.ClickException(
            f"unknown demo model(s): {', '.join(unknown)}; known: {', '.join(DEMO_MODELS)}"
        )
    built = build_demo(root, only=list(only) or None)
    click.echo(f"built {', '.join(built)}" if built else f"demo models already present under {root}")


def _model_target(model: str, models_dir: str | None) -> tuple[str, str | None]:
    """``NAME`` or ``NAME@VERSION`` (:mod:`.model_ref`), checked against the registry."""
    from explain_service.registry.store import list_versions

    name, version = parse_model_ref(model, "MODEL")
    root = Path(_settings(models_dir).models_dir)
    versions = list_versions(root, name)
    if not versions or (version is not None and version not in versions):
        raise click.ClickException(f"no model {model} under {root}")
    return name, version


def _suspensions(database_url: str | None) -> Any:
    from explain_service.audit.store import AuditStore
    from explain_service.audit.suspensions import Suspensions

    return Suspensions(AuditStore(database_url or Settings.from_env().database_url))


@models.command("suspend")
@click.argument("model")
@click.option(
    "--reason", required=True, help="shown to every caller in the 503 answer; kept in the audit trail"
)
@click.option("--models-dir", default=None)
@click.option(
    "--database-url", default=None, help="default: $EXPLAIN_DATABASE_URL or sqlite:///var/audit.sqlite3"
)
def models_suspend(model: str, reason: str, models_dir: str | None, database_url: str | None) -> None:
    """Stop MODEL (NAME, every version, or NAME@VERSION): :predict and :explain answer 503 within 2 s."""
    from explain_service.access.commands import operator
    from explain_service.audit.suspensions import SuspensionError

    name, version = _model_target(model, models_dir)
    try:
        found = _suspensions(database_url).suspend(name, version, reason, by=operator())
    except SuspensionError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"suspended {model} ({found.scope}) by {found.by}: {found.reason}; record {found.record_id}")


@models.command("resume")
@click.argument("model")
@click.option("--reason", default="", help="kept in the audit trail")
@click.option("--models-dir", default=None)
@click.option(
    "--database-url", default=None, help="default: $EXPLAIN_DATABASE_URL or sqlite:///var/audit.sqlite3"
)
def models_resume(model: str, reason: str, models_dir: str | None, database_url: str | None) -> None:
    """Lift the suspension of MODEL (NAME: the whole-model one; NAME@VERSION: that version's own)."""
    from explain_service.access.commands import operator
    from explain_service.audit.suspensions import SuspensionError

    name, version = _model_target(model, models_dir)
    try:
        _suspensions(database_url).resume(name, version, by=operator(), reason=reason)
    except SuspensionError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"resumed {model}")


@models.command("suspensions")
@click.argument("name")
@click.option(
    "--database-url", default=None, help="default: $EXPLAIN_DATABASE_URL or sqlite:///var/audit.sqlite3"
)
def models_suspensions(name: str, database_url: str | None) -> None:
    """List the suspensions of model NAME in force."""
    found = _suspensions(database_url).of_model(name)
    if not found:
        click.echo(f"{name}: not suspended")
    for s in found:
        where = name if s.version is None else f"{name}@{s.version}"
        click.echo(f"{where}\t{s.scope}\tsince {s.since}\tby {s.by}\t{s.reason}")


@main.group()
def audit() -> None:
    """The tamper-evident audit trail."""


def _store(database_url: str | None) -> Any:
    """The audit store to read: never created, migrated or written by a read command."""
    from sqlalchemy.exc import ArgumentError

    from explain_service.audit.store import AuditStore

    try:
        return AuditStore(database_url or Settings.from_env().database_url, create=False)
    except (ArgumentError, ValueError) as exc:
        _cannot_read(exc)


def _cannot_read(exc: Exception) -> NoReturn:
    """Exit 2: the store could not be read, so nothing was checked."""
    detail = getattr(exc, "detail", "")
    click.echo(f"error: {exc}" + (f" ({detail})" if detail else ""), err=True)
    sys.exit(2)


def _hex(length: int, what: str) -> Callable[[click.Context, click.Parameter, str | None], str | None]:
    def check(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(f"[0-9a-f]{{{length}}}", value):
            raise click.BadParameter(f"{what} is {length} lowercase hex characters, not {value!r}")
        return value

    return check


def _trailer(path: str) -> dict[str, Any]:
    """The trailer of an export file (its last line)."""
    import orjson

    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        handle.seek(max(0, handle.tell() - 4096))
        lines = handle.read().splitlines()
    try:
        trailer = orjson.loads(lines[-1])["trailer"] if lines else None
    except (orjson.JSONDecodeError, KeyError, TypeError):
        trailer = None
    if not isinstance(trailer, dict) or not isinstance(trailer.get("head_hash"), str):
        raise click.BadParameter(f"{path} does not end in an export trailer", param_hint="--previous-export")
    return trailer


@audit.command("verify")
@click.option(
    "--database-url", default=None, help="default: $EXPLAIN_DATABASE_URL or sqlite:///var/audit.sqlite3"
)
@click.option(
    "--expected-head",
    default=None,
    callback=_hex(64, "a head hash"),
    help="head hash kept elsewhere (e.g. from an export): also catches deleted newest records",
)
@click.option(
    "--expected-genesis",
    default=None,
    callback=_hex(32, "a chain id"),
    help="chain id kept elsewhere (e.g. from an export): also catches a store that started afresh",
)
@click.option(
    "--previous-export",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="an earlier export: its trailer's head and chain id are expected",
)
def audit_verify(
    database_url: str | None,
    expected_head: str | None,
    expected_genesis: str | None,
    previous_export: str | None,
) -> None:
    """Walk the hash chain from its genesis.

    Exit 0 when it verifies, 1 naming the first record that was edited, deleted, reordered or inserted
    (or a chain that restarted, or an expected head it does not hold), 2 when the store cannot be read.
    """
    from explain_service.audit.store import AuditError

    if previous_export is not None:
        trailer = _trailer(previous_export)
        expected_head = expected_head or trailer["head_hash"]
        genesis = trailer.get("genesis")
        if expected_genesis is None and isinstance(genesis, dict):
            expected_genesis = genesis.get("chain_id")
    try:
        report = _store(database_url).verify(expected_head=expected_head, expected_genesis=expected_genesis)
    except AuditError as exc:
        _cannot_read(exc)
    chain = f"chain {report.chain_id}" if report.chain_id else "a chain from before genesis records"
    if report.ok:
        click.echo(
            f"ok: {count(report.checked, 'record')}, head {report.head_hash} (seq {report.head_seq}), {chain}"
        )
        return
    if report.reason == "head_not_found":
        click.echo(f"NOT VERIFIED: the expected head {expected_head} is not in {chain}", err=True)
        click.echo(
            f"up to it, {count(report.checked, 'record')} verified, head {report.head_hash} (seq {report.head_seq}); "
            "either records after it were deleted, or the expected head was mistyped or is of another chain",
            err=True,
        )
        sys.exit(1)
    if report.reason == "restarted":
        click.echo(f"RESTARTED: {report.detail}", err=True)
        sys.exit(1)
    click.echo(
        f"BROKEN at seq {report.first_bad_seq} (record {report.first_bad_id or 'missing'}): {report.reason}"
        + (f" - {report.detail}" if report.detail else ""),
        err=True,
    )
    click.echo(
        f"{count(report.checked, 'record')} before it verified; last good head {report.head_hash}", err=True
    )
    sys.exit(1)


@audit.command("export")
@click.option("--database-url", default=None)
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, writable=True), default="-", show_default=True
)
def audit_export(database_url: str | None, output: str) -> None:
    """Write every record as JSON Lines, with a trailer holding the head hash and the chain's genesis.

    Exit 2, writing nothing, when the store cannot be read.
    """
    from explain_service.audit.store import AuditError

    store = _store(database_url)
    try:
        genesis = store.genesis()  # opens the store before an output file is made
        if output == "-":
            head = store.export(sys.stdout.buffer)
            sys.stdout.buffer.flush()
        else:
            with open(output, "wb") as fh:
                head = store.export(fh)
    except AuditError as exc:
        _cannot_read(exc)
    chain = f", chain {genesis.chain_id}" if genesis is not None else ""
    click.echo(f"head {head}{chain}", err=True)


@audit.command("reindex")
@click.option("--database-url", default=None)
@click.option("--rebuild", is_flag=True, help="empty the index first and project the whole chain again")
def audit_reindex(database_url: str | None, rebuild: bool) -> None:
    """Bring the reviewers' search index up to the head of the chain (it is derived; the chain is the evidence).

    The other derived tables (incidents, live disparity counts, report aggregates) are brought up too.
    """
    from explain_service.app import derived_tables
    from explain_service.audit.projections import TrailIndex
    from explain_service.audit.store import AuditError, AuditStore
    from explain_service.audit.tally import Tally

    settings = Settings.from_env()
    store = AuditStore(database_url or settings.database_url)
    index = TrailIndex(store)
    tally = Tally(store, derived_tables(settings.models_dir))
    try:
        if rebuild:
            read = index.rebuild()
            tally.rebuild()
        else:
            read = index.catch_up()
            tally.catch_up(force=True, max_records=None)
    except AuditError as exc:
        _cannot_read(exc)
    click.echo(f"indexed {count(read, 'record')}")


main.add_command(batch)
main.add_command(keys)
main.add_command(incidents)
main.add_command(fairness)
main.add_command(report)


if __name__ == "__main__":
    main()
