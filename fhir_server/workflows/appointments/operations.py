"""The appointment operations as services (HTTP-free; ``fhir_server.api.ops_appointments`` parses
the requests): ``book``, ``confirm``, ``cancel``, ``reschedule``, ``check_in``, ``complete``,
``no_show``, ``walk_in``, ``queue``, ``mark_noshows``.

Each runs in one transaction and writes only through ``ResourceService`` (validated, indexed,
audited), so the rules of ``rules`` (slot locks, capacity, patient overlap, status machine, the
check-in Encounter) apply exactly as to a plain REST write of the same Appointment.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

import orjson

from fhir_server.auth.visibility import UNRESTRICTED
from fhir_server.errors import ResourceGone, ResourceNotFound, UnprocessableEntity, VersionConflict
from fhir_server.services.conditional import find_matches
from fhir_server.services.resources import BoundDatabase, ResourceService, WriteResult
from fhir_server.services.validate import check_resource
from fhir_server.storage.repository import StoredVersion
from fhir_server.timeutil import format_instant, now
from fhir_server.workflows.appointments import checkin, rules, transitions
from fhir_server.workflows.appointments.model import (
    ACTIVE,
    actors,
    grace,
    local_day,
    lock,
    ref_id,
    search,
    slot_ids,
)

BOOKABLE_FROM = ("proposed", "pending", "waitlist")
RESCHEDULABLE = ("proposed", "pending", "waitlist", "booked")


@dataclass(frozen=True, slots=True)
class CheckIn:
    appointment: dict[str, Any] | None
    encounter: dict[str, Any]
    token: int
    created: bool


def _content(version: StoredVersion) -> dict[str, Any]:
    return orjson.loads(version.content or "{}")


def _wrong_status(current: str, action: str, allowed_from: tuple[str, ...]) -> None:
    """The 409 of an operation asked of an Appointment in the wrong status (names the allowed moves)."""
    nexts = transitions.allowed(current)
    raise VersionConflict(
        f"Appointment.status is '{current}': ${action} needs one of {', '.join(allowed_from)}; "
        f"allowed next statuses: {', '.join(nexts) if nexts else 'none (a final status)'}",
        expression="Appointment.status",
    )


async def _slots(service: ResourceService, conn: Any, ids: list[str]) -> list[dict[str, Any]]:
    svc = ResourceService(BoundDatabase(conn), service.tenant, service.actor, UNRESTRICTED)
    out = []
    for sid in ids:
        try:
            out.append(_content(await svc.read_in(conn, "Slot", sid)))
        except (ResourceNotFound, ResourceGone):
            raise UnprocessableEntity(f"Slot/{sid} is not known", expression="Appointment.slot") from None
    return out


async def _fill_from_slots(service: ResourceService, conn: Any, appointment: dict[str, Any]) -> None:
    """start/end from the Slots (earliest start, latest end); the Schedules' actors as participants."""
    slots = await _slots(service, conn, slot_ids(appointment))
    if not slots:
        return
    appointment["start"] = min(slots, key=lambda s: s["start"])["start"]
    appointment["end"] = max(slots, key=lambda s: s["end"])["end"]
    svc = ResourceService(BoundDatabase(conn), service.tenant, service.actor, UNRESTRICTED)
    present = {(p.get("actor") or {}).get("reference") for p in appointment.get("participant") or []}
    for schedule_id in sorted({sid for s in slots if (sid := ref_id(s.get("schedule"), "Schedule"))}):
        try:
            schedule = _content(await svc.read_in(conn, "Schedule", schedule_id))
        except (ResourceNotFound, ResourceGone):
            continue
        for actor in schedule.get("actor") or []:
            ref = actor.get("reference")
            if ref and ref.split("/")[0] in ("Practitioner", "PractitionerRole", "Location", "HealthcareService") \
                    and ref not in present:
                appointment.setdefault("participant", []).append({"actor": {"reference": ref}, "status": "accepted"})
                present.add(ref)


# ---- $book ------------------------------------------------------------------------------------
async def book(service: ResourceService, appointment: dict[str, Any]) -> WriteResult:
    """A ``booked`` Appointment on its Slot(s); an existing proposed/pending one is confirmed."""
    if appointment.get("id"):
        try:
            await service.read(appointment["resourceType"], appointment["id"])
        except ResourceNotFound:
            pass
        else:
            return await confirm(service, appointment["id"], appointment)
    if not slot_ids(appointment) and not (appointment.get("start") and appointment.get("end")):
        raise UnprocessableEntity("A booking needs a slot (or a start and an end)", expression="Appointment.slot")
    if not actors(appointment, "Patient"):
        raise UnprocessableEntity("A booking needs a patient participant", expression="Appointment.participant")
    appointment = {**appointment, "status": "booked"}
    appointment.pop("id", None)
    appointment.pop("meta", None)
    appointment.setdefault("created", format_instant(now()))
    async with service.db.transaction() as conn:
        await _fill_from_slots(service, conn, appointment)
        check_resource("Appointment", appointment, id_required=False)
        return await service.create_in(conn, "Appointment", appointment)


async def _change(service: ResourceService, appointment_id: str, action: str, allowed_from: tuple[str, ...],
                  change: Any, *, done: tuple[str, ...] = ()) -> tuple[StoredVersion, bool]:
    """Read, check the status, apply ``change`` and write, in one transaction. An Appointment already
    in a ``done`` status is answered as it is (the operation is idempotent)."""
    async with service.db.transaction() as conn:
        await lock(conn, service.tenant, "check-in", appointment_id)
        current = await service.read_in(conn, "Appointment", appointment_id)
        appt = _content(current)
        status = appt.get("status", "")
        if status in done:
            return current, False
        if status not in allowed_from:
            _wrong_status(status, action, allowed_from)
        await change(conn, appt)
        appt.pop("meta", None)
        check_resource("Appointment", appt, id_required=True)
        result = await service.update_in(conn, "Appointment", appointment_id, appt, None)
        return result.version, True


async def confirm(service: ResourceService, appointment_id: str, given: dict[str, Any] | None = None) -> WriteResult:
    async def change(conn: Any, appt: dict[str, Any]) -> None:
        for key in ("slot", "participant", "appointmentType", "reasonCode", "comment"):
            if given and given.get(key):
                appt[key] = given[key]
        appt["status"] = "booked"
        await _fill_from_slots(service, conn, appt)

    version, _ = await _change(service, appointment_id, "confirm", BOOKABLE_FROM, change, done=("booked",))
    return WriteResult(version, created=False)


async def cancel(service: ResourceService, appointment_id: str, reason: dict[str, Any]) -> StoredVersion:
    async def change(conn: Any, appt: dict[str, Any]) -> None:
        appt["status"] = "cancelled"
        appt["cancelationReason"] = reason

    version, _ = await _change(service, appointment_id, "cancel", ("proposed", "pending", "waitlist", "booked"), change)
    return version


async def reschedule(service: ResourceService, appointment_id: str, slots: list[str]) -> StoredVersion:
    """The same Appointment, a new version on the new Slot(s): the old ones are freed and the new
    ones taken in one transaction (a full new slot leaves everything as it was)."""
    async def change(conn: Any, appt: dict[str, Any]) -> None:
        appt["slot"] = [{"reference": f"Slot/{s}"} for s in slots]
        await _fill_from_slots(service, conn, appt)

    version, _ = await _change(service, appointment_id, "reschedule", RESCHEDULABLE, change)
    return version


async def complete(service: ResourceService, appointment_id: str) -> StoredVersion:
    async def change(conn: Any, appt: dict[str, Any]) -> None:
        appt["status"] = "fulfilled"

    version, _ = await _change(service, appointment_id, "complete", ("arrived", "checked-in"), change,
                               done=("fulfilled",))
    return version


async def no_show(service: ResourceService, appointment_id: str) -> StoredVersion:
    async def change(conn: Any, appt: dict[str, Any]) -> None:
        appt["status"] = "noshow"

    version, _ = await _change(service, appointment_id, "no-show", ("booked",), change, done=("noshow",))
    return version


# ---- check-in ---------------------------------------------------------------------------------
async def check_in(service: ResourceService, appointment_id: str) -> CheckIn:
    """booked → arrived with its Encounter and token; again: the same Encounter and token."""
    async with service.db.transaction() as conn:
        await lock(conn, service.tenant, "check-in", appointment_id)
        current = await service.read_in(conn, "Appointment", appointment_id)
        appt = _content(current)
        status = appt.get("status", "")
        if status in ("arrived", "fulfilled"):
            visit = await checkin.existing_visit(conn, service.tenant, appointment_id)
            if visit is None:  # arrived without one (e.g. created so): open it now
                visit = await rules.check_in(conn, service.on(conn), appt)
            return CheckIn(appt, visit.encounter, visit.token, created=False)
        if status not in ("booked", "checked-in"):
            _wrong_status(status, "check-in", ("booked", "checked-in"))
        appt["status"] = "arrived"
        appt.pop("meta", None)
        result = await service.update_in(conn, "Appointment", appointment_id, appt, None)
        visit = await checkin.existing_visit(conn, service.tenant, appointment_id)
        assert visit is not None  # the after-write hook opened it
        return CheckIn(_content(result.version), visit.encounter, visit.token, created=True)


async def walk_in(service: ResourceService, *, patient: str, practitioner: str, location: str | None,
                  organization: str | None) -> CheckIn:
    async with service.db.transaction() as conn:
        visit = await checkin.open_visit(conn, service, patient=patient, practitioner=practitioner,
                                         location=location, organization=organization)
        return CheckIn(None, visit.encounter, visit.token, created=True)


async def queue(service: ResourceService, *, practitioner: str, day: str | None, location: str | None,
                statuses: list[str]) -> list[dict[str, Any]]:
    """The day's queue of a doctor in token order: token, encounter, patient, status, arrival, waiting minutes."""
    params = [("practitioner", f"Practitioner/{practitioner}"), ("queue-date", day or local_day()),
              ("status", ",".join(statuses))]
    if location:
        params.append(("location", f"Location/{location}"))
    async with service.db.connection() as conn:
        found = await find_matches(conn, service.tenant, "Encounter", urlencode(params), limit=10_000,
                                   access=service.access)
    rows = []
    at = now()
    for v in found:
        enc = _content(v)
        arrived = (enc.get("period") or {}).get("start")
        waited = None
        if arrived and enc.get("status") == "arrived":
            waited = max(0, int((at - datetime.fromisoformat(arrived)).total_seconds() // 60))
        rows.append({"token": checkin.token_of(enc) or 0, "encounter": f"Encounter/{v.id}",
                     "patient": (enc.get("subject") or {}).get("reference"), "status": enc.get("status"),
                     "arrived": arrived, "waitingMinutes": waited})
    return sorted(rows, key=lambda r: r["token"])


# ---- no-shows ---------------------------------------------------------------------------------
async def mark_noshows(service: ResourceService) -> list[str]:
    """Every booked Appointment whose start + grace has passed becomes ``noshow`` (ids returned)."""
    cutoff = now() - grace()
    async with service.db.connection() as conn:
        due = await search(conn, service.tenant, "Appointment", [("status", "booked"), ("date", f"lt{format_instant(cutoff)}")])
    marked = []
    for v in due:
        try:
            await no_show(service, v.id)
            marked.append(v.id)
        except VersionConflict:
            continue  # changed meanwhile (checked in, cancelled)
    return marked


__all__ = ["ACTIVE", "CheckIn", "book", "cancel", "check_in", "complete", "confirm", "mark_noshows", "no_show",
           "queue", "reschedule", "walk_in"]
