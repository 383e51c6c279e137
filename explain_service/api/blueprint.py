"""The API's routing: a strict JSON body reader for blueprints and a URL map that never redirects.

* The body must be declared JSON (``Content-Type: application/json``), else 415.
* A body longer than ``MAX_CONTENT_LENGTH`` is refused with 413 also when it arrives chunked,
  without a ``Content-Length``: werkzeug stops reading such a stream at the limit and would hand
  over the truncated prefix, so one more byte is read to tell "exactly the limit" from "more".
* Parsing is :func:`explain_service.jsonio.loads_body`: no NaN/Infinity, no repeated keys, no
  RecursionError on deep nesting; numbers too large for a float reach validation by name.
"""

from __future__ import annotations

from typing import Any

import flask
import flask_smorest
from webargs import core
from webargs.flaskparser import FlaskParser, is_json_request
from werkzeug.routing import BaseConverter

from explain_service.errors import BodyTooLarge, UnsupportedMediaType
from explain_service.jsonio import loads_body

JSON_TYPE = "application/json"


def read_body(req: flask.Request) -> bytes:
    """The whole request body, or :class:`BodyTooLarge` when it exceeds the app's limit."""
    data = req.get_data(cache=True)
    limit = req.max_content_length
    # A chunked body's limited stream ends at the limit; the server's own stream says if more was sent.
    if (
        limit is not None
        and req.content_length is None
        and len(data) >= limit
        and req.environ["wsgi.input"].read(1)
    ):
        raise BodyTooLarge(limit)
    return data


class StrictJsonParser(FlaskParser):
    def _raw_load_json(self, req: flask.Request) -> Any:
        if not is_json_request(req):
            raise UnsupportedMediaType(JSON_TYPE, req.mimetype or None)
        data = read_body(req)
        if not data:
            return core.missing
        return loads_body(data)


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
