"""The booking rules, on every write path (``fhir_server.services.hooks``): REST create/update/patch/
delete, transaction and batch Bundles, the HL7 bridge and the ``Appointment/$…`` operations all end
in the same two hooks, so ``$book`` and a plain ``POST Appointment`` agree.

* ``guard_appointment`` (before anything is stored): the status machine (``transitions``), the
  no-show grace period, who may mark entered-in-error.
* ``after_appointment`` (same transaction, right after the write):

  1. row locks: a transaction advisory lock per Slot the write takes or frees (sorted), then per
     Patient (sorted): concurrent bookings of one slot, or by one patient, run one after the other;
  2. a Slot newly taken must be bookable (not ``busy-unavailable``/``entered-in-error``, not
     blocked = ``busy`` with nothing on it) and carry at most its capacity (extension
     ``slot-capacity`` on the Slot, else on its Schedule, else 1) of Appointments in ``HOLDING``
     statuses, this one included → else 409;
  3. a patient may not hold two ``ACTIVE`` (booked/arrived/checked-in) Appointments whose
     [start, end) overlap → 409;
  4. every Slot touched is set ``busy`` when full and back to ``free`` when no longer full
     (a cancel, no-show, entered-in-error, delete or reschedule frees it);
  5. booked → arrived (``$check-in`` or a plain update) opens the OPD Encounter with the next queue
     token (``checkin.open_visit``), once per Appointment; arrived → fulfilled finishes it.

* ``after_encounter``: an OPD Encounter that becomes ``finished`` fulfils its arrived Appointment(s).

The hooks read and write Slots and search Appointments/Encounters unrestricted (capacity and overlap
are tenant-wide facts, whatever part of the tenant the caller sees); what they write is audited as
the caller's.
"""

from __future__ import annotations

from typing import Any

import orjson

from fhir_server.auth.visibility import UNRESTRICTED
from fhir_server.errors import ResourceGone, ResourceNotFound, UnprocessableEntity, VersionConflict
from fhir_server.services import hooks
from fhir_server.services.resources import BoundDatabase, ResourceService
from fhir_server.storage import repository as repo
from fhir_server.timeutil import format_instant, now
from fhir_server.workflows.appointments import checkin, transitions
from fhir_server.workflows.appointments.model import (
    ACTIVE,
    CAPACITY_URL,
    HOLDING,
    UNBOOKABLE_SLOT,
    actors,
    grace,
    instant,
    lock,
    ref_id,
    slot_ids,
    status_of,
)

_FULFIL_FROM = ("arrived", "checked-in")
_MAX_ON_ONE = 100_000  # appointments on one slot / of one patient: all of them


# ---- guard ------------------------------------------------------------------------------------
@hooks.guard("Appointment")
def guard_appointment(event: hooks.WriteEvent) -> None:
    before, after = status_of(event.before), status_of(event.after)
    transitions.check(before, after, role=event.actor.role)
    if after == "noshow" and before != "noshow":
        transitions.check_noshow(instant((event.after or {}).get("start")), now(), grace().total_seconds() / 60)


# ---- after-write: slots, overlap, check-in ------------------------------------------------------
def _unrestricted(service: ResourceService, conn: Any) -> ResourceService:
    return ResourceService(BoundDatabase(conn), service.tenant, service.actor, UNRESTRICTED)


def _held(resource: dict[str, Any] | None) -> list[str]:
    return slot_ids(resource) if status_of(resource) in HOLDING else []


def _capacity(holder: dict[str, Any] | None) -> int | None:
    """The ``slot-capacity`` extension of a Slot or Schedule (at least 1), if it has one."""
    for ext in (holder or {}).get("extension") or []:
        if ext.get("url") == CAPACITY_URL and isinstance(ext.get("valuePositiveInt"), int):
            return max(1, int(ext["valuePositiveInt"]))
    return None


async def _read_or_none(svc: ResourceService, conn: Any, resource_type: str, rid: str) -> dict[str, Any] | None:
    try:
        return orjson.loads((await svc.read_in(conn, resource_type, rid)).content or "{}")
    except (ResourceNotFound, ResourceGone):
        return None


async def _holding(conn: Any, tenant: str, slot_id: str) -> int:
    """Appointments holding a place on the Slot (through the reference index directly: the same
    plan on a table without statistics; a slot has few appointments, their status is read here)."""
    found = await repo.referring(conn, tenant, "Appointment", "slot", "Slot", slot_id, _MAX_ON_ONE)
    return sum(1 for v in found if status_of(orjson.loads(v.content or "{}")) in HOLDING)


async def _check_and_sync_slots(conn: Any, svc: ResourceService, event: hooks.WriteEvent,
                                taken: list[str], touched: list[str]) -> None:
    schedules: dict[str, int | None] = {}  # capacity per Schedule: the touched Slots mostly share one
    for sid in touched:
        slot = await _read_or_none(svc, conn, "Slot", sid)
        if slot is None:
            if sid not in taken:  # a freed Slot that is gone has nothing to free
                continue
            raise UnprocessableEntity(f"Slot/{sid} is not known", expression="Appointment.slot")
        capacity = _capacity(slot)
        if capacity is None and (schedule_id := ref_id(slot.get("schedule"), "Schedule")):
            if schedule_id not in schedules:
                schedules[schedule_id] = _capacity(await _read_or_none(svc, conn, "Schedule", schedule_id))
            capacity = schedules[schedule_id]
        capacity = capacity or 1
        count = await _holding(conn, event.tenant, sid)
        if sid in taken:
            status = slot.get("status")
            if status in UNBOOKABLE_SLOT or (status == "busy" and count <= 1):
                raise VersionConflict(f"Slot/{sid} is not available (status {status})", expression="Appointment.slot")
            if count > capacity:
                raise VersionConflict(
                    f"Slot/{sid} is fully booked ({capacity} appointment{'s' if capacity > 1 else ''} at most)",
                    expression="Appointment.slot",
                )
        want = "busy" if count >= capacity else "free"
        if slot.get("status") in ("free", "busy") and slot["status"] != want:
            slot["status"] = want
            slot.pop("meta", None)
            await svc.update_in(conn, "Slot", sid, slot, None)


async def _check_overlap(conn: Any, tenant: str, appointment: dict[str, Any], patients: list[str]) -> None:
    start, end = instant(appointment.get("start")), instant(appointment.get("end"))
    if start is None:
        return
    end = end or start
    for pid in patients:
        # the patient's appointments through the reference index (see ``_holding``); status and
        # times are read here
        for other in await repo.referring(conn, tenant, "Appointment", "patient", "Patient", pid, _MAX_ON_ONE):
            if other.id == appointment.get("id"):
                continue
            o = orjson.loads(other.content or "{}")
            if status_of(o) not in ACTIVE:
                continue
            o_start, o_end = instant(o.get("start")), instant(o.get("end"))
            if o_start is None:
                continue
            o_end = o_end or o_start
            if o_start < end and start < o_end or o_start == start:
                raise VersionConflict(
                    f"Patient/{pid} already has an appointment at that time (Appointment/{other.id}, "
                    f"{o.get('start')} to {o.get('end')})",
                    expression="Appointment.participant.actor",
                )


def _times_changed(before: dict[str, Any] | None, after: dict[str, Any]) -> bool:
    if before is None:
        return True
    return any(before.get(k) != after.get(k) for k in ("start", "end")) or \
        actors(before, "Patient") != actors(after, "Patient")


@hooks.after_write("Appointment")
async def after_appointment(conn: Any, service: ResourceService, event: hooks.WriteEvent) -> None:
    before, after = event.before, event.after
    held_before, held_after = _held(before), _held(after)
    taken = [s for s in held_after if s not in held_before]
    touched = sorted(set(held_before) ^ set(held_after))
    active_now = status_of(after) in ACTIVE
    newly_active = active_now and (status_of(before) not in ACTIVE or _times_changed(before, after or {}))
    if not touched and not newly_active and not _arrives(before, after) and not _fulfils(before, after):
        return
    svc = _unrestricted(service, conn)
    for sid in touched:  # 1. locks, always slots (sorted) before patients (sorted): no deadlock
        await lock(conn, event.tenant, "slot", sid)
    patients = sorted(actors(after, "Patient")) if newly_active else []
    for pid in patients:
        await lock(conn, event.tenant, "patient", pid)
    if touched:
        await _check_and_sync_slots(conn, svc, event, taken, touched)
    if patients and after is not None:
        await _check_overlap(conn, event.tenant, {**after, "id": event.resource_id}, patients)
    if _arrives(before, after) and after is not None:
        await check_in(conn, service, {**after, "id": event.resource_id})
    if _fulfils(before, after):
        await _finish_encounters(conn, service, event.resource_id)


def _arrives(before: dict[str, Any] | None, after: dict[str, Any] | None) -> bool:
    return status_of(after) == "arrived" and status_of(before) in ("booked", "checked-in")


def _fulfils(before: dict[str, Any] | None, after: dict[str, Any] | None) -> bool:
    return status_of(after) == "fulfilled" and status_of(before) in _FULFIL_FROM


async def check_in(conn: Any, service: ResourceService, appointment: dict[str, Any]) -> checkin.Visit:
    """The Encounter and token of an arrived Appointment (made once; later calls find it)."""
    patient, practitioner, location, _ = checkin.visit_parties(appointment)
    if patient is None or practitioner is None:
        raise UnprocessableEntity("Check-in needs the Appointment's patient and practitioner participants",
                                  expression="Appointment.participant")
    organization = None
    if location is not None:
        loc = await _read_or_none(_unrestricted(service, conn), conn, "Location", location)
        organization = ref_id(loc.get("managingOrganization"), "Organization") if loc else None
    return await checkin.open_visit(conn, service, patient=patient, practitioner=practitioner, location=location,
                                    organization=organization, appointment=appointment)


async def _finish_encounters(conn: Any, service: ResourceService, appointment_id: str) -> None:
    svc = _unrestricted(service, conn)
    for found in await repo.referring(conn, service.tenant, "Encounter", "appointment", "Appointment", appointment_id, 100):
        enc = orjson.loads(found.content or "{}")
        if enc.get("status") in ("finished", "cancelled", "entered-in-error"):
            continue
        enc["status"] = "finished"
        enc.setdefault("period", {})["end"] = format_instant(now())
        enc.setdefault("statusHistory", []).append({"status": "finished", "period": {"start": format_instant(now())}})
        enc.pop("meta", None)
        await svc.update_in(conn, "Encounter", found.id, enc, None)


# ---- an OPD Encounter finishing fulfils its Appointment -----------------------------------------
@hooks.after_write("Encounter")
async def after_encounter(conn: Any, service: ResourceService, event: hooks.WriteEvent) -> None:
    after = event.after
    if status_of(after) != "finished" or status_of(event.before) == "finished" or not after.get("appointment"):
        return
    svc = _unrestricted(service, conn)
    for ref in after["appointment"]:
        aid = ref_id(ref, "Appointment")
        if aid is None:
            continue
        await lock(conn, event.tenant, "check-in", aid)
        appt = await _read_or_none(svc, conn, "Appointment", aid)
        if appt is not None and appt.get("status") in _FULFIL_FROM:
            appt["status"] = "fulfilled"
            appt.pop("meta", None)
            await svc.update_in(conn, "Appointment", aid, appt, None)
