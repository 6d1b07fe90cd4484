"""SIU S12, S13, S14, S15, S17, S26 (HL7 v2.5.1 Ch. 10 Scheduling) → Appointment (+ Patient,
Practitioner, Location), following the IG's SIU_S12 message map and its SCH, AIS, AIG, AIL, AIP and
NTE[Appointment-Comment] segment maps (tables: mappings/segments/SCH_Appointment.csv,
AIS_Appointment.csv, AI[PLG]_AppointmentParticipant.csv).

* Identity: the Appointment is keyed by SCH-2 (filler appointment id, ``FILL``), else SCH-1 (placer,
  ``PLAC``); both are kept as identifiers. A known Appointment gets a new version, an unknown one
  is created (conditional update on the key), never a duplicate.
* Status by event (vocab/SIU_Event_AppointmentStatus.csv): S15 cancelled, S26 noshow, S17
  entered-in-error always; S12/S13/S14 take SCH-25 (vocab/FillerStatus_AppointmentStatus.csv, the
  IG's FillerStatusCodes map) when it is valued, else booked (S14 keeps the stored status).
* Out of order: a stored Appointment that is cancelled, noshow, fulfilled or entered-in-error is
  final; a later S12/S13/S14/S15/S26 for it is acknowledged (AA, log note "out of order") and
  writes nothing. Only S17 (deletion) still applies, and not to an entered-in-error one.
* Times: start/end from TQ1-7/TQ1-8, else SCH-11.4/SCH-11.5 (TQ), else the resource segments
  (AIS-4, AIG-8, AIL-6, AIP-6 start, or the appointment start + offset; + duration): earliest start,
  latest end. minutesDuration from SCH-9 when SCH-10 is minutes (the IG), else end − start, else
  SCH-9 in its SCH-10 units.
* Participants (status ``accepted``): the patient (PID; common Patient matching and the sender's
  unknown-patient policy; a known Patient is not rewritten), AIP-3 → Practitioner (AIP-4 role),
  AIL-3 → Location (AIL-4 type), AIG-3 → a logical actor (AIG-4 type).
* cancelationReason (cancelled only): SCH-6, else EVN-4. comment: the NTE segments after SCH.
  basedOn: SCH-26/SCH-27 order numbers → the stored ServiceRequest, else a logical reference.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import quote

from fhir_server.services.conditional import find_matches
from hl7_bridge.decode import Segment
from hl7_bridge.handlers.adt import location_ref, practitioner_ref
from hl7_bridge.handlers.common import HandlerContext, Work, identifier_query, merge_resource, token_value, type_code
from hl7_bridge.mapper import vocab
from mappings.functions import MappingError, dtm_to_instant, duration_seconds, minutes_between, shift_datetime

__all__ = ["handle"]

V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
# segment → field numbers of (start date/time, start offset, offset units, duration, duration units)
_TIMING = {"AIS": (4, 5, 6, 7, 8), "AIG": (8, 9, 10, 11, 12), "AIL": (6, 7, 8, 9, 10), "AIP": (6, 7, 8, 9, 10)}
_FINAL = frozenset({"cancelled", "noshow", "fulfilled", "entered-in-error"})
_PARTICIPANTS = (("AIP", "AIP_AppointmentParticipant"), ("AIL", "AIL_AppointmentParticipant"),
                 ("AIG", "AIG_AppointmentParticipant"))


def appointment_query(ident: dict[str, Any]) -> str:
    """``identifier=system|value&identifier:of-type=v2-0203|FILL|value``: a placer id and a filler id
    with the same value (same system when no authority is sent) stay different appointments."""
    return (identifier_query(ident) + "&identifier:of-type=" + quote(V2_0203, safe=":/.-_~") + "|"
            + (type_code(ident) or "") + "|" + token_value(ident))


def _instant(ctx: HandlerContext, seg: Segment, n: int, comp: int = 1) -> str | None:
    raw = seg.f(n).c(comp)
    if not raw or raw == '""':
        return None
    try:
        return dtm_to_instant(raw, ctx.mapper.ctx.timezone)
    except MappingError as exc:
        raise MappingError(exc.reason, f"{seg.name}-{n}", "102", seg.index) from None


def _seconds(seg: Segment, n: int, units: int) -> int:
    try:
        return duration_seconds(seg.get(n), seg.get(units))
    except MappingError as exc:
        raise MappingError(exc.reason, f"{seg.name}-{n}", "102", seg.index) from None


def _moment(value: str) -> datetime:
    return datetime.fromisoformat(value)


def timing(ctx: HandlerContext, sch: Segment) -> tuple[str | None, str | None]:
    """(start, end) of the appointment as FHIR instants (see the module docstring for the order)."""
    start = end = None
    tq1 = ctx.msg.first("TQ1")
    if tq1 is not None and tq1.valued(7):
        start, end = _instant(ctx, tq1, 7), _instant(ctx, tq1, 8)
    elif sch.f(11).c(4):
        start, end = _instant(ctx, sch, 11, 4), _instant(ctx, sch, 11, 5)
    starts, ends = [], []
    for seg in ctx.msg:
        fields = _TIMING.get(seg.name)
        if fields is None:
            continue
        at, offset, offset_units, duration, duration_units = fields
        s = _instant(ctx, seg, at)
        if s is None and start is not None and seg.valued(offset):
            s = shift_datetime(start, _seconds(seg, offset, offset_units))
        if s is None:
            continue
        starts.append(s)
        if seg.valued(duration):
            ends.append(shift_datetime(s, _seconds(seg, duration, duration_units)))
    if start is None and starts:
        start = min(starts, key=_moment)
    if end is None and ends:
        end = max(ends, key=_moment)
    return start, end


def _comment(ctx: HandlerContext, sch: Segment) -> str | None:
    """The NTE segments that follow SCH (and TQ1): the appointment's own notes, one per line."""
    lines: list[str] = []
    for seg in ctx.msg.segments[sch.index:]:
        if seg.name == "NTE":
            lines.extend(rep.text for rep in seg.reps(3))
        elif seg.name != "TQ1":
            break
    return "\n".join(lines) or None


def status_for(event: str, sch: Segment, stored: dict[str, Any]) -> str:
    by_event = vocab("SIU_Event_AppointmentStatus").get(event)
    if by_event is not None and by_event[0] in _FINAL:
        return by_event[0]
    filler = vocab("FillerStatus_AppointmentStatus").get(sch.get(25))
    if filler is not None:
        return filler[0]
    if by_event is None and stored.get("status"):
        return str(stored["status"])  # S14: a modification keeps the status
    return by_event[0] if by_event is not None else "booked"


async def _find(ctx: HandlerContext, idents: list[dict[str, Any]]) -> tuple[Any, str]:
    """The stored Appointment (by filler id, else placer id) and the query that keys it."""
    keyed = sorted((i for i in idents if type_code(i) in ("FILL", "PLAC") and i.get("value")),
                   key=lambda i: type_code(i) != "FILL")
    if not keyed:
        raise MappingError("SCH-1 or SCH-2 (placer/filler appointment id) is required", "SCH-2", "101")
    found, query = None, appointment_query(keyed[0])
    for ident in keyed:
        q = appointment_query(ident)
        hit = await ctx.find_one("Appointment", q)
        if hit is not None and found is not None and hit.id != found.id:
            raise MappingError("SCH-1 and SCH-2 name two different stored appointments", "SCH-1", "205")
        if hit is not None and found is None:
            found, query = hit, q
    return found, query


async def _orders(ctx: HandlerContext, sch: Segment) -> list[dict[str, Any]]:
    """SCH-26 placer / SCH-27 filler order numbers → basedOn: the stored ServiceRequest with that
    identifier, else a logical reference (the order may arrive later; the IG's SCH[ServiceRequest]
    creation is not done here)."""
    out: list[dict[str, Any]] = []
    for n in (26, 27):
        for ei in sch.reps(n):
            ident = ctx.mapper.datatype(ei, "EI_Identifier")
            if not ident.get("value"):
                continue
            matches = await find_matches(ctx.conn, ctx.tenant, "ServiceRequest", identifier_query(ident), limit=2)
            ref = {"reference": f"ServiceRequest/{matches[0].id}"} if len(matches) == 1 else {"identifier": ident}
            if ref not in out:
                out.append(ref)
    return out


async def _participants(ctx: HandlerContext, work: Work, patient_ref: str | None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if patient_ref is not None:
        out.append({"actor": {"reference": patient_ref}, "status": "accepted"})
    for name, table in _PARTICIPANTS:
        for seg in ctx.msg.all(name):
            part = ctx.mapper.segment(seg, table)
            actor: dict[str, Any] | None = None
            if name == "AIP":
                actor = await practitioner_ref(ctx, work, seg.f(3), seg)
            elif name == "AIL":
                actor = await location_ref(ctx, work, seg.f(3), seg)
            elif seg.get(3, 2):
                actor = {**part.get("actor", {}), "display": seg.get(3, 2)}
            if actor:
                part["actor"] = {k: v for k, v in actor.items() if v}
            if "actor" in part or "type" in part:
                out.append(part)
    return out


async def handle(ctx: HandlerContext) -> Work:
    work = Work()
    sch = ctx.msg.first("SCH")
    if sch is None:
        raise MappingError("an SIU message needs an SCH segment", "SCH", "100")
    event = str(ctx.route.get("event", ctx.msg.trigger))
    mapped: dict[str, Any] = {"resourceType": "Appointment", **ctx.mapper.segment(sch, "SCH_Appointment")}
    found, query = await _find(ctx, mapped.get("identifier") or [])
    stored = ctx.content(found) if found is not None else {}
    if stored.get("status") in _FINAL and (event != "S17" or stored["status"] == "entered-in-error"):
        work.notes.append(f"out of order: Appointment/{found.id} is {stored['status']}; SIU^{event} not applied")
        return work
    for seg in ctx.msg.all("AIS"):
        mapped = ctx.mapper.segment(seg, "AIS_Appointment", into=mapped)
    pid = ctx.msg.first("PID")
    patient_ref = await ctx.patient_entry(work, pid, update=False) if pid is not None else None
    appt = merge_resource(stored, mapped) if found is not None else mapped
    appt["status"] = status_for(event, sch, stored)
    start, end = timing(ctx, sch)
    minutes = mapped.get("minutesDuration")  # SCH-9 in minutes (the IG's row); other units only as a fallback
    sch_minutes = minutes or ((_seconds(sch, 9, 10) // 60 or None) if sch.valued(9) else None)
    if start is not None and end is None and sch_minutes:
        end = shift_datetime(start, sch_minutes * 60)
    if start is not None and end is None:
        raise MappingError("the appointment has a start but no end or duration (TQ1-8, SCH-11.5, AIS-7, SCH-9)", "SCH-11", "101")
    if start is not None:
        appt["start"], appt["end"] = start, end
    if minutes is None and appt.get("start") and appt.get("end"):
        minutes = minutes_between(appt["start"], appt["end"]) or None
    minutes = minutes or sch_minutes
    if minutes:
        appt["minutesDuration"] = minutes
    participants = await _participants(ctx, work, patient_ref)
    if participants:
        appt["participant"] = participants
    based_on = await _orders(ctx, sch)
    if based_on:
        appt["basedOn"] = based_on
    comment = _comment(ctx, sch)
    if comment:
        appt["comment"] = comment
    appt.pop("cancelationReason", None)
    if appt["status"] == "cancelled":
        evn = ctx.msg.first("EVN")
        reason = sch.f(6) if sch.valued(6) else (evn.f(4) if evn is not None else None)
        if reason:
            appt["cancelationReason"] = ctx.mapper.datatype(reason, "CWE_CodeableConcept")
    work.add(ctx.put(appt, ctx.full_url("Appointment", query), found, query), sch)
    return work
