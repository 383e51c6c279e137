"""A bare Flask JSON echo: the floor that any Flask service under gunicorn pays."""

from __future__ import annotations

from flask import Flask, jsonify, request


def create_app() -> Flask:
    app = Flask(__name__)

    @app.get("/healthz")
    def healthz():
        return {"status": "ok"}

    @app.post("/echo")
    def echo():
        return jsonify(request.get_json())

    return app
