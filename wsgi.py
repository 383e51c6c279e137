"""The WSGI entry point: ``gunicorn wsgi:app``."""

from explain_service.app import create_app

app = create_app()
