"""``/docs``: the OpenAPI document rendered as a self-contained HTML page (no external assets)."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from flask import Flask, current_app, render_template_string

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ spec.info.title }} API</title>
<style>
body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#1b1b1b}
h2{border-bottom:1px solid #ccc;padding-bottom:.3rem}code,pre{background:#f4f4f4;padding:.1rem .3rem}
.op{margin:1rem 0;padding:.6rem 1rem;border-left:4px solid #4a7;background:#fafafa}
.m{font-weight:bold;text-transform:uppercase;margin-right:.5rem}pre{overflow:auto;padding:.6rem}
</style></head><body>
<h1>{{ spec.info.title }} <small>{{ spec.info.version }}</small></h1>
<p>Machine-readable document: <a href="/openapi.json">/openapi.json</a>.
Errors always have the shape <code>{"code", "status", "message", "errors": {field: [messages]}}</code>.</p>
{% for path, ops in spec.paths.items() %}{% for method, op in ops.items() if method in verbs %}
<div class="op"><span class="m">{{ method }}</span><code>{{ path }}</code>
<p>{{ op.summary or "" }}{% if op.description %} {{ op.description }}{% endif %}</p>
{% if op.requestBody %}<details><summary>Request body</summary><pre>{{ body(op.requestBody) }}</pre></details>{% endif %}
<p>Responses: {% for code in op.responses %}<code>{{ code }}</code> {% endfor %}</p></div>
{% endfor %}{% endfor %}
<h2>Schemas</h2>{% for name, schema in spec.components.schemas.items() %}
<details><summary>{{ name }}</summary><pre>{{ dump(schema) }}</pre></details>{% endfor %}
</body></html>"""

# The page's one inline stylesheet, allowed by its hash; scripts stay forbidden.
_STYLE = PAGE.split("<style>", 1)[1].split("</style>", 1)[0]
CSP = (
    "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
    f"style-src 'sha256-{base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()}'"
)


def init_app(app: Flask) -> None:
    @app.get("/docs")
    def docs() -> Any:
        """Human-readable API reference."""
        import json

        spec = current_app.extensions["explain_api"].spec.to_dict()
        page = render_template_string(
            PAGE,
            spec=spec,
            verbs=("get", "post", "put", "delete", "patch"),
            dump=lambda s: json.dumps(s, indent=2),
            body=lambda b: json.dumps(b.get("content", {}), indent=2),
        )
        return page, 200, {"Content-Security-Policy": CSP}
