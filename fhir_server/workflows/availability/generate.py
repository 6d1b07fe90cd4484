"""Rules → the Slots a schedule should have (R4 slot.html), pure and deterministic: no database.

Per local day of the horizon: each ``availableTime`` session of that weekday, minus the breaks of
that day, is cut into slots of the schedule's length from the start of each remaining piece (a
piece shorter than a slot gives none). A slot overlapping leave (``PractitionerRole.notAvailable``),
a facility holiday or lying outside ``planningHorizon`` is left out. Times are local to the
schedule's time zone (``schedule-timezone``), so 09:00 stays 09:00 across a DST change.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from fhir_server.workflows.availability.model import DAYS, EXT_SLOT_CAPACITY, Rules, slot_id


@dataclass(frozen=True, slots=True)
class PlannedSlot:
    id: str
    start: datetime  # aware, local
    end: datetime


def _pieces(rules: Rules, day: date) -> list[tuple[time, time | None]]:
    dow = DAYS[day.weekday()]
    out: list[tuple[time, time | None]] = []
    for s in rules.sessions:
        if dow not in s.days:
            continue
        pieces: list[tuple[time, time | None]] = [(s.start, s.end)]
        for b in rules.breaks:
            if b.days is not None and dow not in b.days:
                continue
            nxt: list[tuple[time, time | None]] = []
            for start, end in pieces:
                stop = end or time.max
                if b.end <= start or b.start >= stop:
                    nxt.append((start, end))
                    continue
                if b.start > start:
                    nxt.append((start, b.start))
                if b.end < stop:
                    nxt.append((b.end, end))
            pieces = nxt
        out.extend(pieces)
    return out


def _local(day: date, t: time, rules: Rules) -> datetime:
    return datetime.combine(day, t, tzinfo=rules.timezone)


def plan(rules: Rules, now: datetime) -> list[PlannedSlot]:
    """The slots from ``now`` (slots starting earlier are not planned) to the end of the horizon
    (today + ``horizon_days`` local days), soonest first."""
    if not rules.active or not rules.sessions:
        return []
    tz = rules.timezone
    today = now.astimezone(tz).date()
    length = timedelta(minutes=rules.slot_minutes)
    lo, hi = rules.horizon
    blocked = sorted(rules.blocked)
    out: list[PlannedSlot] = []
    seen: set[str] = set()
    for offset in range(rules.horizon_days + 1):
        day = today + timedelta(days=offset)
        for start_t, end_t in _pieces(rules, day):
            t = _local(day, start_t, rules)
            stop = _local(day + timedelta(days=1), time(0), rules) if end_t is None else _local(day, end_t, rules)
            while t + length <= stop:
                # step in UTC so a slot is always `length` long, then show it in local time
                end = (t.astimezone(UTC) + length).astimezone(tz)
                ok = t >= now and (lo is None or t >= lo) and (hi is None or end <= hi)
                if ok:
                    for b_start, b_end in blocked:
                        if b_start >= end:
                            break
                        if b_end > t:
                            ok = False
                            break
                if ok:
                    sid = slot_id(rules.schedule_id, t.astimezone(UTC))
                    if sid not in seen:  # overlapping sessions give a slot once
                        seen.add(sid)
                        out.append(PlannedSlot(sid, t, end))
                t = end
    out.sort(key=lambda s: s.start)
    return out


def instant(t: datetime) -> str:
    """An R4 instant with the local offset (``2026-12-01T09:00:00+05:30``)."""
    text = t.isoformat(timespec="seconds")
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def slot_resource(rules: Rules, planned: PlannedSlot) -> dict[str, Any]:
    """The free Slot for ``planned`` (what a booking marks busy)."""
    slot: dict[str, Any] = {"resourceType": "Slot", "id": planned.id}
    if rules.security:
        slot["meta"] = {"security": [dict(s) for s in rules.security]}
    slot["extension"] = [{"url": EXT_SLOT_CAPACITY, "valuePositiveInt": rules.capacity}]
    if rules.service_type:
        slot["serviceType"] = rules.service_type
    if rules.specialty:
        slot["specialty"] = rules.specialty
    slot["schedule"] = {"reference": f"Schedule/{rules.schedule_id}"}
    slot["status"] = "free"
    slot["start"] = instant(planned.start)
    slot["end"] = instant(planned.end)
    return slot
