"""``NAME[@VERSION]``: how every command names a registered model, parsed by one rule.

``german-credit`` is the newest version, ``german-credit@2`` that version. An empty name or an empty
version (``german-credit@``) is refused rather than guessed at: a trailing ``@`` is more likely a
version left out by mistake than a request for the newest.
"""

from __future__ import annotations

import click


def parse_model_ref(value: str, option: str = "--model") -> tuple[str, str | None]:
    """``"name@2"`` -> ``("name", "2")``, ``"name"`` -> ``("name", None)``.

    Raises :class:`click.BadParameter` naming ``option`` (exit status 2) for an empty name or version.
    """
    name, at, version = value.partition("@")
    if not name or (at and not version):
        raise click.BadParameter(f"expected NAME or NAME@VERSION, not {value!r}", param_hint=option)
    return name, version or None
