"""The HL7 v2 message log over the admin API (issue 6 "Visibility"), in the style of the users/clients
admin API (``fhir_server/auth/oauth/admin.py``): role ``admin``, JSON bodies, errors as OperationOutcomes.

    GET  /admin/hl7/messages?status=&type=&control-id=&sender=&since=&until=&_count=&page=
         newest first, keyset paging (``next`` is the URL of the next page); never the bodies
    GET  /admin/hl7/messages/{id}            the whole row: raw message as text, ACK, resources, error
    POST /admin/hl7/messages/{id}/replay     process it again (``Bridge.replay``, as ``fhir-server hl7 replay``);
                                             answers the new status and ACK

The same routes answer under a tenant's FHIR base, ``/fhir/{tenant}/admin/hl7/messages…`` (``admin`` is
a reserved tenant word, so ``TenantFromPath`` hands them on as ``/fhir/admin/…`` with that tenant): a
token is only accepted on its own tenant's URLs, so a hospital's admin uses that form.

Scoping: the admin of the default tenant sees every message (unknown senders' too); the admin of
another tenant only the messages of that tenant and of the senders mapped to it (``hl7_sender``);
others' messages are 404 to it. Development mode (no tokens): everything.

Audit: listing, reading a message body (it holds patient data) and replaying one each record an
audit row (``audit_event`` through the batching sink, as the FHIR reads do; subtypes
``hl7-message-search``, ``hl7-message-read``, ``hl7-message-replay``), naming the Patient the message
wrote when it wrote one; ``state["audited"]`` keeps ``AuditTrail`` from adding its own row.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from fhir_server.audit import switch
from fhir_server.audit.actor import actor_from_scope
from fhir_server.audit.rows import event_row
from fhir_server.errors import BadRequest, Forbidden, ResourceNotFound, Unauthorized, VersionConflict
from fhir_server.timeutil import now
from hl7_bridge import inbox
from hl7_bridge.decode import decode

__all__ = ["ROUTES", "install"]

_STATUSES = ("received", "processed", "error")
_REPLAYABLE = ("received", "error")


def _scope(request: Request) -> str | None:
    """The tenant the caller is confined to (None: every message). 401 without a token, 403 unless admin."""
    settings = request.app.state.settings
    principal = request.scope.get("state", {}).get("principal")
    if principal is None:
        if settings.dev_mode:
            return None
        raise Unauthorized("Authentication required")
    if principal.role != "admin":
        raise Forbidden("The HL7 message log needs the admin role")
    return None if principal.tenant == settings.default_tenant else str(principal.tenant)


def _instant(request: Request, name: str) -> datetime | None:
    raw = request.query_params.get(name)
    if not raw:
        return None
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise BadRequest(f"{name}: '{raw}' is not an ISO 8601 date/time", expression=name) from None
    if value.tzinfo is None and "T" in raw:
        raise BadRequest(f"{name}: a date/time needs a zone (Z or ±hh:mm)", expression=name)
    return value if value.tzinfo is not None else value.replace(tzinfo=now().tzinfo)


def _int(request: Request, name: str, default: int | None) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise BadRequest(f"{name}: '{raw}' is not a positive integer", expression=name)
    return int(raw)


def _summary(row: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": row["id"], "receivedAt": _iso(row["received_at"]), "processedAt": _iso(row["processed_at"]),
        "tenant": row["tenant_id"], "sender": {"app": row["sending_app"], "facility": row["sending_facility"]},
        "controlId": row["control_id"], "type": row["message_type"], "version": row["version"],
        "status": row["status"], "ackCode": row["ack_code"], "resources": row["resources"], "attempts": row["attempts"],
        "peer": row["peer"],
    }
    if row["error"] is not None or row["error_code"] is not None:
        out["error"] = {"text": row["error"], "location": row["error_location"], "code": row["error_code"]}
    return out


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


async def list_messages(request: Request) -> Response:
    tenant = _scope(request)
    q = request.query_params
    status = q.get("status") or None
    if status is not None and status not in _STATUSES:
        raise BadRequest(f"status must be one of {', '.join(_STATUSES)}", expression="status")
    settings = request.app.state.settings
    count = min(_int(request, "_count", settings.default_page_size) or 1, settings.max_page_size)
    criteria = inbox.MessageFilter(
        status=status, message_type=q.get("type") or None, control_id=q.get("control-id") or None,
        sender=q.get("sender") or None, since=_instant(request, "since"), until=_instant(request, "until"),
        tenant=tenant, before=_int(request, "page", None),
    )
    async with request.app.state.db.connection() as conn:
        rows = await inbox.search(conn, criteria, count + 1)
    more = len(rows) > count
    rows = rows[:count]
    body: dict[str, Any] = {"messages": [_summary(r) for r in rows], "next": None}
    if more:
        params = [(k, v) for k, v in q.multi_items() if k != "page"] + [("page", str(rows[-1]["id"]))]
        body["next"] = f"{_path(request)}?{urlencode(params)}"
    _audit(request, None, "E", "hl7-message-search", 200)
    return JSONResponse(body)


async def _visible(request: Request, tenant: str | None) -> dict[str, Any]:
    raw_id = request.path_params["message_id"]
    if not raw_id.isdigit():
        raise ResourceNotFound(f"No HL7 message {raw_id!r}")
    async with request.app.state.db.connection() as conn:
        row = await inbox.get(conn, int(raw_id), tenant)
    if row is None:
        raise ResourceNotFound(f"No HL7 message {raw_id}")
    return row


def _path(request: Request) -> str:
    """The request's path as the client sent it (``/fhir/{tenant}/admin/…`` keeps its tenant)."""
    segment = request.scope.get("state", {}).get("tenant_segment")
    path = request.url.path
    return f"/fhir/{segment}{path[len('/fhir'):]}" if segment and path.startswith("/fhir/") else path


def _audit(request: Request, row: dict[str, Any] | None, action: str, interaction: str, status: int) -> None:
    """One audit row: who listed, read or replayed which message, and the Patient it concerns."""
    state = request.scope.setdefault("state", {})
    state["audited"] = True
    sink = getattr(request.app.state, "audit_sink", None)
    if sink is None or not switch.enabled():
        return
    resources = (row or {}).get("resources") or []
    patient = next((r.split("/")[1] for r in resources if r.startswith("Patient/")), None)
    tenant = (row or {}).get("tenant_id") or state.get("tenant") or request.app.state.settings.default_tenant
    sink.add(event_row(tenant, now(), actor_from_scope(request.scope, status), action=action,
                       interaction=interaction, status=status, patient=patient))


async def read_message(request: Request) -> Response:
    tenant = _scope(request)
    row = await _visible(request, tenant)
    text, _ = decode(bytes(row["raw"]), request.app.state.settings.hl7_default_charset)
    body = {**_summary(row), "raw": text, "ack": row["ack"]}
    _audit(request, row, "R", "hl7-message-read", 200)
    return JSONResponse(body)


async def replay_message(request: Request) -> Response:
    from hl7_bridge.bridge import Bridge

    tenant = _scope(request)
    row = await _visible(request, tenant)
    if row["status"] not in _REPLAYABLE:
        raise VersionConflict(f"HL7 message {row['id']} is {row['status']}; only received or error messages are replayed")
    code, ack = await Bridge(request.app.state.db, request.app.state.settings).replay(int(row["id"]))
    async with request.app.state.db.connection() as conn:
        after = await inbox.get(conn, int(row["id"]))
    assert after is not None
    _audit(request, after, "E", "hl7-message-replay", 200)
    return JSONResponse({**_summary(after), "ackCode": code, "ack": ack})


ROUTES: list[tuple[str, Any, list[str]]] = [
    (f"{prefix}/admin/hl7/messages{suffix}", handler, methods)
    for prefix in ("", "/fhir")
    for suffix, handler, methods in (
        ("", list_messages, ["GET"]),
        ("/{message_id}", read_message, ["GET"]),
        ("/{message_id}/replay", replay_message, ["POST"]),
    )
]


def install(app: Any) -> None:
    """Mount the routes (ahead of the FHIR API's catch-all, like the other admin routes)."""
    from starlette.routing import Route

    app.router.routes[:0] = [Route(path, handler, methods=methods) for path, handler, methods in ROUTES]
