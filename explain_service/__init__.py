"""explain-service: explanations for every prediction of a registered model."""

from __future__ import annotations

__version__ = "0.1.0"
