"""ADT A01, A02, A03, A04, A08, A11, A13 → Patient + Encounter (+ Location, Practitioner);
A40 (merge patient) → the prior Patient ``active: false`` with ``link`` replaced-by the surviving one.

* Patient: matched by PID-3 (``identifier=system|value``); known → updated with the message's
  demographics laid over the stored ones; unknown → created, or AE under ``unknown_patient: refuse``.
* Encounter: keyed by PV1-19 (visit number). Without PV1-19 no Encounter is written (it could not
  be found again by the next event of the visit). Status by event (vocab/Event_EncounterStatus.csv;
  A08 keeps the stored status); A02 marks the earlier locations ``completed`` and adds PV1-3 as
  ``active``; A03 sets ``period.end`` (PV1-45, else EVN-6, else MSH-7); A13 removes it again.
* PV1-3 → Location (conditional create on facility/point of care/room/bed); PV1-7 → Practitioner
  (conditional create on XCN.1) as participant ``ATND``.
* A40: Encounters and results stay on the prior Patient (the IG leaves moving them to the
  receiver; FHIR's link makes them reachable); the surviving Patient gets ``link`` replaces and
  the prior identifier (``use: old``).
"""

from __future__ import annotations

from typing import Any

from fhir_server.services.resources import IF_NONE_EXIST
from hl7_bridge.decode import Component, Segment
from hl7_bridge.handlers.common import HandlerContext, Refused, Work, identifier_query, merge_resource
from hl7_bridge.mapper import vocab
from mappings.functions import MappingError, dtm_to_datetime

__all__ = ["handle", "merge"]

_PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"


async def location_ref(ctx: HandlerContext, work: Work, pl: Component, seg: Segment) -> dict[str, Any] | None:
    if not pl:
        return None
    loc = {"resourceType": "Location", **ctx.mapper.datatype(pl, "PL_Location")}
    ident = (loc.get("identifier") or [{}])[0]
    if not ident.get("value"):
        return None
    query = identifier_query(ident)
    url = ctx.full_url("Location", query)
    if not work.has(url):
        work.add(ctx.create_if_none(loc, url, query), seg)
    return {"reference": url, "display": loc.get("name")}


async def practitioner_ref(ctx: HandlerContext, work: Work, xcn: Component, seg: Segment) -> dict[str, Any] | None:
    if not xcn:
        return None
    prac = {"resourceType": "Practitioner", **ctx.mapper.datatype(xcn, "XCN_Practitioner")}
    name = prac.get("name", [{}])[0]
    display = " ".join(p for p in (*name.get("prefix", []), *name.get("given", []), name.get("family", "")) if p) or None
    ident = (prac.get("identifier") or [{}])[0]
    if not ident.get("value"):
        return {"display": display} if display else None
    query = identifier_query(ident)
    url = ctx.full_url("Practitioner", query)
    if not work.has(url):
        work.add(ctx.create_if_none(prac, url, query), seg)
    return {"reference": url, **({"display": display} if display else {})}


def _event_time(ctx: HandlerContext) -> str | None:
    evn = ctx.msg.first("EVN")
    raw = (evn.get(6) or evn.get(2)) if evn is not None else ""
    raw = raw or ctx.msg.msh.get(7)
    return dtm_to_datetime(raw, ctx.mapper.ctx.timezone) if raw else None


async def encounter_entry(ctx: HandlerContext, work: Work, pv1: Segment, patient_ref: str, event: str) -> None:
    mapped = {"resourceType": "Encounter", **ctx.mapper.segment(pv1, "PV1_Encounter")}
    idents = mapped.get("identifier") or []
    if not idents:
        work.notes.append("no PV1-19 visit number: no Encounter written")
        return
    query = identifier_query(idents[0])
    found = await ctx.find_one("Encounter", query)
    stored = ctx.content(found) if found is not None else {}
    enc = merge_resource(stored, mapped) if found is not None else mapped
    enc["subject"] = {"reference": patient_ref}
    status = vocab("Event_EncounterStatus").get(event)
    enc["status"] = status[0] if status else stored.get("status", "unknown")
    period = dict(enc.get("period") or {})
    if event == "A03" and "end" not in period:
        end = _event_time(ctx)
        if end:
            period["end"] = end
    if event == "A13":
        period.pop("end", None)
    if period:
        enc["period"] = period
    else:
        enc.pop("period", None)
    new_loc = await location_ref(ctx, work, pv1.f(3), pv1)
    if new_loc is not None:
        locations = [dict(loc) for loc in stored.get("location", [])]
        same = [loc for loc in locations if loc.get("location", {}).get("display") == new_loc.get("display")
                and loc.get("status") == "active"]
        if not same:
            for loc in locations:
                if loc.get("status") in ("active", "planned", None):
                    loc["status"] = "completed"
            locations.append({"location": new_loc, "status": "active" if enc["status"] != "planned" else "planned"})
        enc["location"] = locations
    attending = await practitioner_ref(ctx, work, pv1.f(7), pv1)
    if attending is not None:
        others = [p for p in stored.get("participant", [])
                  if not any(c.get("code") == "ATND" for t in p.get("type", []) for c in t.get("coding", []))]
        enc["participant"] = [
            {"type": [{"coding": [{"system": _PARTICIPATION, "code": "ATND", "display": "attender"}]}],
             "individual": attending},
            *others,
        ]
    work.add(ctx.put(enc, ctx.full_url("Encounter", query), found, query), pv1)


async def handle(ctx: HandlerContext) -> Work:
    work = Work()
    pid = ctx.msg.first("PID")
    if pid is None:
        raise MappingError("an ADT message needs a PID segment", "PID", "100")
    patient_ref = await ctx.patient_entry(work, pid, update=True)
    pv1 = ctx.msg.first("PV1")
    if pv1 is not None:
        await encounter_entry(ctx, work, pv1, patient_ref, ctx.route.get("event", ctx.msg.trigger))
    return work


async def merge(ctx: HandlerContext) -> Work:
    """A40: PID is the surviving patient, MRG-1 the prior patient identifier."""
    work = Work()
    pid, mrg = ctx.msg.first("PID"), ctx.msg.first("MRG")
    if pid is None or mrg is None or not mrg.valued(1):
        raise MappingError("ADT^A40 needs PID and MRG-1 (prior patient identifier)", "MRG-1" if pid else "PID", "101")
    survivor, key = ctx.patient_from_pid(pid)
    prior_ident = ctx.mapper.datatype(mrg.f(1), "CX_Identifier")
    if not prior_ident.get("value"):
        raise MappingError("MRG-1 has no identifier value", "MRG-1", "101")
    prior_query = identifier_query(prior_ident)
    query = identifier_query(key)
    # lock both identities in a fixed order (two merges of the same pair cannot deadlock)
    first, second = sorted([query, prior_query])
    await ctx.lock(IF_NONE_EXIST, "Patient", first)
    await ctx.lock(IF_NONE_EXIST, "Patient", second)
    prior = await ctx.find_one("Patient", prior_query, kind=IF_NONE_EXIST)
    if prior is None:
        raise Refused(f"MRG-1: prior patient {prior_ident['value']} is not known; nothing to merge", "MRG-1", "204")
    found = await ctx.find_one("Patient", query, kind=IF_NONE_EXIST)
    if found is not None and found.id == prior.id:
        raise MappingError("PID-3 and MRG-1 name the same patient", "MRG-1", "205")
    if found is None and ctx.sender.unknown_patient == "refuse":
        raise Refused(f"unknown surviving patient {key['value']}; this sender may not create patients", "PID-3", "204")
    surv_url = ctx.full_url("Patient", query)
    surv = merge_resource(ctx.content(found), survivor) if found is not None else survivor
    surv["active"] = True
    old = {**prior_ident, "use": "old"}
    if not any((i.get("system"), i.get("value")) == (old.get("system"), old.get("value")) for i in surv.get("identifier", [])):
        surv.setdefault("identifier", []).append(old)
    links = [ln for ln in surv.get("link", []) if ln.get("other", {}).get("reference") != f"Patient/{prior.id}"]
    surv["link"] = [*links, {"other": {"reference": f"Patient/{prior.id}"}, "type": "replaces"}]
    work.add(ctx.put(surv, surv_url, found, query), pid)
    old_patient = {k: v for k, v in ctx.content(prior).items() if k not in ("meta", "text")}
    old_patient["active"] = False
    old_links = [ln for ln in old_patient.get("link", []) if ln.get("type") != "replaced-by"]
    old_patient["link"] = [*old_links, {"other": {"reference": surv_url}, "type": "replaced-by"}]
    work.add(ctx.put(old_patient, ctx.full_url("Patient", prior_query), prior, prior_query), mrg)
    return work
