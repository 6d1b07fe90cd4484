"""The ``audit_event`` row: its columns, outcome codes, and the row of one event."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fhir_server.audit.actor import Actor

# AuditEvent.type codes kept in the ``type`` column
TYPE_REST = "rest"  # http://terminology.hl7.org/CodeSystem/audit-event-type
TYPE_USER_AUTHENTICATION = "110114"  # http://dicom.nema.org/resources/ontology/DCM (login, logout, token)

# what the batching sink writes (COPY), in this order
COLUMNS = (
    "tenant_id", "recorded", "type", "action", "interaction", "outcome", "status", "agent", "fhir_user",
    "client_id", "role", "network", "purpose", "request_id", "method", "path", "resource_type",
    "resource_id", "version_id", "patient",
)


def outcome_of(status: int) -> str:
    """AuditEvent.outcome: 0 success, 4 minor failure (refused, invalid, not found), 8 serious failure."""
    return "0" if status < 400 else ("4" if status < 500 else "8")


def event_row(
    tenant: str, recorded: datetime, actor: Actor, *, action: str, interaction: str, status: int,
    resource_type: str | None = None, resource_id: str | None = None, version_id: int | None = None,
    patient: str | None = None, type: str = TYPE_REST,
) -> tuple[Any, ...]:
    """One row in ``COLUMNS`` order."""
    return (
        tenant, recorded, type, action, interaction, outcome_of(status), status, actor.agent, actor.fhir_user,
        actor.client_id, actor.role, actor.network, list(actor.purpose) or None, actor.request_id, actor.method,
        actor.path, resource_type, resource_id, version_id, patient,
    )


INSERT_SQL = (
    f"INSERT INTO audit_event ({', '.join(COLUMNS)}) VALUES ({', '.join(['%s'] * len(COLUMNS))})"
)
