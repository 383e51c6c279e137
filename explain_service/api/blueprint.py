"""A flask-smorest Blueprint whose JSON bodies are parsed strictly by orjson.

The standard library parser accepts ``NaN``/``Infinity`` and fails with a
RecursionError on deeply nested input; orjson rejects both as invalid JSON,
which the parser turns into a 400.
"""

from __future__ import annotations

from typing import Any

import flask
import orjson
import flask_smorest
from webargs import core
from webargs.flaskparser import FlaskParser, is_json_request


class StrictJsonParser(FlaskParser):
    def _raw_load_json(self, req: flask.Request) -> Any:
        if not is_json_request(req):
            return core.missing
        return orjson.loads(req.get_data(cache=True))


class Blueprint(flask_smorest.Blueprint):
    ARGUMENTS_PARSER = StrictJsonParser()
