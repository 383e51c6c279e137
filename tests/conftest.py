"""Shared fixtures: demo models built once per run, an app and a client on them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from explain_service.app import create_app
from explain_service.registry.demo import build_demo
from explain_service.registry.store import ModelRegistry


@pytest.fixture(scope="session")
def demo_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All demo models, registered once for the whole run (read-only for tests)."""
    root = tmp_path_factory.mktemp("models")
    build_demo(root)
    return root


@pytest.fixture
def models_dir(demo_models_dir: Path, tmp_path: Path) -> Path:
    """A private, writable copy of the demo registry."""
    target = tmp_path / "models"
    shutil.copytree(demo_models_dir, target)
    return target


@pytest.fixture(scope="session")
def registry(demo_models_dir: Path) -> ModelRegistry:
    return ModelRegistry(demo_models_dir)


@pytest.fixture(scope="session")
def app(demo_models_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    var = tmp_path_factory.mktemp("var")
    return create_app(
        {
            "models_dir": str(demo_models_dir),
            "database_url": f"sqlite:///{var}/audit.sqlite3",
            "plots_dir": str(var / "plots"),
            "TESTING": True,
        }
    )


@pytest.fixture
def client(app):
    return app.test_client()


GERMAN_ROW = {
    "sex": "female",
    "job": 2,
    "housing": "own",
    "saving_accounts": "little",
    "checking_account": "little",
    "credit_amount": 5951,
    "duration": 48,
    "purpose": "radio/TV",
    "age": 22,
}


@pytest.fixture
def german_row() -> dict:
    return dict(GERMAN_ROW)
