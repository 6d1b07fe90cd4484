"""Orders from an external system → ServiceRequest. HL7 v2.5.1 Ch. 4 (Order Entry) §4.4.1 ORM^O01
(general order) and Ch. 4 §4.4.6 OML^O21 (laboratory order); HL7 v2-to-FHIR IG ORC[ServiceRequest],
OBR[ServiceRequest], TQ1[ServiceRequest], concept maps OrderControlCode[ServiceRequest.status] and
OrderStatus; FHIR R4 ServiceRequest.

One ServiceRequest per ORC (with its OBR, TQ1, NTE, DG1, SPM), keyed by the placer order number
(ORC-2, else OBR-2; else the filler ORC-3/OBR-3) — the same identifier the lab/radiology result
path creates its ServiceRequest with, so results find the order. Found under the If-None-Exist lock
the result path's conditional create takes, then updated by id (stored elements the message does
not carry stay) or created.

ORC-1 (table 0119) → status, intent and an action through ``vocab/OrderControl_ServiceRequest.csv``:
``upsert`` (NW, OK, RO…: create or update), ``existing`` (CA, OC, DC, HD, OH, RL…: the order must
be known — else AE 204 naming ORC-2), ``status`` (SC: status from ORC-5 through
``vocab/OrderStatus_ServiceRequest.csv``), ``change`` (XO, XR, XX: update, status kept). Rows marked
``local`` differ from or fill the IG: CA → revoked (the IG's ``active`` reads CA as a request the
filler has yet to honour; from the placer the cancel is the decision), HD → on-hold.

Fields: code OBR-4; subject PID (common Patient matching); encounter PV1-19 (a reference to the
stored Encounter, else a logical reference by identifier — orders never create visits); requester
ORC-12, else OBR-16; occurrence and priority TQ1-7/-8/-9, else OBR-27, else ORC-7 (TQ.4, TQ.6);
authoredOn ORC-9, else OBR-6; requisition ORC-4; reasonCode DG1-3 and OBR-31; note OBR-13 and the
NTEs after OBR; category OBR-24 (table 0074 → SNOMED Imaging / Laboratory procedure, else the
route's ``category``); specimen SPM (OML) as Specimen resources keyed by SPM-2.
"""

from __future__ import annotations

import csv
from functools import cache
from importlib import resources
from typing import Any

from fhir_server.services.resources import IF_NONE_EXIST
from hl7_bridge.decode import Segment
from hl7_bridge.handlers import oru as lab
from hl7_bridge.handlers.adt import practitioner_ref
from hl7_bridge.handlers.common import HandlerContext, Refused, Work, identifier_query, merge_resource
from hl7_bridge.mapper import vocab
from mappings.functions import MappingError

__all__ = ["handle"]

_VERB = {"existing": "change", "status": "change the status of", "change": "change"}


@cache
def control_codes() -> dict[str, dict[str, str]]:
    """ORC-1 → {fhir_code, intent, action} from mappings/vocab/OrderControl_ServiceRequest.csv."""
    text = resources.files("mappings").joinpath("vocab/OrderControl_ServiceRequest.csv").read_text(encoding="utf-8")
    return {r["code"]: r for r in csv.DictReader(text.splitlines())}


def orders(segments: list[Segment]) -> list[dict[str, Any]]:
    """ORDER groups: an ORC starts one (a second OBR under one ORC starts another with that ORC);
    OBR, TQ1, DG1, SPM and the NTEs right after OBR join it."""
    out: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    obr_notes = False
    for seg in segments:
        if seg.name == "ORC" or (seg.name == "OBR" and current is not None and current["obr"] is not None):
            orc = seg if seg.name == "ORC" else current["orc"]  # type: ignore[index]
            current = {"orc": orc, "obr": None, "tq1": [], "dg1": [], "spm": [], "nte": []}
            out.append(current)
        if current is None:
            continue
        if seg.name == "NTE" and obr_notes:
            current["nte"].append(seg)
            continue
        obr_notes = seg.name == "OBR"
        if seg.name == "OBR":
            current["obr"] = seg
        elif seg.name in ("TQ1", "DG1", "SPM"):
            current[seg.name.lower()].append(seg)
    return out


async def handle(ctx: HandlerContext) -> Work:
    work = Work()
    pid = ctx.msg.first("PID")
    if pid is None:
        raise MappingError(f"an {ctx.msg.message_code}^{ctx.msg.trigger} message needs a PID segment", "PID", "100")
    found_orders = orders(ctx.msg.segments)
    if not found_orders:
        raise MappingError(f"an {ctx.msg.message_code}^{ctx.msg.trigger} message needs at least one ORC segment", "ORC", "100")
    patient_ref = await ctx.patient_entry(work, pid, update=bool(ctx.sender.options.get("update_patient")))
    encounter = await _encounter(ctx)
    for order in found_orders:
        await _order(ctx, work, order, patient_ref, encounter)
    return work


async def _encounter(ctx: HandlerContext) -> dict[str, Any] | None:
    pv1 = ctx.msg.first("PV1")
    if pv1 is None or not pv1.valued(19):
        return None
    ident = (ctx.mapper.segment(pv1, "PV1_Encounter").get("identifier") or [None])[0]
    if not ident or not ident.get("value"):
        return None
    found = await ctx.find_one("Encounter", identifier_query(ident), kind=IF_NONE_EXIST)
    if found is not None:
        return {"reference": f"Encounter/{found.id}"}
    return {"identifier": {k: v for k, v in ident.items() if k in ("system", "value", "type")}}


def _key(ctx: HandlerContext, orc: Segment, obr: Segment | None) -> list[tuple[dict[str, Any], str]]:
    """The order's identifiers with the field each came from: placer first, then filler."""
    out = []
    for n, code in ((2, "PLAC"), (3, "FILL")):
        for seg in (orc, obr):
            if seg is None:
                continue
            ident = lab._order_identifier(ctx, seg, n, code)
            if ident is not None:
                out.append((ident, f"{seg.name}-{n}"))
                break
    return out


async def _order(ctx: HandlerContext, work: Work, order: dict[str, Any], patient_ref: str,
                 encounter: dict[str, Any] | None) -> None:
    orc: Segment = order["orc"]
    obr: Segment | None = order["obr"]
    control = orc.get(1)
    row = control_codes().get(control)
    if row is None:
        raise MappingError(f"ORC-1 '{control}' is not an order control code this bridge applies to inbound orders",
                           "ORC-1", "103", orc.index)
    idents = _key(ctx, orc, obr)
    if not idents:
        raise MappingError("ORC-2 (placer order number) or ORC-3 (filler order number) is required", "ORC-2", "101", orc.index)
    key, key_field = idents[0]
    query = identifier_query(key)
    found = None
    for ident, _ in idents:  # stored by placer, or only by filler so far
        hit = await ctx.find_one("ServiceRequest", identifier_query(ident), kind=IF_NONE_EXIST)
        found = found or hit
    stored = ctx.content(found) if found is not None else {}
    action = row["action"]
    if found is None and action == "existing":
        raise Refused(f"order {key['value']} is not known: nothing to {_VERB[action]} (ORC-1 {control})",
                      key_field, "204", orc.index)

    sr: dict[str, Any] = {"resourceType": "ServiceRequest"}
    if obr is not None:
        sr.update(ctx.mapper.segment(obr, "OBR_ServiceRequest"))
        for name, value in ctx.mapper.segment(obr, "OBR_ServiceRequestOrder").items():
            sr[name] = value
    sr.update(ctx.mapper.segment(orc, "ORC_ServiceRequest"))
    _timing(ctx, sr, orc, obr, order["tq1"])
    for dg1 in order["dg1"]:
        sr.setdefault("reasonCode", []).extend(ctx.mapper.segment(dg1, "DG1_ServiceRequest").get("reasonCode", []))
    notes = "\n".join(n.f(3).text for n in order["nte"] if n.valued(3))
    if notes:
        sr.setdefault("note", []).append({"text": notes})

    if action == "status":
        hit = vocab("OrderStatus_ServiceRequest").get(orc.get(5))
        if hit is None:
            raise MappingError(f"ORC-5 '{orc.get(5)}' is not an order status this bridge knows", "ORC-5", "103", orc.index)
        sr["status"] = hit[0]
    elif action == "change":
        sr["status"] = stored.get("status", "active")
    else:
        sr["status"] = row["fhir_code"]
    sr["intent"] = row["intent"] or "order"

    section = obr.get(24) if obr is not None else ""
    category = vocab("DiagnosticServiceSection_ServiceRequestCategory").get(section or str(ctx.route.get("category", "")))
    if category is not None:
        sr["category"] = [{"coding": [{"system": category[1], "code": category[0], "display": category[2]}]}]
    sent = [i for i, _ in idents]
    sr["identifier"] = sent
    sr["subject"] = {"reference": patient_ref}
    if encounter is not None:
        sr["encounter"] = encounter
    requester_xcn = orc.f(12) if orc.valued(12) else (obr.f(16) if obr is not None else None)
    if requester_xcn:
        requester = await practitioner_ref(ctx, work, requester_xcn, orc)
        if requester is not None and "reference" in requester:
            sr["requester"] = requester

    url = ctx.full_url("ServiceRequest", query)
    if work.has(url):
        work.notes.append(f"order {key['value']} appears twice in the message; the second ORC is ignored")
        return
    specimens = _specimens(ctx, work, order["spm"], key, patient_ref, url)
    if specimens:
        sr["specimen"] = specimens
    if found is None:
        work.add(ctx.new(sr, url), orc)  # searched under the If-None-Exist lock just now
    else:
        work.add(ctx.put(merge_resource(stored, sr), url, found, query), orc)


def _timing(ctx: HandlerContext, sr: dict[str, Any], orc: Segment, obr: Segment | None, tq1: list[Segment]) -> None:
    """TQ1 wins over OBR-27, which wins over ORC-7 (v2.5 keeps TQ only for backward compatibility)."""
    layers = [ctx.mapper.datatype(orc.f(7), "TQ_ServiceRequest") if orc.valued(7) else {}]
    if obr is not None and obr.valued(27):
        layers.append(ctx.mapper.datatype(obr.f(27), "TQ_ServiceRequest"))
    if tq1:
        layers.append(ctx.mapper.segment(tq1[0], "TQ1_ServiceRequest"))
    for layer in layers:
        if "occurrencePeriod" in layer or "occurrenceDateTime" in layer:
            sr.pop("occurrencePeriod", None)
            sr.pop("occurrenceDateTime", None)
        sr.update(layer)


def _specimens(ctx: HandlerContext, work: Work, spms: list[Segment], key: dict[str, Any], patient_ref: str,
               sr_url: str) -> list[dict[str, Any]]:
    refs: list[dict[str, Any]] = []
    for spm in spms:
        spec = {"resourceType": "Specimen", **ctx.mapper.segment(spm, "SPM_Specimen"), "subject": {"reference": patient_ref}}
        idents = spec.get("identifier") or []
        if not idents:
            idents = [{"system": key["system"], "value": f"{key['value']}-SPM{spm.get(1) or spm.index}"}]
            spec["identifier"] = idents
        spec["request"] = [{"reference": sr_url}]
        spec_query = identifier_query(idents[0])
        url = ctx.full_url("Specimen", spec_query)
        if not work.has(url):
            work.add(ctx.put(spec, url, None, spec_query), spm)
        if {"reference": url} not in refs:
            refs.append({"reference": url})
    return refs
