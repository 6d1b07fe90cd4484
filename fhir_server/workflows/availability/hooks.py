"""Write hooks of availability (``fhir_server.services.hooks``), on every write path.

Guards (before anything is stored):
* a Schedule, PractitionerRole or facility Location whose availability elements or ``schedule-*``
  extensions are malformed is refused (400, ``expression`` names the element);
* a ``doctor`` may write only their own hours: a PractitionerRole whose ``practitioner`` is their
  ``fhirUser``, a Schedule whose ``actor`` Practitioner is their ``fhirUser`` — before and after the
  write (so a doctor can neither change another doctor's hours nor take them over). Other roles that
  may write these types at all (admin, receptionist; roles.json) may set anyone's hours.

After the write (same transaction): the Slots of the affected Schedules are reconciled
(``produce.reconcile``), so a change of hours, a new leave or a facility holiday shows in free
slots at once and flags booked slots that no longer fit.
"""

from __future__ import annotations

from typing import Any

from fhir_server.errors import Forbidden
from fhir_server.services.hooks import WriteEvent, after_write, guard
from fhir_server.workflows.availability.model import (
    EXT_HOLIDAY,
    EXT_TIMEZONE,
    check_location,
    check_practitioner_role,
    check_schedule,
    reference_ids,
)
from fhir_server.workflows.availability.produce import reconcile, schedules_of

_ROLE_FIELDS = ("availableTime", "notAvailable", "active", "period", "specialty", "location", "practitioner")


def practitioner_id(fhir_user: str | None) -> str | None:
    """``Practitioner/123`` (or an absolute URL ending so) → ``123``."""
    if not fhir_user:
        return None
    parts = fhir_user.rstrip("/").split("/")
    if len(parts) >= 2 and parts[-2] == "Practitioner":
        return parts[-1]
    return None


def _owners(resource_type: str, content: dict[str, Any]) -> list[str]:
    if resource_type == "PractitionerRole":
        return reference_ids(content.get("practitioner"), "Practitioner")
    return reference_ids(content.get("actor"), "Practitioner")


@guard("PractitionerRole", "Schedule")
def own_hours_only(event: WriteEvent) -> None:
    if event.after is not None:
        (check_schedule if event.resource_type == "Schedule" else check_practitioner_role)(event.after)
    if event.actor.role != "doctor":
        return
    me = practitioner_id(event.actor.fhir_user)
    where = "PractitionerRole.practitioner" if event.resource_type == "PractitionerRole" else "Schedule.actor"
    for content in (event.before, event.after):
        if content is None:
            continue
        owners = _owners(event.resource_type, content)
        if me is None or not owners or any(o != me for o in owners):
            raise Forbidden(
                f"A doctor may change only their own hours: this {event.resource_type} is not for "
                f"{event.actor.fhir_user or 'a token without fhirUser'}",
                expression=where,
            )


@guard("Location")
def facility_holidays(event: WriteEvent) -> None:
    if event.after is not None:
        check_location(event.after)


@after_write("Schedule")
async def schedule_written(conn: Any, service: Any, event: WriteEvent) -> None:
    if event.actor.role == "doctor" and event.after is not None:
        await _doctor_owns_roles(conn, event)
    await reconcile(conn, service, event.resource_id)


async def _doctor_owns_roles(conn: Any, event: WriteEvent) -> None:
    """The PractitionerRole a doctor's Schedule names must be their own too (the guard cannot read it)."""
    me = practitioner_id(event.actor.fhir_user)
    roles = reference_ids((event.after or {}).get("actor"), "PractitionerRole")
    if not roles:
        return
    cur = await conn.execute(
        "SELECT DISTINCT target_id FROM idx_reference WHERE tenant_id = %s AND resource_type = 'PractitionerRole' "
        "AND resource_id = ANY(%s) AND param = 'practitioner' AND target_type = 'Practitioner'",
        (event.tenant, roles),
    )
    owners = {row[0] for row in await cur.fetchall()}
    if owners - {me}:
        raise Forbidden("A doctor may change only their own hours: the Schedule names another doctor's PractitionerRole",
                        expression="Schedule.actor")


def _changed(event: WriteEvent, keys: tuple[str, ...], extensions: tuple[str, ...] = ()) -> bool:
    if event.before is None or event.after is None:
        return True

    def view(c: dict[str, Any]) -> Any:
        return ([c.get(k) for k in keys], [e for e in c.get("extension") or [] if e.get("url") in extensions])

    return view(event.before) != view(event.after)


@after_write("PractitionerRole")
async def role_written(conn: Any, service: Any, event: WriteEvent) -> None:
    if not _changed(event, _ROLE_FIELDS):
        return
    for schedule_id in await schedules_of(conn, event.tenant, "PractitionerRole", event.resource_id):
        await reconcile(conn, service, schedule_id)


@after_write("Location")
async def location_written(conn: Any, service: Any, event: WriteEvent) -> None:
    if not _changed(event, (), (EXT_HOLIDAY, EXT_TIMEZONE)):
        return
    for schedule_id in await schedules_of(conn, event.tenant, "Location", event.resource_id):
        await reconcile(conn, service, schedule_id)
