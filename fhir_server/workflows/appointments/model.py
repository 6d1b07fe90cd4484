"""What the appointment workflow reads from R4 Appointment, Slot and Encounter
(https://hl7.org/fhir/R4/appointment.html, slot.html, encounter.html), its constants, and the
small helpers every module of the package shares (references, instants, searches, row locks).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from functools import cache
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from fhir_server.services.conditional import find_matches
from fhir_server.storage.locks import advisory_lock
from fhir_server.storage.repository import StoredVersion
from fhir_server.timeutil import now
from fhir_server.workflows.references import ref_id

BASE = "https://fhir-server.example.org/fhir"
TOKEN_SYSTEM = f"{BASE}/sid/opd-token"  # Encounter.identifier: the OPD queue token of a check-in
CAPACITY_URL = f"{BASE}/StructureDefinition/slot-capacity"  # valuePositiveInt on Slot (or its Schedule)
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"

# statuses that take a place on the Slot(s) of an Appointment (cancelled/noshow/entered-in-error free it)
HOLDING = ("booked", "arrived", "checked-in", "fulfilled")
# statuses in which a patient is expected somewhere: two of these may not overlap for one patient
ACTIVE = ("booked", "arrived", "checked-in")
UNBOOKABLE_SLOT = ("busy-unavailable", "entered-in-error")

_SEARCH_LIMIT = 10_000


@cache
def settings() -> Any:
    from fhir_server.settings import Settings

    return Settings()


def grace() -> timedelta:
    return timedelta(minutes=int(getattr(settings(), "noshow_grace_minutes", 15)))


def opd_zone() -> ZoneInfo:
    return ZoneInfo(str(getattr(settings(), "opd_timezone", "Asia/Kolkata")))


def slot_ids(appointment: dict[str, Any] | None) -> list[str]:
    out = [ref_id(s, "Slot") for s in (appointment or {}).get("slot") or []]
    return sorted({s for s in out if s})


def actors(appointment: dict[str, Any] | None, resource_type: str) -> list[str]:
    """Ids of the participants of ``resource_type`` (declined participants do not count)."""
    out = []
    for p in (appointment or {}).get("participant") or []:
        if p.get("status") == "declined":
            continue
        rid = ref_id(p.get("actor"), resource_type)
        if rid and rid not in out:
            out.append(rid)
    return out


def status_of(resource: dict[str, Any] | None) -> str | None:
    return None if resource is None else resource.get("status")


def instant(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def local_day(at: datetime | None = None) -> str:
    """The OPD day (``FHIR_OPD_TIMEZONE``) of ``at`` (default now), as a FHIR date."""
    return (at or now()).astimezone(opd_zone()).date().isoformat()


async def lock(conn: Any, *parts: str) -> None:
    """A transaction-scoped advisory lock of the appointment rules (re-entrant on one connection)."""
    await advisory_lock(conn, "appointments", *parts)


async def search(conn: Any, tenant: str, resource_type: str, params: list[tuple[str, str]]) -> list[StoredVersion]:
    """Every live match, whoever asks (the rules must see the whole tenant, not the caller's part)."""
    return await find_matches(conn, tenant, resource_type, urlencode(params), limit=_SEARCH_LIMIT)
