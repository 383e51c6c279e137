"""Counted nouns for messages, CLI output, plot titles and pages: ``1 incident``, ``2,000 rows``.

One rule in one place, so no output says "1 incidents" and no layer keeps its own copy.
"""

from __future__ import annotations


def count(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` and ``noun``, the noun in the plural unless ``n`` is 1: ``"1 feature"``, ``"2,000 samples"``.

    ``plural`` is for nouns that do not take an "s" (``count(2, "match", "matches")``).
    """
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {plural or noun + 's'}"
