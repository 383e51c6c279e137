"""Reading registered models back: list, verify, load, and serve them.

``load_version_dir`` verifies every file's sha256 against the manifest before a
byte is deserialized. :class:`ModelRegistry` keeps the loaded versions of one
models directory in memory for a serving process; a version that fails is a
value (:class:`~explain_service.registry.watch.BrokenVersion`), not a crash, and
loaded versions are re-checked against their files on a timer.
"""

from __future__ import annotations

import io
import logging
import os
import threading
from pathlib import Path
from typing import Any

import pandas as pd

from explain_service import metrics
from explain_service.errors import ArtifactRefused, IntegrityError, ModelNotFound, ModelUnavailable
from explain_service.registry import artifacts
from explain_service.registry.manifest import (
    MANIFEST_NAME,
    NAME_RE,
    VERSION_RE,
    ArtifactRef,
    Manifest,
    version_key,
)
from explain_service.registry.model import LoadedModel
from explain_service.registry.schema import FeatureSchema
from explain_service.registry.watch import BrokenVersion, Verdicts, VersionFiles, directory_stamp, file_sha256

log = logging.getLogger(__name__)


def _deserialize(ref: ArtifactRef, data: bytes, where: str) -> Any:
    if ref.format == "skops":
        return artifacts.load_skops(data, where=where)
    if ref.format == "xgboost-ubj":
        return artifacts.load_xgboost(data, ref.cls, where=where)
    raise ArtifactRefused(
        where, f"unknown artifact format {ref.format!r} (accepted: {', '.join(artifacts.FORMATS)})"
    )


def read_background(data: bytes, schema: FeatureSchema) -> pd.DataFrame:
    """Parse background CSV bytes with the dtypes of ``schema`` (categories stay strings)."""
    dtypes = {f.name: (str if f.kind == "categorical" else None) for f in schema.features}
    frame = pd.read_csv(
        io.BytesIO(data),
        dtype={k: v for k, v in dtypes.items() if v is not None},
        keep_default_na=False,
        # Only an empty cell of a feature that takes missing values is missing ("NA" is a category).
        na_values={f.name: [""] for f in schema.features if f.missing},
        # The file holds each float's shortest round-trip text; pandas' default parser can land one
        # ulp away, enough to move a row across a tree's split threshold.
        float_precision="round_trip",
    )
    if list(frame.columns) != schema.names:
        raise ValueError("background columns do not match the feature schema")
    return schema.coerce(frame)


def list_names(models_dir: Path) -> list[str]:
    """Registered model names."""
    if not models_dir.is_dir():
        return []
    return sorted(p.name for p in models_dir.iterdir() if p.is_dir() and NAME_RE.match(p.name))


def list_versions(models_dir: Path, name: str) -> list[str]:
    """Versions of ``name`` in ascending order."""
    base = models_dir / name
    if not NAME_RE.match(name) or not base.is_dir():
        return []
    found = [p.name for p in base.iterdir() if (p / MANIFEST_NAME).is_file() and VERSION_RE.match(p.name)]
    return sorted(found, key=version_key)


def read_manifest(version_dir: Path) -> Manifest:
    """Parse ``manifest.json`` of a version directory."""
    try:
        return Manifest.parse((version_dir / MANIFEST_NAME).read_bytes())
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise IntegrityError(str(version_dir / MANIFEST_NAME), f"unreadable manifest: {exc}") from None


def load_version_dir(version_dir: Path) -> LoadedModel:
    """Verify every file's hash, then deserialize the model of one version directory."""
    for entry in version_dir.iterdir():
        if entry.name.lower().endswith(artifacts.PICKLE_SUFFIXES):
            raise ArtifactRefused(str(entry), "pickle-family files are never loaded; re-register the model")
    manifest = read_manifest(version_dir)
    expected = dict(manifest.files)
    needed = [manifest.estimator.file, manifest.background_file]
    if manifest.preprocessor is not None:
        needed.append(manifest.preprocessor.file)
    for fname in needed:
        if fname not in expected or "/" in fname or fname.startswith("."):
            raise IntegrityError(str(version_dir / fname), "not listed in the manifest's files table")
    blobs = {f: artifacts.read_verified(version_dir / f, expected[f]) for f in needed}
    estimator = _deserialize(
        manifest.estimator, blobs[manifest.estimator.file], str(version_dir / manifest.estimator.file)
    )
    pre = None
    if manifest.preprocessor is not None:
        where = str(version_dir / manifest.preprocessor.file)
        pre = _deserialize(manifest.preprocessor, blobs[manifest.preprocessor.file], where)
    try:
        background = read_background(blobs[manifest.background_file], manifest.schema)
    except (ValueError, KeyError) as exc:
        raise IntegrityError(str(version_dir / manifest.background_file), str(exc)) from None
    return LoadedModel(manifest=manifest, background=background, estimator=estimator, preprocessor=pre)


def public_reason(exc: Exception, version_dir: Path) -> str:
    """Why loading ``version_dir`` failed, with file names relative to it (no absolute paths)."""
    path = getattr(exc, "path", None)
    reason = getattr(exc, "reason", None)
    if isinstance(path, str) and isinstance(reason, str):
        where = Path(path)
        try:
            shown = str(where.relative_to(version_dir))
        except ValueError:
            shown = where.name
        return f"{shown}: {reason}"
    text = f"{type(exc).__name__}: {exc}"
    for prefix in (str(version_dir.resolve()), str(version_dir)):
        text = text.replace(prefix + os.sep, "").replace(prefix, ".")
    return text


class ModelRegistry:
    """The models under one directory, loaded on first use and kept in memory.

    A version that fails verification or loading is kept as a :class:`BrokenVersion` value
    and answered with :class:`ModelUnavailable`; every other version keeps serving. The
    unpinned default of a model is its newest *healthy* version. Loaded versions are
    re-checked against their files at most every ``recheck_seconds`` (a ``stat`` per file,
    hashing only what changed); :meth:`check` hashes everything (readiness).
    """

    def __init__(
        self,
        models_dir: str | os.PathLike[str],
        *,
        threads: int | None = None,
        recheck_seconds: float = 30.0,
    ) -> None:
        self.models_dir = Path(models_dir)
        self.threads = threads
        self._loaded: dict[tuple[str, str], LoadedModel] = {}
        self._verdicts = Verdicts(recheck_seconds)
        self._versions: dict[str, tuple[int, list[str]]] = {}
        self._lock = threading.RLock()

    def names(self) -> list[str]:
        return list_names(self.models_dir)

    def versions(self, name: str) -> list[str]:
        """Versions of ``name``, re-listed only when its directory changed (a new version appeared)."""
        if not NAME_RE.match(name):
            return []
        try:
            stamp = (self.models_dir / name).stat().st_mtime_ns
        except (OSError, ValueError):
            return []
        known = self._versions.get(name)
        if known is not None and known[0] == stamp:
            return known[1]
        versions = list_versions(self.models_dir, name)
        self._versions[name] = (stamp, versions)
        return versions

    def default_version(self, name: str) -> str:
        """The newest version of ``name`` that loads and verifies."""
        versions = self.versions(name)
        if not versions:
            raise ModelNotFound(name)
        for version in reversed(versions):
            if isinstance(self._resolve(name, version), LoadedModel):
                return version
        newest = self._resolve(name, versions[-1])
        assert isinstance(newest, BrokenVersion)
        raise ModelUnavailable(
            name, newest.version, f"no version of this model can be served; {newest.reason}"
        )

    def get(self, name: str, version: str | None = None) -> LoadedModel:
        """The loaded model; the newest healthy version when ``version`` is None.

        Raises
        ------
        ModelNotFound
            No such model or version.
        ModelUnavailable
            The version is registered but failed verification or loading.
        """
        version = version if version is not None else self.default_version(name)
        found = self._resolve(name, version)
        if isinstance(found, BrokenVersion):
            raise ModelUnavailable(name, version, found.reason)
        return found

    def status(self, name: str) -> list[dict[str, str]]:
        """``{"version", "status"[, "reason"]}`` for every version of ``name``, oldest first."""
        out = []
        for version in self.versions(name):
            found = self._resolve(name, version)
            entry = {"version": version, "status": "available"}
            if isinstance(found, BrokenVersion):
                entry.update(status="unavailable", reason=found.reason)
            out.append(entry)
        return out

    def load_all(self) -> list[LoadedModel]:
        """Load every registered version; the ones that fail are kept in :meth:`unavailable`."""
        found = [self._resolve(n, v) for n in self.names() for v in self.versions(n)]
        return [m for m in found if isinstance(m, LoadedModel)]

    def unavailable(self) -> list[BrokenVersion]:
        """Registered versions that cannot be served, by name and version."""
        listed = {(n, v) for n in self.names() for v in self.versions(n)}
        return [b for b in self._verdicts.all_broken() if (b.name, b.version) in listed]

    def check(self) -> list[BrokenVersion]:
        """Verify every version (full hashes at most every ``recheck_seconds``); the broken ones."""
        for name in self.names():
            for version in self.versions(name):
                self._resolve(name, version, full=True)
        return self.unavailable()

    # -- one version ---------------------------------------------------------------------------
    def _resolve(self, name: str, version: str, *, full: bool = False) -> LoadedModel | BrokenVersion:
        key = (name, version)
        model = self._loaded.get(key)
        if model is not None and not self._verdicts.due(key, full=full):
            return model
        directory = self.models_dir / name / version
        with self._lock:
            if version not in self.versions(name):
                self._loaded.pop(key, None)
                self._verdicts.forget(key)
                raise ModelNotFound(name, version)
            problem = self._verdicts.recheck(key, full=full)
            if problem is not None:
                log.error("model %s version %s changed on disk in %s: %s", name, version, directory, problem)
                metrics.model_load_failed(name)
                self._loaded.pop(key, None)
                return self._verdicts.mark_broken(key, directory, f"changed on disk since loading; {problem}")
            model = self._loaded.get(key)
            if model is not None:
                return model
            broken = self._verdicts.broken(key, directory)
            if broken is not None:
                return broken
            return self._load(key, directory)

    def _load(self, key: tuple[str, str], directory: Path) -> LoadedModel | BrokenVersion:
        stamp = directory_stamp(directory)
        try:
            model = load_version_dir(directory)
            if (model.name, model.version) != key:
                raise IntegrityError(
                    str(directory / MANIFEST_NAME),
                    f"the manifest names {model.name} version {model.version}, not its directory's",
                )
            files = VersionFiles(directory, _verified_hashes(model, directory))
        except Exception as exc:  # any failure makes this version unavailable, never the server
            log.error("model %s version %s cannot be loaded from %s: %s", *key, directory, exc)
            metrics.model_load_failed(key[0])
            return self._verdicts.mark_broken(key, directory, public_reason(exc, directory), stamp)
        if self.threads is not None:
            model.set_threads(self.threads)
        self._loaded[key] = model
        self._verdicts.verified(key, files)
        return model


def _verified_hashes(model: LoadedModel, directory: Path) -> dict[str, str]:
    """The hashes a loaded version's files had: the manifest's table, and the manifest itself."""
    m = model.manifest
    needed = [m.estimator.file, m.background_file] + ([m.preprocessor.file] if m.preprocessor else [])
    hashes = {f: m.files[f] for f in needed}
    hashes[MANIFEST_NAME] = file_sha256(directory / MANIFEST_NAME)
    return hashes
