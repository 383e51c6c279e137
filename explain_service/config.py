"""Settings, read once from the environment (prefix ``EXPLAIN_``) with defaults in one place."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class Settings:
    """Typed service settings; every field maps to ``EXPLAIN_<FIELD>`` in the environment."""

    models_dir: str = "models"
    database_url: str = "sqlite:///var/audit.sqlite3"
    audit_durability: str = "full"
    plots_dir: str = "var/plots"
    plots_cache_mb: int = 1024  # the plot cache's size cap (least recently used first out); 0: no cap
    auth: str = "required"
    ratelimit_storage_uri: str = "memory://"
    ratelimit_default: str = "600/minute"
    ratelimit_key_prefix: str = "explain-service"
    counterfactual_daily_quota: int = 1000
    login_failure_limit: str = "10/15 minutes"  # failed sign-ins to the review pages per client address
    request_deadline_seconds: float = 10.0
    request_max_evaluations: int = 2_000_000
    max_instances: int = 100
    fairness_max_rows: int = 20_000
    max_body_bytes: int = 2 * 1024 * 1024
    eager_load: bool = True
    model_recheck_seconds: float = 30.0
    model_threads: int = 1
    secret_key: str = ""  # signs the review pages' session cookie; empty: one kept in the database
    disparity_threshold: float = 0.8  # live demographic parity ratio under which a feature is in alert
    disparity_window_days: int = 30  # the sliding window of live disparity, in days (today included)
    disparity_min_group: int = 30  # groups with fewer decisions in the window are shown, not compared

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults, then ``EXPLAIN_*`` variables, then explicit ``overrides``."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f"EXPLAIN_{f.name.upper()}")
            if raw is None:
                continue
            if f.type in ("int",):
                values[f.name] = int(raw)
            elif f.type in ("float",):
                values[f.name] = float(raw)
            elif f.type in ("bool",):
                values[f.name] = raw.strip().lower() in ("1", "true", "yes", "on")
            else:
                values[f.name] = raw
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        if settings.auth not in ("required", "off"):
            raise ValueError(f"EXPLAIN_AUTH must be 'required' or 'off', not {settings.auth!r}")
        from explain_service.access.limits import parse_rates

        for name, example in (
            ("ratelimit_default", "'600/minute' or '10/second;600/minute'"),
            ("login_failure_limit", "'10/15 minutes' (empty: no limit)"),
        ):
            text = getattr(settings, name)
            try:
                parse_rates(text)
            except ValueError:
                raise ValueError(
                    f"EXPLAIN_{name.upper()} must be limits such as {example}, not {text!r}"
                ) from None
        return settings
