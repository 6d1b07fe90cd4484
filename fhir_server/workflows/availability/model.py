"""A doctor's working hours as data: PractitionerRole (R4 practitionerrole.html: ``availableTime``,
``notAvailable``), Schedule (R4 schedule.html: ``actor``, ``planningHorizon``, ``serviceType``) and
the facility's Location, plus the project extensions where R4 has no element (README.md of this
package; StructureDefinitions in ``fhir_server/definitions/project/structuredefinitions/schedule-*.json``).

``Rules`` is everything slot production needs, parsed once; parsing errors are ``InvalidResource``
naming the element at fault, so a bad Schedule or PractitionerRole is refused before it is stored.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fhir_server.errors import InvalidResource

SD = "https://fhir-server.example.org/fhir/StructureDefinition/"
EXT_SLOT_DURATION = SD + "schedule-slot-duration"
EXT_SLOT_CAPACITY = SD + "slot-capacity"  # defined by the booking workflow (appointment-slot-capacity.json)
EXT_HORIZON_DAYS = SD + "schedule-horizon-days"
EXT_BREAK = SD + "schedule-break"
EXT_VISIT_TYPE = SD + "schedule-visit-type"
EXT_TIMEZONE = SD + "schedule-timezone"
EXT_HOLIDAY = SD + "schedule-holiday"
EXT_REBOOK_REASON = SD + "schedule-rebook-reason"

VISIT_TYPE_SYSTEM = "https://fhir-server.example.org/fhir/CodeSystem/visit-type"
FLAG_SYSTEM = "https://fhir-server.example.org/fhir/CodeSystem/schedule-flag"
NEEDS_REBOOKING = "needs-rebooking"
REBOOK_TAG = {"system": FLAG_SYSTEM, "code": NEEDS_REBOOKING, "display": "Booked slot outside the doctor's hours: rebook"}

DEFAULT_SLOT_MINUTES = 15
DEFAULT_HORIZON_DAYS = 90
MAX_HORIZON_DAYS = 400
DEFAULT_TIMEZONE = "UTC"
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # date.weekday() order

_UNIT_MINUTES = {"min": 1, "h": 60, "d": 1440}


@dataclass(frozen=True, slots=True)
class Session:
    days: frozenset[str]
    start: time
    end: time | None  # None: until midnight (allDay, or an end of 24:00)


@dataclass(frozen=True, slots=True)
class Break:
    days: frozenset[str] | None  # None: every day
    start: time
    end: time


@dataclass(frozen=True, slots=True)
class VisitType:
    system: str
    code: str
    minutes: int
    display: str | None = None


@dataclass(slots=True)
class Rules:
    schedule_id: str
    active: bool
    timezone: ZoneInfo
    slot_minutes: int
    capacity: int
    horizon_days: int
    sessions: list[Session] = field(default_factory=list)
    breaks: list[Break] = field(default_factory=list)
    blocked: list[tuple[datetime, datetime]] = field(default_factory=list)  # leave and holidays (aware)
    horizon: tuple[datetime | None, datetime | None] = (None, None)  # Schedule.planningHorizon
    visit_types: list[VisitType] = field(default_factory=list)
    service_type: list[dict[str, Any]] = field(default_factory=list)
    specialty: list[dict[str, Any]] = field(default_factory=list)
    security: list[dict[str, Any]] = field(default_factory=list)

    def slots_for(self, visit_minutes: int) -> int:
        """How many consecutive slots a visit of ``visit_minutes`` needs."""
        return max(1, math.ceil(visit_minutes / self.slot_minutes))


def slot_prefix(schedule_id: str) -> str:
    """The 16 hex digits every generated Slot id of ``schedule_id`` starts with."""
    return hashlib.blake2b(schedule_id.encode(), digest_size=8).hexdigest()


def slot_id(schedule_id: str, start_utc: datetime) -> str:
    """Deterministic Slot id: schedule prefix + UTC start ``YYYYMMDDHHMM`` (28 characters, [0-9a-f]
    only, so ids of one schedule sort by start under any collation and a range of them is one
    primary-key index range)."""
    return slot_prefix(schedule_id) + start_utc.strftime("%Y%m%d%H%M")


# ---- element readers -------------------------------------------------------------------------
def extensions(resource: dict[str, Any], url: str) -> list[dict[str, Any]]:
    return [e for e in resource.get("extension") or [] if isinstance(e, dict) and e.get("url") == url]


def sub_extensions(ext: dict[str, Any], url: str) -> list[dict[str, Any]]:
    return [e for e in ext.get("extension") or [] if isinstance(e, dict) and e.get("url") == url]


def _time(value: Any, where: str) -> time:
    try:
        return time.fromisoformat(str(value))
    except ValueError:
        raise InvalidResource(f"'{value}' is not a time (hh:mm:ss)", expression=where) from None


def _end_time(value: Any, where: str) -> time | None:
    if str(value).startswith("24:00"):
        return None
    t = _time(value, where)
    return None if t == time(0) else t


def minutes_of(ext: dict[str, Any], where: str) -> int:
    if "valuePositiveInt" in ext:
        return int(ext["valuePositiveInt"])
    d = ext.get("valueDuration")
    if isinstance(d, dict) and isinstance(d.get("value"), int | float) and d.get("code", "min") in _UNIT_MINUTES:
        minutes = d["value"] * _UNIT_MINUTES[d.get("code", "min")]
        if minutes >= 1 and minutes == int(minutes):
            return int(minutes)
    raise InvalidResource("A duration needs valueDuration in whole minutes (code min, h or d)", expression=where)


def _positive(ext: dict[str, Any], where: str, maximum: int) -> int:
    value = ext.get("valuePositiveInt")
    if not isinstance(value, int) or not 1 <= value <= maximum:
        raise InvalidResource(f"valuePositiveInt between 1 and {maximum} expected", expression=where)
    return value


def _instant(value: Any, tz: ZoneInfo, where: str, *, end: bool = False) -> datetime:
    """A dateTime (any precision) as an aware datetime; a date alone is local midnight (an end date
    counts as the whole day)."""
    text = str(value)
    try:
        if len(text) == 4:
            d = datetime(int(text), 1, 1, tzinfo=tz)
            return d.replace(year=d.year + 1) if end else d
        if len(text) == 7:
            d = datetime(int(text[:4]), int(text[5:7]), 1, tzinfo=tz)
            return (d + timedelta(days=32)).replace(day=1) if end else d
        if len(text) == 10:
            d = datetime.fromisoformat(text).replace(tzinfo=tz)
            return d + timedelta(days=1) if end else d
        d = datetime.fromisoformat(text)
        return d if d.tzinfo else d.replace(tzinfo=tz)
    except ValueError:
        raise InvalidResource(f"'{value}' is not a dateTime", expression=where) from None


def _period(period: Any, tz: ZoneInfo, where: str) -> tuple[datetime, datetime]:
    if not isinstance(period, dict) or not (period.get("start") or period.get("end")):
        raise InvalidResource("A period needs a start or an end", expression=where)
    start = _instant(period["start"], tz, where + ".start") if period.get("start") else datetime(1, 1, 2, tzinfo=tz)
    stop = _instant(period["end"], tz, where + ".end", end=True) if period.get("end") else datetime(9999, 12, 30, tzinfo=tz)
    return start, stop


def timezone_of(*resources: dict[str, Any] | None) -> ZoneInfo:
    """The first ``schedule-timezone`` among ``resources`` (Schedule, then the facility Location)."""
    for i, res in enumerate(resources):
        for ext in extensions(res or {}, EXT_TIMEZONE):
            where = f"{(res or {}).get('resourceType', 'Resource')}.extension('{EXT_TIMEZONE}')"
            try:
                return ZoneInfo(str(ext.get("valueCode")))
            except (ZoneInfoNotFoundError, ValueError):
                raise InvalidResource(f"Unknown time zone '{ext.get('valueCode')}' (an IANA name)", expression=where) from None
    return ZoneInfo(DEFAULT_TIMEZONE)


def reference_ids(refs: Any, resource_type: str) -> list[str]:
    """Ids of the ``resource_type/id`` references in a list of References (or one)."""
    if isinstance(refs, dict):
        refs = [refs]
    out = []
    for ref in refs or []:
        value = ref.get("reference") if isinstance(ref, dict) else None
        if isinstance(value, str) and value.startswith(resource_type + "/"):
            out.append(value.split("/")[1])
    return out


# ---- parsing ---------------------------------------------------------------------------------
def check_schedule(schedule: dict[str, Any]) -> None:
    """The project rules a Schedule must keep (refused at write time by the guard)."""
    parse(schedule, None, None)


def check_practitioner_role(role: dict[str, Any]) -> None:
    tz = ZoneInfo(DEFAULT_TIMEZONE)
    _sessions(role)
    for i, na in enumerate(role.get("notAvailable") or []):
        if isinstance(na, dict) and na.get("during"):
            _period(na["during"], tz, f"PractitionerRole.notAvailable[{i}].during")


def check_location(location: dict[str, Any]) -> None:
    tz = timezone_of(location)
    _holidays(location, tz)


def _sessions(role: dict[str, Any]) -> list[Session]:
    sessions = []
    for i, at in enumerate(role.get("availableTime") or []):
        where = f"PractitionerRole.availableTime[{i}]"
        days = frozenset(at.get("daysOfWeek") or DAYS)
        if at.get("allDay"):
            sessions.append(Session(days, time(0), None))
            continue
        if not at.get("availableStartTime") or not at.get("availableEndTime"):
            raise InvalidResource("availableTime needs availableStartTime and availableEndTime (or allDay)", expression=where)
        start = _time(at["availableStartTime"], where + ".availableStartTime")
        end = _end_time(at["availableEndTime"], where + ".availableEndTime")
        if end is not None and end <= start:
            raise InvalidResource("availableEndTime must be after availableStartTime", expression=where + ".availableEndTime")
        sessions.append(Session(days, start, end))
    return sessions


def _holidays(location: dict[str, Any], tz: ZoneInfo) -> list[tuple[datetime, datetime]]:
    out = []
    for i, ext in enumerate(extensions(location, EXT_HOLIDAY)):
        where = f"Location.extension('{EXT_HOLIDAY}')[{i}]"
        during = sub_extensions(ext, "during")
        if not during:
            raise InvalidResource("A holiday needs a 'during' (valuePeriod)", expression=where)
        out.append(_period(during[0].get("valuePeriod"), tz, where + ".during"))
    return out


def parse(schedule: dict[str, Any], role: dict[str, Any] | None, location: dict[str, Any] | None) -> Rules:
    """The rules of ``schedule`` with its PractitionerRole (hours, leave) and facility (holidays)."""
    tz = timezone_of(schedule, location)
    name = "Schedule"
    slot_minutes = DEFAULT_SLOT_MINUTES
    for ext in extensions(schedule, EXT_SLOT_DURATION):
        slot_minutes = minutes_of(ext, f"{name}.extension('{EXT_SLOT_DURATION}')")
        if slot_minutes > 1440:
            raise InvalidResource("A slot is at most a day long", expression=f"{name}.extension('{EXT_SLOT_DURATION}')")
    capacity = 1
    for ext in extensions(schedule, EXT_SLOT_CAPACITY):
        capacity = _positive(ext, f"{name}.extension('{EXT_SLOT_CAPACITY}')", 1000)
    horizon_days = DEFAULT_HORIZON_DAYS
    for ext in extensions(schedule, EXT_HORIZON_DAYS):
        horizon_days = _positive(ext, f"{name}.extension('{EXT_HORIZON_DAYS}')", MAX_HORIZON_DAYS)
    breaks = []
    for i, ext in enumerate(extensions(schedule, EXT_BREAK)):
        where = f"{name}.extension('{EXT_BREAK}')[{i}]"
        start, end = sub_extensions(ext, "start"), sub_extensions(ext, "end")
        if not start or not end:
            raise InvalidResource("A break needs 'start' and 'end' (valueTime)", expression=where)
        b_start = _time(start[0].get("valueTime"), where + ".start")
        b_end = _end_time(end[0].get("valueTime"), where + ".end")
        days = frozenset(str(d.get("valueCode")) for d in sub_extensions(ext, "dayOfWeek")) or None
        if days and not days <= set(DAYS):
            raise InvalidResource("dayOfWeek is one of mon..sun", expression=where + ".dayOfWeek")
        breaks.append(Break(days, b_start, b_end or time.max))
    visit_types = []
    for i, ext in enumerate(extensions(schedule, EXT_VISIT_TYPE)):
        where = f"{name}.extension('{EXT_VISIT_TYPE}')[{i}]"
        coding = (sub_extensions(ext, "type") or [{}])[0].get("valueCoding")
        duration = sub_extensions(ext, "duration")
        if not isinstance(coding, dict) or not coding.get("code") or not duration:
            raise InvalidResource("A visit type needs 'type' (valueCoding) and 'duration' (valueDuration)", expression=where)
        visit_types.append(VisitType(coding.get("system") or VISIT_TYPE_SYSTEM, coding["code"],
                                     minutes_of(duration[0], where + ".duration"), coding.get("display")))
    ph = schedule.get("planningHorizon") or {}
    horizon = (
        _instant(ph["start"], tz, f"{name}.planningHorizon.start") if ph.get("start") else None,
        _instant(ph["end"], tz, f"{name}.planningHorizon.end", end=True) if ph.get("end") else None,
    )
    rules = Rules(
        schedule_id=str(schedule.get("id") or ""), active=schedule.get("active", True) is not False, timezone=tz,
        slot_minutes=slot_minutes, capacity=capacity, horizon_days=horizon_days, breaks=breaks,
        horizon=horizon, visit_types=visit_types,
    )
    rules.service_type = list(schedule.get("serviceType") or [])
    rules.specialty = list(schedule.get("specialty") or (role or {}).get("specialty") or [])
    rules.security = [s for s in (schedule.get("meta") or {}).get("security") or [] if isinstance(s, dict)]
    if role is not None:
        if role.get("active") is False:
            rules.active = False
        rules.sessions = _sessions(role)
        for i, na in enumerate(role.get("notAvailable") or []):
            if isinstance(na, dict) and na.get("during"):
                rules.blocked.append(_period(na["during"], tz, f"PractitionerRole.notAvailable[{i}].during"))
        ap = role.get("period") or {}
        if ap.get("start"):
            rules.blocked.append((datetime(1, 1, 2, tzinfo=tz), _instant(ap["start"], tz, "PractitionerRole.period.start")))
        if ap.get("end"):
            rules.blocked.append((_instant(ap["end"], tz, "PractitionerRole.period.end", end=True), datetime(9999, 12, 30, tzinfo=tz)))
    if location is not None:
        rules.blocked.extend(_holidays(location, tz))
    return rules
