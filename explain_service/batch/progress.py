"""Progress of a batch job on stderr.

On a terminal: a tqdm bar with rows/s and ETA. Otherwise (logs, CI, pipes):
one plain line every ``interval`` seconds and at the end, each behind a UTC
timestamp, e.g.::

    2026-03-01T09:15:02Z batch: 40,000/200,000 rows (20.0%), 9,812 rows/s, ETA 0:00:16

Rows/s and ETA count the rows computed by this run only (chunks taken over
from an interrupted run are counted as done from the start).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

from explain_service.counts import count


@dataclass
class Summary:
    """What a finished job reports."""

    rows: int
    computed_rows: int
    written: int
    rejected: int
    chunks: int
    resumed_chunks: int
    seconds: float
    output: str
    rejected_path: str
    engine: str

    @property
    def rows_per_second(self) -> float:
        """Rows computed by this run per second."""
        return self.computed_rows / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        resumed = f", {self.resumed_chunks} taken over from an earlier run" if self.resumed_chunks else ""
        return (
            f"done: {count(self.rows, 'row')} ({self.written:,} explained, {self.rejected:,} rejected) "
            f"in {count(self.chunks, 'chunk')}{resumed}, {self.seconds:.1f} s, {self.rows_per_second:,.0f} rows/s "
            f"[{self.engine}] -> {self.output}"
            + (f"; rejected rows in {self.rejected_path}" if self.rejected else "")
        )


def _clock(seconds: float) -> str:
    return str(timedelta(seconds=round(seconds)))


class Progress:
    """Rows done out of (an estimate of) the total, reported to ``stream``."""

    def __init__(
        self, stream: TextIO | None = None, *, interval: float = 10.0, bar: bool | None = None
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval
        isatty = getattr(self.stream, "isatty", None)
        self.bar = bar if bar is not None else bool(isatty and isatty())
        self.total: int | None = None
        self.exact = True
        self.done = 0
        self._start_done = 0
        self._t0 = time.monotonic()
        self._last = self._t0
        self._tqdm: Any = None

    def start(self, total: int | None, *, exact: bool, done: int = 0, label: str = "batch") -> None:
        """Begin reporting; ``done`` rows were finished by an earlier run."""
        self.total, self.exact, self.done, self._start_done = total, exact, done, done
        self._t0 = self._last = time.monotonic()
        if self.bar:
            from tqdm import tqdm

            self._tqdm = tqdm(
                total=total,
                initial=done,
                unit=" rows",
                unit_scale=True,
                file=self.stream,
                desc=label,
                dynamic_ncols=True,
            )
        else:
            approx = "" if exact else "~"
            size = f" {approx}{total:,} rows" if total is not None else ""
            self._emit(f"{label}: explaining{size}" + (f", {done:,} already done" if done else ""))

    def advance(self, rows: int) -> None:
        self.done += rows
        if self._tqdm is not None:
            self._tqdm.update(rows)
            return
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._emit(self.status())

    def status(self) -> str:
        """``batch: done/total rows (pct), rate rows/s, ETA h:mm:ss``."""
        elapsed = max(time.monotonic() - self._t0, 1e-9)
        rate = (self.done - self._start_done) / elapsed
        text = f"batch: {self.done:,}"
        if self.total:
            approx = "" if self.exact else "~"
            text += f"/{approx}{self.total:,} rows ({100.0 * min(self.done / self.total, 1.0):.1f}%)"
        else:
            text += " rows"
        text += f", {rate:,.0f} rows/s"
        if self.total and rate > 0:
            text += f", ETA {_clock(max(self.total - self.done, 0) / rate)}"
        return text

    def finish(self, summary: Summary) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
            self._tqdm = None
        elif self.done != self._start_done:
            self._emit(self.status())
        self._emit(summary.line())

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
            self._tqdm = None

    def _emit(self, line: str) -> None:
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        print(f"{stamp} {line}", file=self.stream, flush=True)
