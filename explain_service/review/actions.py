"""The forms that change something: review events, re-verify, suspend and resume."""

from __future__ import annotations
