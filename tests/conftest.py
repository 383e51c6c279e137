"""Shared fixtures: demo models built once per run, an app and a client on them."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import create_engine, make_url

from explain_service.app import create_app
from explain_service.registry.demo import build_demo
from explain_service.registry.store import ModelRegistry
from tests._gunicorn import live_server  # noqa: F401  (a real `explain-service serve`, module scope)


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


# The suites written before access control test the API's behaviour, not its gate: their apps run with
# authentication, rate limits, the quota and the deadline off. tests/test_access*.py test those, on.
OPEN_ACCESS = {
    "auth": "off",
    "ratelimit_default": "",
    "counterfactual_daily_quota": 0,
    "request_deadline_seconds": 0,
}


def open_app(models_dir: Path, database_url: str, plots_dir: Path, **settings: Any) -> Flask:
    """An app with access open (:data:`OPEN_ACCESS`) whose models load on first use."""
    return create_app(
        {
            "models_dir": str(models_dir),
            "database_url": database_url,
            "plots_dir": str(plots_dir),
            "eager_load": False,
            **OPEN_ACCESS,
            **settings,
        }
    )


@pytest.fixture(scope="session")
def app(demo_models_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    var = tmp_path_factory.mktemp("var")
    return create_app(
        {
            "models_dir": str(demo_models_dir),
            "database_url": f"sqlite:///{var}/audit.sqlite3",
            "plots_dir": str(var / "plots"),
            "TESTING": True,
            **OPEN_ACCESS,
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


PG_ENV = "EXPLAIN_TEST_DATABASE_URL"


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'var' / 'audit.sqlite3'}"


@contextmanager
def throwaway_pg_schema(base: str, prefix: str) -> Iterator[str]:
    """A new PostgreSQL schema on ``base`` for the ``with`` block, dropped after; yields its URL.

    The URL sets ``search_path`` to the schema, so tests running side by side never share tables.
    """
    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
        url = make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        admin.dispose()


@pytest.fixture
def postgresql_url() -> Iterator[str]:
    base = os.environ.get(PG_ENV)
    if not base:
        pytest.skip(f"{PG_ENV} is not set")
    with throwaway_pg_schema(base, "audit_test") as url:
        yield url


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
    ]
)
def url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(f"{request.param}_url"))
