"""A compute deadline for the request being served, checked by the explainers that can run long.

The web layer opens a :func:`deadline_scope` around each request; model-agnostic SHAP, LIME and the
counterfactual search call :func:`check_deadline` between chunks of work and stop with
:class:`~explain_service.errors.DeadlineExceeded` once it has passed. Outside a scope (the batch job, the
command line, tests calling explainers directly) the check does nothing.

The deadline travels in a :class:`contextvars.ContextVar` rather than as an argument so that the
explainer extension point keeps its four-argument ``explain(model, rows, targets, options)``: options are
hashed into seeds and recorded for replay, and a deadline is neither. A context variable belongs to the
thread (or task) serving the request, so it is per request, not shared state.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from explain_service.errors import DeadlineExceeded


@dataclass(frozen=True)
class Deadline:
    """A point on the monotonic clock by which an answer must be ready."""

    seconds: float
    expires: float

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(seconds, time.monotonic() + seconds)

    def remaining(self) -> float:
        return self.expires - time.monotonic()

    def check(self) -> None:
        if time.monotonic() >= self.expires:
            raise DeadlineExceeded(self.seconds)


_current: ContextVar[Deadline | None] = ContextVar("explain_deadline", default=None)


def current_deadline() -> Deadline | None:
    return _current.get()


def check_deadline() -> None:
    """Raise :class:`DeadlineExceeded` if the current request's deadline has passed."""
    deadline = _current.get()
    if deadline is not None:
        deadline.check()


def remaining_seconds(default: float) -> float:
    """Seconds left before the current deadline, or ``default`` outside a scope."""
    deadline = _current.get()
    return default if deadline is None else max(deadline.remaining(), 0.0)


@contextmanager
def deadline_scope(seconds: float) -> Iterator[Deadline]:
    """Run the body under a deadline ``seconds`` from now."""
    deadline = Deadline.after(seconds)
    token = _current.set(deadline)
    try:
        yield deadline
    finally:
        _current.reset(token)


def start(seconds: float) -> object:
    """Open a deadline without a ``with`` block (request hooks); close it with :func:`finish`."""
    return _current.set(Deadline.after(seconds))


def finish(token: object) -> None:
    _current.reset(token)  # type: ignore[arg-type]
