"""The service with its audit recorder removed: only for measuring what the audit write costs."""

from __future__ import annotations

from flask import Flask

from explain_service.app import create_app as _create_app


def create_app() -> Flask:
    app = _create_app()
    app.extensions["explain"].service.recorder = None
    return app
