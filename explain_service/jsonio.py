"""JSON in and out with orjson: strict parsing (no NaN/Infinity) and fast, stable output.

Request bodies go through :func:`loads_body`: orjson parses the common case; a body orjson refuses
only because a number overflows (``1e400``, an integer of thousands of digits) is parsed again by
the standard library with that number kept as an :class:`~explain_service.fields.OverflowNumber`,
so validation can name its field. Repeated keys in one object are refused by path: orjson keeps the
last silently, and a request must mean one thing.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import orjson
from flask import Response
from flask.json.provider import JSONProvider

from explain_service.errors import BadRequest
from explain_service.fields import OverflowNumber

DUMP_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
INVALID_JSON = "Invalid JSON body."


def loads_body(data: bytes) -> Any:
    """Parse a request body strictly; raise :class:`~explain_service.errors.BadRequest` naming the problem."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return _loads_exact(data)
    try:
        unsure = b"\\u" in data or _colons(value) != data.count(b":")
    except RecursionError:
        raise BadRequest(INVALID_JSON, {"_body": ["Nested too deeply."]}) from None
    if unsure:
        # Either a key repeats or escapes hide colons: the exact parser decides.
        _loads_exact(data)
    return value


def _colons(value: Any) -> int:
    """Keys plus colons inside strings: without escapes, the body's colon count iff no key repeats.

    Each key kept by the parser accounts for one separator colon; a repeated key drops one.
    """
    items: Iterable[Any]
    if isinstance(value, dict):
        count = len(value) + "".join(value).count(":")
        items = value.values()
    elif isinstance(value, list):
        count, items = 0, value
    else:
        return value.count(":") if isinstance(value, str) else 0
    for item in items:
        kind = type(item)
        if kind is str:
            count += item.count(":")
        elif kind is dict or kind is list:
            count += _colons(item)
    return count


class _Object(dict[str, Any]):
    """A parsed JSON object that remembers which of its keys were repeated."""

    repeated: tuple[str, ...] = ()


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) == len(pairs):
        return out
    marked = _Object(out)
    seen: set[str] = set()
    marked.repeated = tuple(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
    return marked


def _float(text: str) -> float | OverflowNumber:
    value = float(text)
    return value if value not in (float("inf"), float("-inf")) else OverflowNumber(text)


def _int(text: str) -> int | OverflowNumber:
    try:
        return int(text)
    except ValueError:  # more digits than int() converts
        return OverflowNumber(text)


def _constant(text: str) -> Any:
    raise ValueError(f"{text} is not JSON")


def _loads_exact(data: bytes) -> Any:
    try:
        value = json.loads(
            data.decode("utf-8"),
            object_pairs_hook=_object,
            parse_float=_float,
            parse_int=_int,
            parse_constant=_constant,
        )
        errors = _problems(value, "")
    except (ValueError, RecursionError):
        raise BadRequest(INVALID_JSON, {"_body": [INVALID_JSON]}) from None
    if errors:
        raise BadRequest(f"Invalid JSON body: repeated key {sorted(errors)[0]}", errors)
    return value


def _problems(value: Any, path: str) -> dict[str, list[str]]:
    """Repeated keys by dotted path; raises ValueError for text orjson would refuse (lone surrogates)."""
    out: dict[str, list[str]] = {}
    if isinstance(value, dict):
        for key in getattr(value, "repeated", ()):
            out[f"{path}.{key}" if path else key] = ["Repeated key in the JSON body."]
        for key, item in value.items():
            key.encode("utf-8")
            out.update(_problems(item, f"{path}.{key}" if path else key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            out.update(_problems(item, f"{path}.{i}" if path else str(i)))
    elif isinstance(value, str):
        value.encode("utf-8")
    return out


class OrjsonProvider(JSONProvider):
    """Flask JSON provider backed by orjson; invalid JSON (NaN, Infinity, bad UTF-8) raises."""

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        return orjson.dumps(obj, option=DUMP_OPTIONS).decode()

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return orjson.loads(s)

    def response(self, *args: Any, **kwargs: Any) -> Response:
        obj = args[0] if len(args) == 1 else (args or kwargs)
        return json_response(obj)


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON response serialized by orjson."""
    return Response(
        orjson.dumps(obj, option=DUMP_OPTIONS), status=status, mimetype="application/json", headers=headers
    )
