"""``audit_event`` rows as FHIR R4 AuditEvent resources (auditevent.html), IHE BALP style.

The resource id names the row's primary key: ``{recorded as µs since 1970}-{uuid hex}``, so a read
by id is a primary-key lookup and needs no extra index on the hot insert path.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from fhir_server.audit.rows import TYPE_REST, TYPE_USER_AUTHENTICATION
from fhir_server.timeutil import format_instant

AUDIT_EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
RESTFUL_INTERACTION = "http://hl7.org/fhir/restful-interaction"
LOCAL_SUBTYPE = "https://fhir-server.example.org/fhir/CodeSystem/audit-subtype"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
SECURITY_ROLE_TYPE = "http://terminology.hl7.org/CodeSystem/extra-security-role-type"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
SUBJECT_SYSTEM = "https://fhir-server.example.org/fhir/NamingSystem/subject"
CLIENT_SYSTEM = "https://fhir-server.example.org/fhir/NamingSystem/oauth-client"

REST_INTERACTIONS = frozenset({
    "read", "vread", "update", "patch", "delete", "history", "history-instance", "history-type", "history-system",
    "create", "search", "search-type", "search-system", "capabilities", "transaction", "batch", "operation",
})
# user authentication subtypes (DICOM), and this server's own for what DICOM does not name
DCM_SUBTYPES = {"login": ("110122", "Login"), "logout": ("110123", "Logout")}
TYPE_CODINGS = {
    TYPE_REST: {"system": AUDIT_EVENT_TYPE, "code": "rest", "display": "RESTful Operation"},
    TYPE_USER_AUTHENTICATION: {"system": DCM, "code": "110114", "display": "User Authentication"},
}
TYPE_SYSTEMS = {TYPE_REST: AUDIT_EVENT_TYPE, TYPE_USER_AUTHENTICATION: DCM}

# the row columns the builder reads, in this order
COLUMNS = (
    "id", "recorded", "type", "action", "interaction", "outcome", "status", "agent", "fhir_user", "client_id",
    "role", "network", "purpose", "request_id", "method", "path", "resource_type", "resource_id", "version_id",
    "patient",
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ID = re.compile(r"^(\d{1,17})-([0-9a-f]{32})$")


def resource_id(recorded: datetime, audit_id: uuid.UUID) -> str:
    micros = (recorded - _EPOCH) // timedelta(microseconds=1)
    return f"{micros}-{audit_id.hex}"


def parse_resource_id(value: str) -> tuple[datetime, uuid.UUID] | None:
    """(recorded, uuid) of an AuditEvent id; None if it is not one of ours."""
    m = _ID.match(value)
    if not m:
        return None
    try:
        return _EPOCH + timedelta(microseconds=int(m[1])), uuid.UUID(hex=m[2])
    except (OverflowError, ValueError):
        return None


def subtype_coding(type_: str, interaction: str) -> dict[str, str]:
    if type_ == TYPE_REST and interaction in REST_INTERACTIONS:
        return {"system": RESTFUL_INTERACTION, "code": interaction, "display": interaction}
    if interaction in DCM_SUBTYPES:
        code, display = DCM_SUBTYPES[interaction]
        return {"system": DCM, "code": code, "display": display}
    return {"system": LOCAL_SUBTYPE, "code": interaction}


def _purpose(codes: list[str] | None) -> list[dict[str, Any]]:
    out = []
    for c in codes or []:
        system, _, code = c.rpartition("|")
        out.append({"coding": [{"system": system or ACT_REASON, "code": code}]})
    return out


def _code(system: str, code: str, display: str) -> dict[str, str]:
    return {"system": system, "code": code, "display": display}


def build(row: tuple[Any, ...], *, tenant: str, source_id: str) -> dict[str, Any]:
    """The AuditEvent of one row (``COLUMNS`` order)."""
    (audit_id, recorded, type_, action, interaction, outcome, status, agent, fhir_user, client_id, role, network,
     purpose, request_id, method, path, resource_type, rid, version_id, patient) = row
    instant = format_instant(recorded)
    purposes = _purpose(purpose)
    user: dict[str, Any] = {}
    if fhir_user:
        user["type"] = {"coding": [_code(SECURITY_ROLE_TYPE, "humanuser", "human user")]}
        user["who"] = {"reference": fhir_user}
    else:
        user["who"] = {"identifier": {"system": SUBJECT_SYSTEM, "value": agent}, "display": agent}
    user["altId"] = agent
    if role:
        user["role"] = [{"text": role}]
    user["requestor"] = True
    if network:
        user["network"] = {"address": network, "type": "2"}  # 2: IP address
    if purposes:
        user["purposeOfUse"] = purposes
    agents = [user]
    if client_id:
        client: dict[str, Any] = {
            "type": {"coding": [_code(DCM, "110153", "Source Role ID")]},
            "who": {"identifier": {"system": CLIENT_SYSTEM, "value": client_id}, "display": client_id},
            "requestor": False,
        }
        if network:
            client["network"] = {"address": network, "type": "2"}
        agents.append(client)
    entities: list[dict[str, Any]] = []
    if resource_type:
        entity: dict[str, Any] = {}
        if rid:
            ref = f"{resource_type}/{rid}" + (f"/_history/{version_id}" if version_id else "")
            entity["what"] = {"reference": ref}
        else:
            entity["what"] = {"type": resource_type}
        query = interaction.startswith("search")
        entity["type"] = _code(ENTITY_TYPE, "2", "System Object")
        entity["role"] = _code(OBJECT_ROLE, "24", "Query") if query else _code(OBJECT_ROLE, "4", "Domain Resource")
        entities.append(entity)
    if patient:
        entities.append({
            "what": {"reference": f"Patient/{patient}"},
            "type": _code(ENTITY_TYPE, "1", "Person"),
            "role": _code(OBJECT_ROLE, "1", "Patient"),
        })
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": resource_id(recorded, audit_id),
        "meta": {"versionId": "1", "lastUpdated": instant},
        "type": TYPE_CODINGS.get(type_, {"code": type_}),
        "subtype": [subtype_coding(type_, interaction)],
        "action": action,
        "recorded": instant,
        "outcome": outcome,
    }
    desc = [f"HTTP {status}"] if status else []
    if method and path:
        desc.append(f"{method} {path}")
    if request_id:
        desc.append(f"request {request_id}")
    if desc:
        event["outcomeDesc"] = "; ".join(desc)
    if purposes:
        event["purposeOfEvent"] = purposes
    event["agent"] = agents
    event["source"] = {
        "site": tenant,
        "observer": {"type": "Device", "identifier": {"value": source_id}, "display": source_id},
        "type": [_code(SOURCE_TYPE, "4", "Application Server")],
    }
    if entities:
        event["entity"] = entities
    return event
