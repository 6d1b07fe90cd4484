"""OPD check-in: the Encounter of a visit and its queue token (https://hl7.org/fhir/R4/encounter.html,
class ``AMB``; ``Encounter.appointment`` links it to the Appointment).

The token is the next number in one queue: tenant + practitioner + facility + OPD day (local date in
``FHIR_OPD_TIMEZONE``). It is an ``Encounter.identifier`` of system ``TOKEN_SYSTEM`` whose value is the
number and whose ``period`` is that day (date precision), searchable as ``token`` (number, for
``_sort``) and ``queue-date`` (project SearchParameters). Numbers are handed out under an advisory
lock on the queue, so concurrent check-ins get 1, 2, 3… without gaps or repeats. One Appointment
gets one Encounter: check-in takes a lock on the Appointment and reuses the Encounter it finds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from fhir_server.services.resources import ResourceService
from fhir_server.storage import repository as repo
from fhir_server.timeutil import format_instant, now
from fhir_server.workflows.appointments.model import (
    ACT_CODE,
    TOKEN_SYSTEM,
    actors,
    local_day,
    lock,
    search,
)


@dataclass(frozen=True, slots=True)
class Visit:
    encounter: dict[str, Any]
    token: int
    created: bool


def token_of(encounter: dict[str, Any]) -> int | None:
    for ident in encounter.get("identifier") or []:
        if ident.get("system") == TOKEN_SYSTEM and str(ident.get("value", "")).isdigit():
            return int(ident["value"])
    return None


def _facility_param(location: str | None, organization: str | None) -> list[tuple[str, str]]:
    if location:
        return [("location", f"Location/{location}")]
    if organization:
        return [("service-provider", f"Organization/{organization}")]
    return []


async def next_token(conn: Any, tenant: str, practitioner: str, location: str | None, organization: str | None,
                     day: str) -> int:
    """The next token of the queue (``conn`` in a transaction: the queue stays locked until it ends)."""
    facility = f"Location/{location}" if location else f"Organization/{organization}" if organization else "-"
    await lock(conn, tenant, "queue", practitioner, facility, day)
    found = await search(conn, tenant, "Encounter", [
        ("practitioner", f"Practitioner/{practitioner}"), ("queue-date", day),
        *_facility_param(location, organization),
    ])
    numbers = [t for v in found if (t := token_of(orjson.loads(v.content or "{}"))) is not None]
    return max(numbers, default=0) + 1


async def existing_visit(conn: Any, tenant: str, appointment_id: str) -> Visit | None:
    found = await repo.referring(conn, tenant, "Encounter", "appointment", "Appointment", appointment_id, 1)
    if not found:
        return None
    enc = orjson.loads(found[0].content or "{}")
    return Visit(enc, token_of(enc) or 0, created=False)


def _encounter(patient: str, practitioner: str, location: str | None, organization: str | None, token: int,
               day: str, appointment: dict[str, Any] | None) -> dict[str, Any]:
    enc: dict[str, Any] = {
        "resourceType": "Encounter",
        "identifier": [{"use": "usual", "type": {"text": "OPD token"}, "system": TOKEN_SYSTEM, "value": str(token),
                        "period": {"start": day, "end": day}}],
        "status": "arrived",
        "statusHistory": [{"status": "arrived", "period": {"start": format_instant(now())}}],
        "class": {"system": ACT_CODE, "code": "AMB", "display": "ambulatory"},
        "subject": {"reference": f"Patient/{patient}"},
        "participant": [{"individual": {"reference": f"Practitioner/{practitioner}"}}],
        "period": {"start": format_instant(now())},
    }
    if appointment is not None:
        enc["appointment"] = [{"reference": f"Appointment/{appointment['id']}"}]
        if appointment.get("appointmentType"):
            enc["type"] = [appointment["appointmentType"]]
        for key in ("reasonCode", "reasonReference"):
            if appointment.get(key):
                enc[key] = appointment[key]
        if appointment.get("serviceType"):
            enc["serviceType"] = appointment["serviceType"][0]
    if location:
        enc["location"] = [{"location": {"reference": f"Location/{location}"}, "status": "active"}]
    if organization:
        enc["serviceProvider"] = {"reference": f"Organization/{organization}"}
    return enc


async def open_visit(conn: Any, service: ResourceService, *, patient: str, practitioner: str,
                     location: str | None, organization: str | None,
                     appointment: dict[str, Any] | None = None) -> Visit:
    """The OPD Encounter with the next token (for an Appointment: the one it already has, if any)."""
    if appointment is not None:
        await lock(conn, service.tenant, "check-in", appointment["id"])
        visit = await existing_visit(conn, service.tenant, appointment["id"])
        if visit is not None:
            return visit
    day = local_day()
    token = await next_token(conn, service.tenant, practitioner, location, organization, day)
    enc = _encounter(patient, practitioner, location, organization, token, day, appointment)
    result = await service.create_in(conn, "Encounter", enc)
    return Visit(orjson.loads(result.version.content or "{}"), token, created=True)


def visit_parties(appointment: dict[str, Any]) -> tuple[str | None, str | None, str | None, str | None]:
    """(patient, practitioner, location, organization) of an Appointment."""
    def first(xs: list[str]) -> str | None:
        return xs[0] if xs else None

    return (first(actors(appointment, "Patient")), first(actors(appointment, "Practitioner")),
            first(actors(appointment, "Location")), None)
