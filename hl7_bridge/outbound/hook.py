"""The ServiceRequest after-write hook (fhir_server.services.hooks): an order that becomes active,
held, released or revoked puts an ORM^O01/OML^O21 in the outbox of every destination of the tenant
that takes it — in the SAME transaction as the write, so a message is queued if and only if the
write committed (HL7 v2.5.1 Ch. 4 §4.5.1 ORC-1 order control, table 0119).

Status transitions (FHIR request-status, ServiceRequest.status) → event → ORC-1:

* becomes ``active`` (created active, or from draft/on-hold/absent), nothing sent yet → ``new`` NW
* becomes ``active`` after a hold was sent → ``release`` RL
* becomes ``on-hold`` after NW/RL was sent → ``hold`` HD
* becomes ``revoked`` or ``entered-in-error``, or is deleted, after anything was sent → ``cancel`` CA

Other changes (an edit that keeps the status, completed, …) queue nothing. Writes by the HL7 inbound
bridge (actor client id ``hl7:<app>@<facility>``) are not sent, unless the destination has
``forward_hl7`` — and never back to the application that sent them.

A message that cannot be encoded (a bug, not bad input: the write was validated) is queued ``dead``
with the error, visible in ``hl7 outbox list --status dead``; the clinical write is never refused
over its v2 rendering.

Cost for a tenant without destinations: the status test, then one dictionary lookup (destinations
are cached 5 s per tenant).
"""

from __future__ import annotations

import logging
from typing import Any

from fhir_server.errors import FhirError
from fhir_server.services.hooks import WriteEvent, after_write
from hl7_bridge.outbound import outbox
from hl7_bridge.outbound.destinations import Destination, destinations_for
from hl7_bridge.outbound.encode import OrderContext, encode_order

__all__ = ["enqueue_orders", "transition"]

log = logging.getLogger("hl7_bridge.outbound")

_TRIGGERS = {"active", "on-hold", "revoked", "entered-in-error", None}


def transition(before: str | None, after: str | None, deleted: bool, last: str | None) -> str | None:
    """The outbox event for a status change given the ``last`` event sent to a destination."""
    if deleted or after in ("revoked", "entered-in-error"):
        return "cancel" if last not in (None, "cancel") else None
    if after == "active" and before in (None, "draft", "on-hold"):
        if last is None or last == "cancel":
            return "new"
        return "release" if last == "hold" else None
    if after == "on-hold":
        return "hold" if last in ("new", "release") else None
    return None


@after_write("ServiceRequest")
async def enqueue_orders(conn: Any, service: Any, event: WriteEvent) -> None:
    old = (event.before or {}).get("status")
    new = (event.after or {}).get("status")
    deleted = event.after is None
    if old == new or new not in _TRIGGERS or (deleted and event.before is None):
        return
    destinations = await destinations_for(conn, event.tenant)
    if not destinations:
        return
    sr = event.after or event.before or {}
    client_id = event.actor.client_id
    chosen = [d for d in destinations if d.takes(sr, client_id)]
    if not chosen:
        return
    ctx: OrderContext | None = None
    for dest in chosen:
        last = await outbox.last_event(conn, event.tenant, event.resource_id, dest.id)
        kind = transition(old, new, deleted, last)
        if kind is None:
            continue
        if ctx is None:
            ctx = await _context(service, conn, sr)
        await _enqueue(conn, event, dest, kind, ctx)


async def _enqueue(conn: Any, event: WriteEvent, dest: Destination, kind: str, ctx: OrderContext) -> None:
    sequence = await outbox.next_sequence(conn, dest.id)
    control_id = f"FO{dest.id}-{sequence}"
    error = None
    try:
        message = encode_order(
            ctx, event=kind, message_type=dest.message_type, version=dest.version, control_id=control_id,
            sending_app=dest.sending_app, sending_facility=dest.sending_facility or event.tenant,
            receiving_app=dest.receiving_app, receiving_facility=dest.receiving_facility,
        )
    except Exception as exc:
        log.exception("HL7 outbox: the order could not be encoded", extra={"resource_id": event.resource_id})
        message, error = "", f"encoding failed: {type(exc).__name__}: {exc}"
    version = int(((event.after or event.before or {}).get("meta") or {}).get("versionId") or 1)
    await outbox.enqueue(
        conn, tenant=event.tenant, destination_id=dest.id, sequence=sequence, resource_id=event.resource_id,
        version=version, event=kind, message_type=dest.message_type, control_id=control_id, message=message,
        error=error,
    )


async def _read(service: Any, conn: Any, ref: dict[str, Any] | None, *types: str) -> dict[str, Any] | None:
    """The resource a relative reference names (None for absent, external, contained or unreadable)."""
    reference = (ref or {}).get("reference") or ""
    rtype, _, rid = reference.partition("/")
    if rtype not in types or not rid or "/" in rid:
        return None
    try:
        import orjson

        stored = await service.read_in(conn, rtype, rid)
        return orjson.loads(stored.content) if stored.content else None
    except FhirError:
        return None


async def _context(service: Any, conn: Any, sr: dict[str, Any]) -> OrderContext:
    specimens = []
    for ref in sr.get("specimen") or []:
        found = await _read(service, conn, ref, "Specimen")
        if found:
            specimens.append(found)
    return OrderContext(
        service_request=sr,
        patient=await _read(service, conn, sr.get("subject"), "Patient"),
        encounter=await _read(service, conn, sr.get("encounter"), "Encounter"),
        requester=await _read(service, conn, sr.get("requester"), "Practitioner", "PractitionerRole"),
        specimens=specimens,
    )
