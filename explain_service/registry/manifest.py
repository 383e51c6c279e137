"""The manifest: a human-readable JSON file describing one model version.

``models/<name>/<version>/manifest.json`` records the task, class names, the
favourable class, the feature schema, counterfactual constraints, the sha256
of every other file in the directory, the library versions at save time, a
description and the rules that route an explanation to a human reviewer
(:mod:`.review_rules`; a manifest without them gets the defaults). The model's identity (``sha256`` in every answer) is the sha256 of
the canonical JSON of the ``files`` table, so it changes whenever any artifact
or the background sample changes.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

import orjson

from explain_service.registry.review_rules import ReviewRules
from explain_service.registry.schema import Constraint, Feature, FeatureSchema

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$")


@dataclass(frozen=True)
class ArtifactRef:
    """One stored artifact: its file, format and the Python class it holds."""

    file: str
    format: str  # "skops" | "xgboost-ubj"
    cls: str

    def to_dict(self) -> dict[str, str]:
        return {"file": self.file, "format": self.format, "class": self.cls}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArtifactRef:
        return cls(file=str(data["file"]), format=str(data["format"]), cls=str(data["class"]))


@dataclass(frozen=True)
class Manifest:
    """Everything the registry knows about one model version."""

    name: str
    version: str
    task: str
    class_names: tuple[str, ...]
    favorable: str | None
    schema: FeatureSchema
    estimator: ArtifactRef
    preprocessor: ArtifactRef | None
    background_file: str
    files: dict[str, str]
    libraries: dict[str, str]
    description: str = ""
    created_at: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    intended_use: str = ""
    owner: str = ""
    personal: tuple[str, ...] = ()

    @property
    def sensitive(self) -> dict[str, tuple[float, ...] | None]:
        """Sensitive features: bin edges for numeric ones, None for those grouped by value."""
        return self.schema.sensitive

    review_rules: ReviewRules = field(default_factory=ReviewRules)

    @property
    def sha256(self) -> str:
        """The model's identity: a hash over every artifact's hash."""
        return hashlib.sha256(orjson.dumps(self.files, option=orjson.OPT_SORT_KEYS)).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "created_at": self.created_at,
            "task": self.task,
            "class_names": list(self.class_names),
            "favorable": self.favorable,
            "features": [f.to_dict() for f in self.schema.features],
            "constraints": {k: c.to_dict() for k, c in self.schema.constraints.items()},
            "sensitive": sensitive_dict(self.schema.sensitive),
            "estimator": self.estimator.to_dict(),
            "preprocessor": self.preprocessor.to_dict() if self.preprocessor else None,
            "background": self.background_file,
            "files": dict(sorted(self.files.items())),
            "libraries": self.libraries,
            "review_rules": self.review_rules.to_dict(),
            **({"extra": self.extra} if self.extra else {}),
            # Written only when given, so manifests without them keep their bytes.
            **({"intended_use": self.intended_use} if self.intended_use else {}),
            **({"owner": self.owner} if self.owner else {}),
            **({"personal": list(self.personal)} if self.personal else {}),
        }

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict(), option=orjson.OPT_INDENT_2) + b"\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        if data.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"unsupported manifest format {data.get('format')!r}")
        features = tuple(Feature.from_dict(f) for f in data["features"])
        constraints = {k: Constraint.from_dict(v) for k, v in (data.get("constraints") or {}).items()}
        pre = data.get("preprocessor")
        return cls(
            name=str(data["name"]),
            version=str(data["version"]),
            task=str(data["task"]),
            class_names=tuple(str(c) for c in data.get("class_names") or ()),
            favorable=data.get("favorable"),
            schema=FeatureSchema(features, constraints, _parse_sensitive(data.get("sensitive"))),
            estimator=ArtifactRef.from_dict(data["estimator"]),
            preprocessor=ArtifactRef.from_dict(pre) if pre else None,
            background_file=str(data["background"]),
            files={str(k): str(v) for k, v in data["files"].items()},
            libraries={str(k): str(v) for k, v in (data.get("libraries") or {}).items()},
            description=str(data.get("description") or ""),
            created_at=str(data.get("created_at") or ""),
            extra=dict(data.get("extra") or {}),
            intended_use=str(data.get("intended_use") or ""),
            owner=str(data.get("owner") or ""),
            personal=tuple(str(f) for f in data.get("personal") or ()),
            review_rules=ReviewRules.from_dict(data.get("review_rules"), tuple(f.name for f in features)),
        )

    @classmethod
    def parse(cls, raw: bytes) -> Manifest:
        return cls.from_dict(orjson.loads(raw))


def sensitive_dict(sensitive: dict[str, tuple[float, ...] | None]) -> dict[str, list[float] | None]:
    """Sensitive features as JSON: ``{feature: [edges] or None}``."""
    return {k: (list(v) if v is not None else None) for k, v in sensitive.items()}


def _parse_sensitive(data: Any) -> dict[str, tuple[float, ...] | None]:
    return {str(k): (tuple(v) if v is not None else None) for k, v in (data or {}).items()}


def version_key(version: str) -> tuple[int, int, str]:
    """Sort key: numeric versions in numeric order, after them the rest by name."""
    return (0, int(version), "") if version.isdigit() else (1, 0, version)
