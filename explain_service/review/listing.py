"""The list page's query string: parsed into the trail index's :class:`Filters`, and back into links.

Query parameters (all optional; repeated ``status`` match any, repeated ``flag`` must all be raised)::

    model, version, from (YYYY-MM-DD, inclusive), to (YYYY-MM-DD, inclusive), label, status, flag,
    caller, reference, order (newest | oldest), after (a seq from the previous page), n (rows shown so far)

A malformed value is reported on the page next to its field (422), never a 5xx.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from urllib.parse import urlencode

from werkzeug.datastructures import MultiDict

from explain_service.audit.reviews import STATUSES
from explain_service.audit.search import Filters
from explain_service.errors import ValidationFailed
from explain_service.quality import QUALITY_FLAGS

PAGE_SIZE = 50
MAX_TEXT = 200
ORDERS = {"newest": "desc", "oldest": "asc"}
TEXT_FIELDS = ("model", "version", "label", "caller", "reference")


@dataclass
class ListQuery:
    """What the list was asked for: the form's values, the filters, the page position, any errors."""

    values: dict[str, str] = field(default_factory=dict)
    statuses: list[str] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    order: str = "newest"
    after: int | None = None
    shown: int = 0
    errors: dict[str, list[str]] = field(default_factory=dict)
    filters: Filters | None = None

    def link(self, **changes: Any) -> str:
        """The query string of this list with ``changes`` (None removes a parameter)."""
        params: list[tuple[str, str]] = [(k, v) for k, v in self.values.items() if v]
        params += [("status", s) for s in self.statuses] + [("flag", f) for f in self.flags]
        if self.order != "newest":
            params.append(("order", self.order))
        extra = {k: v for k, v in changes.items() if v is not None}
        params += [(k, str(v)) for k, v in extra.items()]
        return "?" + urlencode(params) if params else "?"


def parse(args: MultiDict[str, str]) -> ListQuery:
    """The list query of ``args``; ``filters`` is None when ``errors`` says what is wrong."""
    query = ListQuery()
    errors = query.errors
    for name in (*TEXT_FIELDS, "from", "to"):
        value = args.get(name, "").strip()
        if len(value) > MAX_TEXT:
            errors[name] = [f"At most {MAX_TEXT} characters."]
            value = value[:MAX_TEXT]
        query.values[name] = value
    query.statuses = [s for s in args.getlist("status") if s]
    query.flags = [f for f in args.getlist("flag") if f]
    bad = [s for s in query.statuses if s not in STATUSES]
    if bad:
        errors["status"] = [f"Unknown status {bad[0]!r}."]
    bad = [f for f in query.flags if f not in QUALITY_FLAGS]
    if bad:
        errors["flag"] = [f"Unknown quality flag {bad[0]!r}."]
    query.order = args.get("order", "newest")
    if query.order not in ORDERS:
        errors["order"] = ["Must be newest or oldest."]
        query.order = "newest"
    query.after = _integer(args.get("after"), "after", errors)
    query.shown = _integer(args.get("n"), "n", errors) or 0
    since = _day(query.values["from"], "from", errors)
    until = _day(query.values["to"], "to", errors)
    if errors:
        return query
    v = query.values
    try:
        query.filters = Filters(
            model_name=v["model"] or None,
            model_version=v["version"] or None,
            since=since,
            until=until + timedelta(days=1) if until is not None else None,
            label=v["label"] or None,
            statuses=tuple(query.statuses),
            flags=tuple(query.flags),
            caller=v["caller"] or None,
            reference=v["reference"] or None,
        )
    except ValidationFailed as exc:
        errors.update(exc.errors)
    return query


def _integer(raw: str | None, name: str, errors: dict[str, list[str]]) -> int | None:
    if raw is None or raw == "":
        return None
    if not raw.isdigit() or len(raw) > 18:
        errors[name] = ["Must be a whole number."]
        return None
    return int(raw)


def _day(raw: str, name: str, errors: dict[str, list[str]]) -> datetime | None:
    if not raw:
        return None
    try:
        return datetime.combine(date.fromisoformat(raw), time(0), tzinfo=UTC)
    except ValueError:
        errors[name] = ["Must be a date as YYYY-MM-DD."]
        return None
