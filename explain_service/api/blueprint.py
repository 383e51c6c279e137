"""A flask-smorest Blueprint whose JSON bodies are parsed strictly by orjson.

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
