"""The API's routing: a strict JSON parser for blueprints and a URL map that never redirects.

The standard library parser accepts ``NaN``/``Infinity`` and fails with a
RecursionError on deeply nested input; orjson rejects both as invalid JSON,
which the parser turns into a 400.
"""

from __future__ import annotations

import json
from typing import Any

import flask
import flask_smorest
import orjson
from webargs import core
from webargs.flaskparser import FlaskParser, is_json_request
from werkzeug.routing import BaseConverter


class StrictJsonParser(FlaskParser):
    def _raw_load_json(self, req: flask.Request) -> Any:
        if not is_json_request(req):
            return core.missing
        data = req.get_data(cache=True)
        if not data:
            return core.missing
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            # webargs treats an error with an empty ``doc`` as a missing body; this body is not empty.
            raise json.JSONDecodeError(str(exc), doc=repr(data[:64]), pos=0) from None


class Blueprint(flask_smorest.Blueprint):
    ARGUMENTS_PARSER = StrictJsonParser()


class SegmentConverter(BaseConverter):
    """A path segment without ``:``, which separates a resource from its verb (``name:explain``).

    No model name, version, record id or plot name holds a ``:``, so ``GET /v1/models/x:explain``
    reaches the ``:explain`` rule and answers 405 instead of looking up a model named ``x:explain``.
    """

    regex = "[^/:]+"


def configure_url_map(app: flask.Flask) -> None:
    """Routing that never redirects: a redirect's absolute URL would be built from the Host header.

    Doubled slashes and trailing slashes either match a rule as they are or answer 404; ``<var>``
    segments never hold ``:``. Call before any rule is added (rules copy the map's settings).
    """
    url_map = app.url_map
    url_map.merge_slashes = False
    url_map.strict_slashes = False
    url_map.redirect_defaults = False
    url_map.converters["default"] = SegmentConverter
