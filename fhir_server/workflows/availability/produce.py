"""Materialised free Slots for a schedule's rolling horizon (R4 slot.html, schedule.html), kept in
step with its rules: ``reconcile`` compares the planned slots (``generate.plan``) with the stored
ones from now on and writes only the difference, in the caller's transaction.

* planned, not stored → created free (many in one statement: ``ResourceService.new_version_in`` +
  ``insert_many_in``); a deterministic id per schedule and start makes a second run a no-op;
* stored free, not planned → deleted, unless an active Appointment points at it (a booking in
  flight, or overbooking that keeps the slot free): then it is treated as booked;
* stored free, planned, different (length, capacity, service type…) → updated (other elements kept);
* stored booked (``busy``/``busy-unavailable``/``busy-tentative``, or referenced as above), not planned →
  never changed except for the rebooking flag: ``meta.tag`` ``schedule-flag#needs-rebooking`` and a
  ``schedule-rebook-reason`` extension (``Slot?_tag=…|needs-rebooking`` lists them); a booked slot that
  fits the hours again loses the flag.

An advisory lock per (tenant, schedule) serialises two reconciliations of one schedule.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from fhir_server.auth.visibility import UNRESTRICTED
from fhir_server.search.custom import pinned_registry, tenant_registry
from fhir_server.services.resources import BoundDatabase, ResourceService
from fhir_server.storage import repository as repo
from fhir_server.timeutil import now as server_now
from fhir_server.workflows.availability.generate import PlannedSlot, plan, slot_resource
from fhir_server.workflows.availability.model import (
    EXT_REBOOK_REASON,
    FLAG_SYSTEM,
    NEEDS_REBOOKING,
    REBOOK_TAG,
    Rules,
    parse,
    reference_ids,
    slot_prefix,
)

_CHUNK = 500
_ACTIVE_APPOINTMENT = ("booked", "arrived", "checked-in", "fulfilled")  # appointments.model.HOLDING
# the elements a reconciliation owns on a free slot; anything else (a booking engineer's extension) is kept
_OWNED = ("schedule", "status", "start", "end", "serviceType", "specialty")


@dataclass(slots=True)
class Summary:
    schedule: str
    created: int = 0
    updated: int = 0
    deleted: int = 0
    flagged: int = 0
    unflagged: int = 0
    planned: int = 0
    flagged_ids: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("schedule", "planned", "created", "updated", "deleted", "flagged", "unflagged")}


async def load_rules(conn: Any, tenant: str, schedule_id: str) -> Rules | None:
    """The rules of a live Schedule with its PractitionerRole and facility; None if it is gone."""
    schedule = await repo.fetch_current(conn, tenant, "Schedule", schedule_id)
    if schedule is None or schedule.deleted or not schedule.content:
        return None
    content = orjson.loads(schedule.content)
    role = location = None
    role_ids = reference_ids(content.get("actor"), "PractitionerRole")
    if role_ids:
        found = await repo.fetch_current(conn, tenant, "PractitionerRole", role_ids[0])
        if found is not None and not found.deleted and found.content:
            role = orjson.loads(found.content)
    loc_ids = reference_ids(content.get("actor"), "Location") or reference_ids((role or {}).get("location"), "Location")
    if loc_ids:
        found = await repo.fetch_current(conn, tenant, "Location", loc_ids[0])
        if found is not None and not found.deleted and found.content:
            location = orjson.loads(found.content)
    rules = parse(content, role, location)
    rules.schedule_id = schedule_id
    return rules


def _is_flagged(slot: dict[str, Any]) -> bool:
    return any(t.get("system") == FLAG_SYSTEM and t.get("code") == NEEDS_REBOOKING for t in (slot.get("meta") or {}).get("tag") or [])


def _flag(slot: dict[str, Any], reason: str) -> dict[str, Any]:
    out = dict(slot)
    meta = dict(out.get("meta") or {})
    meta.pop("versionId", None)
    meta.pop("lastUpdated", None)
    meta["tag"] = [*(meta.get("tag") or []), REBOOK_TAG]
    out["meta"] = meta
    out["extension"] = [*(e for e in out.get("extension") or [] if e.get("url") != EXT_REBOOK_REASON),
                        {"url": EXT_REBOOK_REASON, "valueString": reason}]
    return out


def _unflag(slot: dict[str, Any]) -> dict[str, Any]:
    out = dict(slot)
    meta = dict(out.get("meta") or {})
    meta.pop("versionId", None)
    meta.pop("lastUpdated", None)
    meta["tag"] = [t for t in meta.get("tag") or [] if not (t.get("system") == FLAG_SYSTEM and t.get("code") == NEEDS_REBOOKING)]
    if not meta["tag"]:
        del meta["tag"]
    out["meta"] = meta
    out["extension"] = [e for e in out.get("extension") or [] if e.get("url") != EXT_REBOOK_REASON]
    if not out["extension"]:
        del out["extension"]
    return out


def _differs(stored: dict[str, Any], wanted: dict[str, Any]) -> bool:
    if any(stored.get(k) != wanted.get(k) for k in _OWNED):
        return True
    cap = [e for e in stored.get("extension") or [] if e.get("url") == wanted["extension"][0]["url"]]
    if cap != wanted["extension"]:
        return True
    return (stored.get("meta") or {}).get("security") != (wanted.get("meta") or {}).get("security")


def _merge(stored: dict[str, Any], wanted: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in stored.items() if k not in _OWNED and k != "extension"}
    cap_url = wanted["extension"][0]["url"]
    out["extension"] = [*(e for e in stored.get("extension") or [] if e.get("url") != cap_url), *wanted["extension"]]
    meta = dict(stored.get("meta") or {})
    meta.pop("versionId", None)
    meta.pop("lastUpdated", None)
    if "meta" in wanted:
        meta["security"] = wanted["meta"]["security"]
    else:
        meta.pop("security", None)
    if meta:
        out["meta"] = meta
    else:
        out.pop("meta", None)
    for k in _OWNED:
        if k in wanted:
            out[k] = wanted[k]
        else:
            out.pop(k, None)
    return out


async def _stored(conn: Any, tenant: str, schedule_id: str, since: datetime) -> dict[str, tuple[bool, dict[str, Any] | None]]:
    """Generated slots of the schedule starting at or after ``since``: id → (deleted, content)."""
    prefix = slot_prefix(schedule_id)
    cur = await conn.execute(
        "SELECT id, deleted, content::text FROM resource WHERE tenant_id = %s AND resource_type = 'Slot' "
        "AND id >= %s AND id <= %s",
        (tenant, prefix + since.astimezone(UTC).strftime("%Y%m%d%H%M"), prefix + "999999999999"),
    )
    out: dict[str, tuple[bool, dict[str, Any] | None]] = {}
    for sid, deleted, text in await cur.fetchall():
        content = orjson.loads(text) if text else None
        if content is not None and (content.get("schedule") or {}).get("reference") != f"Schedule/{schedule_id}":
            continue  # not ours (another resource whose id happens to share the range)
        out[sid] = (deleted, content)
    return out


async def _held(conn: Any, tenant: str, slot_ids: list[str]) -> set[str]:
    """Which of ``slot_ids`` an active Appointment points at (``Appointment.slot``)."""
    if not slot_ids:
        return set()
    cur = await conn.execute(
        "SELECT DISTINCT r.target_id FROM idx_reference r JOIN idx_token s ON s.tenant_id = r.tenant_id "
        "AND s.resource_type = 'Appointment' AND s.resource_id = r.resource_id AND s.param = 'status' "
        "WHERE r.tenant_id = %s AND r.resource_type = 'Appointment' AND r.param = 'slot' AND r.target_type = 'Slot' "
        "AND r.target_id = ANY(%s) AND s.code = ANY(%s)",
        (tenant, slot_ids, list(_ACTIVE_APPOINTMENT)),
    )
    return {row[0] for row in await cur.fetchall()}


async def reconcile(conn: Any, service: ResourceService, schedule_id: str, *, now: datetime | None = None) -> Summary:
    """Bring the schedule's future Slots in line with its rules (``conn`` in a transaction)."""
    # one registry look-up for the whole run, not one per Slot (about half the cost of a new schedule)
    with pinned_registry(service.tenant, await tenant_registry(conn, service.tenant)):
        return await _reconcile(conn, service, schedule_id, now)


async def _reconcile(conn: Any, service: ResourceService, schedule_id: str, now: datetime | None) -> Summary:
    tenant = service.tenant
    await service.lock_in(conn, "schedule-slots", "Schedule", schedule_id)
    moment = now or server_now()
    rules = await load_rules(conn, tenant, schedule_id)
    planned: list[PlannedSlot] = plan(rules, moment) if rules is not None else []
    summary = Summary(schedule_id, planned=len(planned))
    stored = await _stored(conn, tenant, schedule_id, moment)
    wanted_ids = {p.id for p in planned}
    live = {sid: c for sid, (deleted, c) in stored.items() if not deleted and c is not None}
    leaving_free = [sid for sid, c in live.items() if c.get("status") == "free" and sid not in wanted_ids]
    held = await _held(conn, tenant, leaving_free)
    # unrestricted: the slots follow the Schedule's facility labels (copied), whatever part of the tenant
    # the writer of the hours sees; the writes are audited as the writer's
    svc = ResourceService(BoundDatabase(conn), tenant, service.actor, UNRESTRICTED)

    new_versions, new_rows = [], []
    for p in planned:
        current = live.get(p.id)
        if current is None:
            assert rules is not None
            resource = slot_resource(rules, p)
            if p.id in stored:  # deleted earlier (leave that was withdrawn): a new version
                await svc.update_in(conn, "Slot", p.id, resource, None)
                summary.created += 1
                continue
            version, rows = await svc.new_version_in(conn, "Slot", p.id, resource)
            new_versions.append(version)
            new_rows.append(rows)
            if len(new_versions) >= _CHUNK:
                await svc.insert_many_in(conn, new_versions, new_rows, [svc.actor] * len(new_versions))
                summary.created += len(new_versions)
                new_versions, new_rows = [], []
        elif current.get("status") == "free":
            assert rules is not None
            wanted = slot_resource(rules, p)
            if _differs(current, wanted):
                await svc.update_in(conn, "Slot", p.id, _merge(current, wanted), None)
                summary.updated += 1
        elif _is_flagged(current):  # booked and inside the hours again
            await svc.update_in(conn, "Slot", p.id, _unflag(current), None)
            summary.unflagged += 1
    if new_versions:
        await svc.insert_many_in(conn, new_versions, new_rows, [svc.actor] * len(new_versions))
        summary.created += len(new_versions)

    reason = "The schedule no longer offers this time (hours, leave or holiday changed); rebook the appointment"
    for sid, current in sorted(live.items()):
        if sid in wanted_ids:
            continue
        if current.get("status") == "free" and sid not in held:
            await svc.delete_in(conn, "Slot", sid)
            summary.deleted += 1
        elif not _is_flagged(current):
            await svc.update_in(conn, "Slot", sid, _flag(current, reason), None)
            summary.flagged += 1
            summary.flagged_ids.append(sid)
    return summary


async def schedules_of(conn: Any, tenant: str, resource_type: str, resource_id: str) -> list[str]:
    """The live Schedules whose slots depend on a PractitionerRole or Location: named in
    ``Schedule.actor``, or (a Location) the facility of a PractitionerRole named there."""
    sql = (
        "SELECT resource_id FROM idx_reference WHERE tenant_id = %(t)s AND resource_type = 'Schedule' "
        "AND param = 'actor' AND target_type = %(rt)s AND target_id = %(id)s"
    )
    if resource_type == "Location":
        sql += (
            " UNION SELECT a.resource_id FROM idx_reference a JOIN idx_reference l ON l.tenant_id = a.tenant_id "
            "AND l.resource_type = 'PractitionerRole' AND l.resource_id = a.target_id AND l.param = 'location' "
            "WHERE a.tenant_id = %(t)s AND a.resource_type = 'Schedule' AND a.param = 'actor' "
            "AND a.target_type = 'PractitionerRole' AND l.target_type = 'Location' AND l.target_id = %(id)s"
        )
    cur = await conn.execute(sql + " ORDER BY 1", {"t": tenant, "rt": resource_type, "id": resource_id})
    return [row[0] for row in await cur.fetchall()]
