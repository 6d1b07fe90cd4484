"""Who is acting, carried from the request (or a command, or the HL7 bridge) down to storage."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Actor:
    agent: str  # the token's subject, "development-mode", or a command/integration name
    request_id: str | None = None
    method: str = "SYSTEM"  # the HTTP method, or SYSTEM for commands
    path: str = ""  # the request path, never the query string


def write_action(method: str, version_id: int, deleted: bool) -> tuple[str, str, int]:
    """(AuditEvent.action, interaction, HTTP status) of a successful write."""
    if deleted:
        return "D", "delete", 204
    if version_id == 1:
        return "C", "create", 201
    if method == "PATCH":
        return "U", "patch", 200
    return "U", "update", 200
