"""Who is acting, carried from the request (or a command, or the HL7 bridge) down to storage."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

# X-Purpose-Of-Use: comma-separated codes, each ``system|code`` or a bare v3-ActReason code (TREAT, ETREAT…)
PURPOSE_HEADER = b"x-purpose-of-use"
_PURPOSE = re.compile(r"^(?:[A-Za-z0-9:/._#-]{1,200}\|)?[A-Za-z0-9._-]{1,64}$")
_MAX_PURPOSES = 5


@dataclass(frozen=True, slots=True)
class Actor:
    agent: str  # the token's subject, "development-mode", or a command/integration name
    request_id: str | None = None
    method: str = "SYSTEM"  # the HTTP method, or SYSTEM for commands
    path: str = ""  # the request path, never the query string
    fhir_user: str | None = None  # the agent's FHIR identity (Principal.fhir_user: Practitioner/123)
    client_id: str | None = None  # the OAuth client of the token
    role: str | None = None  # the role the permission matrix applied
    network: str | None = None  # the client's network address
    purpose: tuple[str, ...] = ()  # purpose of use (token claim, else the X-Purpose-Of-Use header)


def purpose_of_use(principal: Any, headers: list[tuple[bytes, bytes]]) -> tuple[str, ...]:
    """The purpose of use of a request: the token's ``purpose_of_use`` claim when the token carries
    one (what the authorization was granted for), else the ``X-Purpose-Of-Use`` header. Values that
    are not codes are dropped (never an error: a request is not refused over its audit annotation)."""
    claimed = getattr(principal, "purpose_of_use", None) if principal is not None else None
    if claimed:
        raw = claimed if isinstance(claimed, str) else ",".join(str(c) for c in claimed)
    else:
        raw = next((v.decode("latin-1") for k, v in headers if k == PURPOSE_HEADER), "")
    if not raw:
        return ()
    codes = [c.strip() for c in raw.split(",")]
    return tuple(c for c in codes if _PURPOSE.match(c))[:_MAX_PURPOSES]


def actor_from_scope(scope: dict[str, Any], status: int | None = None) -> Actor:
    """The actor of an ASGI request: the principal the auth middleware set (``state["principal"]``),
    "anonymous" for a refused unauthenticated request, "development-mode" without authentication."""
    state = scope.get("state", {})
    # a valid token refused before the handler (another tenant's) is still who asked
    principal = state.get("principal") or state.get("refused_principal")
    client = scope.get("client")
    network = client[0] if client else None
    purpose = purpose_of_use(principal, scope.get("headers", []))
    if principal is None:
        agent = "anonymous" if status == 401 else "development-mode"
        return Actor(agent, state.get("request_id"), scope["method"], scope["path"], network=network, purpose=purpose)
    return Actor(
        principal.subject, state.get("request_id"), scope["method"], scope["path"],
        fhir_user=getattr(principal, "fhir_user", None), client_id=getattr(principal, "client_id", None),
        role=getattr(principal, "role", None) or None, network=network, purpose=purpose,
    )


def write_action(method: str, version_id: int, deleted: bool) -> tuple[str, str, int]:
    """(AuditEvent.action, interaction, HTTP status) of a successful write."""
    if deleted:
        return "D", "delete", 204
    if version_id == 1:
        return "C", "create", 201
    if method == "PATCH":
        return "U", "patch", 200
    return "U", "update", 200
