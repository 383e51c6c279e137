"""The model registry: register, verify and load models without pickle."""

from __future__ import annotations

from explain_service.registry.manifest import Manifest
from explain_service.registry.model import LoadedModel
from explain_service.registry.schema import Constraint, Feature, FeatureSchema
from explain_service.registry.store import ModelRegistry, load_version_dir, register_model

__all__ = [
    "Constraint",
    "Feature",
    "FeatureSchema",
    "LoadedModel",
    "Manifest",
    "ModelRegistry",
    "load_version_dir",
    "register_model",
]
