"""Versions of the libraries in this process, for manifests, audit records and batch manifests."""

from __future__ import annotations

import platform
from importlib import metadata


def library_versions(dists: tuple[str, ...], *, python: bool = True) -> dict[str, str]:
    """``{"python": ..., dist: version}`` for each installed distribution in ``dists``."""
    out = {"python": platform.python_version()} if python else {}
    for dist in dists:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out
