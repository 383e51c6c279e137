"""``explain-service incidents export|verify``: incidents as JSON Lines for an incident database."""

from __future__ import annotations

import sys
from typing import Any

import click

from explain_service import counts
from explain_service.config import Settings


@click.group()
def incidents() -> None:
    """Incidents opened by reviewers (audit-chain records)."""


@incidents.command("export")
@click.option("--database-url", default=None, help="default: $EXPLAIN_DATABASE_URL")
@click.option(
    "--models-dir", default=None, help="default: $EXPLAIN_MODELS_DIR (for which features to withhold)"
)
@click.option("--redact", is_flag=True, help="withhold the inputs of sensitive and personal features")
@click.option(
    "--redact-feature", multiple=True, help="withhold this feature too (repeatable; implies --redact)"
)
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, writable=True), default="-", show_default=True
)
def incidents_export(
    database_url: str | None,
    models_dir: str | None,
    redact: bool,
    redact_feature: tuple[str, ...],
    output: str,
) -> None:
    """Write every incident as a JSON line, then a trailer (format: explain_service.audit.incident_export).

    Each line keeps the incident's chain record whole, so its hash can be recomputed; inputs are opened
    (value and salt) or, under --redact, withheld. Check a file with `explain-service incidents verify`.
    """
    from explain_service.audit.incident_export import export_incidents, manifest_withheld
    from explain_service.audit.incidents import IncidentIndex
    from explain_service.audit.store import AuditError, AuditStore
    from explain_service.audit.tally import Tally

    settings = Settings.from_env(models_dir=models_dir, database_url=database_url)
    withheld = manifest_withheld(settings.models_dir, redact_feature) if redact or redact_feature else None
    try:
        store = AuditStore(settings.database_url, create=False)
        store.head()  # opens the store before an output file is made
        tally = Tally(store, [IncidentIndex()])
        if output == "-":
            count = export_incidents(store, tally, sys.stdout.buffer, withheld=withheld)
            sys.stdout.buffer.flush()
        else:
            with open(output, "wb") as fh:
                count = export_incidents(store, tally, fh, withheld=withheld)
    except AuditError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    click.echo(f"{counts.count(count, 'incident')}{' (redacted)' if withheld else ''}", err=True)


@incidents.command("verify")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
def incidents_verify(path: str) -> None:
    """Check an incidents export as its recipient can: chain hashes, opened values, nothing unaccounted.

    Exit 0 when it verifies, 1 naming each problem.
    """
    from explain_service.audit.incident_export import verify_incident_export

    with open(path, "rb") as fh:
        check = verify_incident_export(fh)
    for problem in check.problems:
        click.echo(f"FAIL {problem}", err=True)
    trailer: dict[str, Any] = check.trailer or {}
    if not check.ok:
        sys.exit(1)
    click.echo(
        f"ok: {counts.count(check.incidents, 'incident')} verified by chain hash; "
        f"{counts.count(check.opened, 'input')} opened, "
        f"{check.withheld} withheld; head {trailer.get('head_hash')} (seq {trailer.get('head_seq')})"
    )
