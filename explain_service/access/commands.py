"""``explain-service keys create|list|revoke`` and the first-start key of ``serve``."""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

import click

from explain_service.access.keys import ROLES, KeyAdminError, KeyStore
from explain_service.audit.errors import AuditError
from explain_service.config import Settings

LOOPBACK_NAMES = ("localhost", "ip6-localhost")
log = logging.getLogger("explain_service.cli")


def key_store(database_url: str | None = None) -> KeyStore:
    """The keys of ``database_url`` (default: the service's), recording changes in its audit trail."""
    return KeyStore(database_url or Settings.from_env().database_url)


class StoreUnusable(click.ClickException):
    """The database holding the keys cannot be used (exit status 2, like a usage error)."""

    exit_code = 2


@contextmanager
def store_errors() -> Iterator[None]:
    """Turn a key store that cannot be reached or written into one clear line and exit status 2."""
    try:
        yield
    except KeyAdminError as exc:
        raise click.ClickException(str(exc)) from None
    except AuditError as exc:
        detail = getattr(exc, "detail", "") or str(exc)
        raise StoreUnusable(f"the key store cannot be used: {detail}") from None


def operator() -> str:
    """Who ran the command, for the audit record: ``cli:<login>``."""
    try:
        login = os.getlogin()
    except OSError:
        login = os.environ.get("USER") or str(os.getuid())
    return f"cli:{login}"


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_DB = click.option(
    "--database-url", default=None, help="default: $EXPLAIN_DATABASE_URL or sqlite:///var/audit.sqlite3"
)


@click.group()
def keys() -> None:
    """API keys (stored as hashes next to the audit trail)."""


@keys.command("create")
@click.option("--role", type=click.Choice(ROLES), required=True)
@click.option("--name", required=True, help="unique; audit records name the key by it")
@_DB
def keys_create(role: str, name: str, database_url: str | None) -> None:
    """Create a key and print it once (the last word of the last line)."""
    with store_errors():
        key = key_store(database_url).create(name, role, by=operator())
    click.echo(f"created {role} key {name!r}; it is shown only now, keep it secret:")
    click.echo(key)


@keys.command("list")
@_DB
def keys_list(database_url: str | None) -> None:
    """Name, role, created, last used and revoked, oldest first."""
    with store_errors():
        found = key_store(database_url).list()
    if not found:
        click.echo("no keys")
        return
    click.echo("name\trole\tcreated\tlast used\trevoked")
    for k in found:
        click.echo(f"{k.name}\t{k.role}\t{k.created_at}\t{k.last_used_at or '-'}\t{k.revoked_at or '-'}")


@keys.command("revoke")
@click.argument("name")
@_DB
def keys_revoke(name: str, database_url: str | None) -> None:
    """Revoke a key; every worker refuses it within two seconds."""
    with store_errors():
        revoked = key_store(database_url).revoke(name, by=operator())
    click.echo(f"revoked {revoked.name} at {revoked.revoked_at}")


def prepare_serve(settings: Settings, host: str, port: int, scheme: str) -> None:
    """Refuse an open service off loopback; on a first start with no keys, make and print an admin key."""
    if settings.auth == "off":
        if not is_loopback(host):
            raise click.ClickException(
                f"EXPLAIN_AUTH=off serves everyone who can reach {host}; it is allowed on a loopback "
                "address only (127.0.0.1, ::1)"
            )
        log.warning("EXPLAIN_AUTH=off: no key is checked (allowed on loopback only)")
        return
    store = key_store(settings.database_url)
    try:
        with store_errors():
            if store.list():
                return
            key = store.create("admin", "admin", by="serve:first-start")
    finally:
        store.close()
    base = f"{scheme}://{'localhost' if is_loopback(host) else host}:{port}"
    click.echo("No API keys yet: created the admin key 'admin'. It is shown only now; keep it secret.")
    click.echo("More keys: explain-service keys create --role explain|review|admin --name NAME")
    click.echo(
        f'  export EXPLAIN_KEY={key}\n  curl -s -H "Authorization: Bearer $EXPLAIN_KEY" {base}/v1/models'
    )
