"""Who may call each operation, in the OpenAPI document: the bearer scheme and the answers of refusal.

Every operation but the public ones (``/healthz``, ``/readyz``) needs ``Authorization: Bearer <key>``
(:mod:`explain_service.access`); the document says so with a ``bearer`` security scheme, and an empty
``security`` on the public ones. Each operation also lists the refusals access control can answer, in
the one error shape: 401 (no key, or a bad one), 403 (a known key whose role may not: operations that
need the ``review`` or ``admin`` role), 429 (a rate limit or the counterfactual quota) and, for those
with a request body, 413 (a body over the size cap, or a request costing more than a whole limit).
With ``EXPLAIN_AUTH=off`` none of this applies and the document leaves it out.
"""

from __future__ import annotations

from typing import Any

from apispec import APISpec, BasePlugin

from explain_service.access.rules import ROLE_RANK, rule_for

SCHEME = "bearer"
_REFUSALS = {401: "UNAUTHORIZED", 403: "FORBIDDEN", 413: "REQUEST_ENTITY_TOO_LARGE"}
RATE_LIMITED = "RATE_LIMITED"


class AccessDocPlugin(BasePlugin):
    """An apispec plugin that documents access control per operation (see the module docstring)."""

    def __init__(self, auth_required: bool) -> None:
        self.auth_required = auth_required
        self.spec: APISpec | None = None

    def init_spec(self, spec: APISpec) -> None:
        self.spec = spec
        if self.auth_required:
            spec.components.security_scheme(
                SCHEME,
                {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key from `explain-service keys create`: `Authorization: Bearer xsk_...`",
                },
            )

    def operation_helper(
        self, path: str | None = None, operations: dict | None = None, **kwargs: Any
    ) -> None:
        rule = kwargs.get("rule")
        if not self.auth_required or rule is None or not operations or self.spec is None:
            return
        role = rule_for(rule.endpoint).role
        for operation in operations.values():
            if role == "public":
                operation["security"] = []
                continue
            operation["security"] = [{SCHEME: []}]
            refusals = [401, 429]
            if ROLE_RANK[role] > ROLE_RANK["explain"]:
                refusals.append(403)
            if "requestBody" in operation:
                refusals.append(413)
            responses = operation.setdefault("responses", {})
            for status in sorted(refusals):
                responses.setdefault(str(status), self._refusal(status))

    def _refusal(self, status: int) -> dict[str, Any]:
        """A reference to the response of ``status``; the 429 one (made on first use) names its headers."""
        assert self.spec is not None
        components = self.spec.components
        if status != 429:
            return components.get_ref("response", _REFUSALS[status])
        if RATE_LIMITED not in components.responses:
            components.response(
                RATE_LIMITED,
                {
                    "description": "A rate limit of the key (or of the client address) or its daily "
                    "counterfactual quota is reached; nothing was done",
                    "headers": {
                        "Retry-After": {
                            "description": "Seconds until the request may be admitted",
                            "schema": {"type": "integer", "minimum": 1},
                        }
                    },
                    "content": {"application/json": {"schema": components.get_ref("schema", "Error")}},
                },
            )
        return components.get_ref("response", RATE_LIMITED)
