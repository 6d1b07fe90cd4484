"""ORU^R01 from a lab → per ORDER_OBSERVATION group (ORC? OBR, OBX*, NTE*, SPM*):
ServiceRequest (conditional create on the placer, else filler, order number), DiagnosticReport
(keyed by the filler, else placer, order number), one Observation per OBX, Specimen per SPM.

Versions, not duplicates: the DiagnosticReport is found by its order number under the same advisory
lock the Bundle service takes, then updated by id; its Observations are found through its
``result`` references and updated by id (keyed by OBX-21, else ``<order>-<OBX-3 code>-<OBX-4>``).
Preliminary → final → corrected gives versions 1, 2, 3 of the same resources.

Out-of-order arrival: a group is applied unless its status ranks below the stored report's
(registered < partial/preliminary < final < corrected/amended; entered-in-error above all), or it
ranks the same and its OBR-22 (else MSH-7) is older than the stored ``issued``. A skipped group
is still acknowledged AA (the sender did nothing wrong) and the log row says why nothing changed.

Radiology groups (sender option ``category: RAD``, else OBR-24 an imaging section) go to
``radiology.oru_group`` instead: report text and ImagingStudy rather than Observations.
"""

from __future__ import annotations

from typing import Any

from fhir_server.errors import ResourceGone, ResourceNotFound
from fhir_server.services.resources import COND_UPDATE, IF_NONE_EXIST
from hl7_bridge.decode import Segment
from hl7_bridge.handlers import radiology
from hl7_bridge.handlers.adt import practitioner_ref
from hl7_bridge.handlers.common import HandlerContext, Work, identifier_query
from hl7_bridge.mapper import vocab
from mappings.functions import MappingError, dtm_to_instant

__all__ = ["RANK", "handle"]

V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
RANK = {"registered": 0, "partial": 1, "preliminary": 1, "unknown": 1, "final": 2, "cancelled": 2,
        "corrected": 3, "amended": 3, "appended": 3, "entered-in-error": 4}
_OBS_FROM_REPORT = {"partial": "preliminary", "preliminary": "preliminary", "final": "final", "corrected": "corrected",
                    "amended": "amended", "cancelled": "cancelled", "registered": "registered"}


def groups(segments: list[Segment]) -> list[dict[str, Any]]:
    """ORDER_OBSERVATION groups: an ORC binds to the OBR that follows it; OBX/NTE/SPM to the last OBR."""
    out: list[dict[str, Any]] = []
    pending_orc: Segment | None = None
    current: dict[str, Any] | None = None
    last_obx: Segment | None = None
    for seg in segments:
        if seg.name == "ORC":
            pending_orc = seg
        elif seg.name == "OBR":
            current = {"orc": pending_orc, "obr": seg, "obx": [], "notes": {}, "spm": [], "extra": []}
            out.append(current)
            pending_orc, last_obx = None, None
        elif current is None:
            continue
        elif seg.name == "OBX":
            current["obx"].append(seg)
            last_obx = seg
        elif seg.name == "NTE" and last_obx is not None:
            current["notes"].setdefault(last_obx.index, []).append(seg)
        elif seg.name == "SPM":
            current["spm"].append(seg)
            last_obx = None
        elif seg.name in ("IPC", "ZDS"):  # imaging: accession / study UID (radiology.py)
            current["extra"].append(seg)
    return out


def _order_identifier(ctx: HandlerContext, seg: Segment, n: int, code: str) -> dict[str, Any] | None:
    ei = seg.f(n)
    if not ei:
        return None
    ident = ctx.mapper.datatype(ei, "EI_Identifier")
    if not ident.get("value"):
        return None
    return {"type": {"coding": [{"system": V2_0203, "code": code}]}, **ident}


def _status(ctx: HandlerContext, seg: Segment, field: int, table: str, default: str | None) -> str | None:
    raw = seg.get(field)
    if not raw:
        return default
    hit = vocab(table).get(raw)
    if hit is None:
        raise MappingError(f"{seg.name}-{field} '{raw}' is not a result status this bridge knows", f"{seg.name}-{field}", "103")
    return hit[0]


async def handle(ctx: HandlerContext) -> Work:
    work = Work()
    pid = ctx.msg.first("PID")
    if pid is None:
        raise MappingError("an ORU^R01 message needs a PID segment", "PID", "100")
    found_groups = groups(ctx.msg.segments)
    await _prefetch(ctx, pid, found_groups)
    patient_ref = await ctx.patient_entry(work, pid, update=bool(ctx.sender.options.get("update_patient")))
    if not found_groups:
        raise MappingError("an ORU^R01 message needs at least one OBR segment", "OBR", "100")
    for group in found_groups:
        if radiology.is_radiology(ctx, group["obr"]):
            await radiology.oru_group(ctx, work, group, patient_ref)
        else:
            await _group(ctx, work, group, patient_ref)
    return work


async def _prefetch(ctx: HandlerContext, pid: Segment, found_groups: list[dict[str, Any]]) -> None:
    """The Patient's and the first lab group's look-ups (report, ServiceRequest, Specimens: the same
    locks and searches as their ``find_one``) in one round trip for the locks and one for the searches.
    Anything that does not map is left to the handler, which raises it where it did."""
    try:
        lookups = [("Patient", ctx.patient_query(pid), IF_NONE_EXIST)]
    except MappingError:
        return
    if found_groups and not radiology.is_radiology(ctx, found_groups[0]["obr"]):
        group = found_groups[0]
        try:
            placer, filler, key, report_query = _order_keys(ctx, group)
            sr_key = placer or filler
            assert sr_key is not None
            lookups += [("DiagnosticReport", report_query, COND_UPDATE), ("ServiceRequest", identifier_query(sr_key), IF_NONE_EXIST)]
            group["specimens"] = [_specimen(ctx, spm, key) for spm in group["spm"]]  # mapped once, for _group
            lookups += [("Specimen", q, COND_UPDATE) for _, q in group["specimens"]]
        except MappingError:
            group.pop("specimens", None)
    await ctx.prefetch(lookups)


def _specimen(ctx: HandlerContext, spm: Segment, key: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """A Specimen mapped from SPM (identifier defaulted from the order's) and its criteria."""
    spec = {"resourceType": "Specimen", **ctx.mapper.segment(spm, "SPM_Specimen"), "subject": None}  # set by _group
    idents = spec.get("identifier") or []
    if not idents:
        idents = [{"system": key["system"], "value": f"{key['value']}-SPM{spm.get(1) or spm.index}"}]
        spec["identifier"] = idents
    return spec, identifier_query(idents[0])


def _order_keys(ctx: HandlerContext, group: dict[str, Any]) -> tuple[Any, Any, dict[str, Any], str]:
    """(placer, filler, the report's key identifier, its criteria) of a group."""
    obr: Segment = group["obr"]
    orc: Segment | None = group["orc"]
    placer = (_order_identifier(ctx, orc, 2, "PLAC") if orc else None) or _order_identifier(ctx, obr, 2, "PLAC")
    filler = (_order_identifier(ctx, orc, 3, "FILL") if orc else None) or _order_identifier(ctx, obr, 3, "FILL")
    if placer is None and filler is None:
        raise MappingError("OBR-3 (filler order number) or OBR-2 (placer order number) is required", "OBR-3", "101")
    key = filler or placer
    assert key is not None
    return placer, filler, key, identifier_query(key)


async def _group(ctx: HandlerContext, work: Work, group: dict[str, Any], patient_ref: str) -> None:
    obr: Segment = group["obr"]
    orc: Segment | None = group["orc"]
    placer, filler, key, report_query = _order_keys(ctx, group)
    order_idents = [i for i in (placer, filler) if i is not None]
    if work.has(ctx.full_url("DiagnosticReport", report_query)):  # two OBRs with one order number (parent/child)
        key = {**key, "value": f"{key['value']}-{obr.get(1) or obr.index}"}
        order_idents = [*order_idents, {"system": key["system"], "value": key["value"]}]
        report_query = identifier_query(key)

    # the stored report (under the conditional-update lock): out-of-order arrival
    found = await ctx.find_one("DiagnosticReport", report_query, kind=COND_UPDATE)
    report = {"resourceType": "DiagnosticReport", **ctx.mapper.segment(obr, "OBR_DiagnosticReport")}
    obx_statuses = [_status(ctx, o, 11, "ObservationResultStatus", None) for o in group["obx"]]
    if "status" not in report:
        if obr.valued(25):
            raise MappingError(f"OBR-25 '{obr.get(25)}' is not a result status this bridge knows", "OBR-25", "103")
        report["status"] = _report_status_from(obx_statuses)
    issued_raw = obr.get(22) or ctx.msg.msh.get(7)
    if issued_raw and "issued" not in report:
        report["issued"] = dtm_to_instant(issued_raw, ctx.mapper.ctx.timezone)
    stored: dict[str, Any] = ctx.content(found) if found is not None else {}
    if found is not None and _older(report, stored):
        work.notes.append(
            f"out of order: {report['status']} result for order {key['value']} not applied over the stored "
            f"{stored.get('status')} one issued {stored.get('issued')}"
        )
        return

    # ServiceRequest: conditional create on the placer (else filler) order number
    sr_key = placer or filler
    assert sr_key is not None
    sr_query = identifier_query(sr_key)
    sr = {"resourceType": "ServiceRequest", **ctx.mapper.segment(obr, "OBR_ServiceRequest"),
          "identifier": order_idents, "subject": {"reference": patient_ref}}
    requester_xcn = orc.f(12) if orc is not None and orc.valued(12) else obr.f(16)
    requester = await practitioner_ref(ctx, work, requester_xcn, obr)
    if requester is not None and "reference" in requester:
        sr["requester"] = requester
    sr_url = ctx.full_url("ServiceRequest", sr_query)

    # Specimens (mapped before the look-ups: the ServiceRequest's and theirs go in one round trip)
    specimens: list[tuple[Segment, dict[str, Any], str, str]] = []
    mapped = group.pop("specimens", None) or [_specimen(ctx, spm, key) for spm in group["spm"]]
    for spm, (spec, spec_query) in zip(group["spm"], mapped, strict=True):
        spec["subject"] = {"reference": patient_ref}
        spec["request"] = [{"reference": sr_url}]
        specimens.append((spm, spec, spec_query, ctx.full_url("Specimen", spec_query)))
    # A ServiceRequest or Specimen searched here under its conditional lock and NOT found is a plain
    # create (the lock is held until commit; the create joins the Bundle's one multi-row insert); one
    # found keeps its conditional entry, which the Bundle matches (and answers) as before.
    sr_new = not work.has(sr_url)
    lookups = [("ServiceRequest", sr_query, IF_NONE_EXIST)] if sr_new else []
    lookups += [("Specimen", q, COND_UPDATE) for _, _, q, url in specimens if not work.has(url)]
    await ctx.prefetch(lookups)
    if sr_new:
        if await ctx.find_all("ServiceRequest", sr_query, kind=IF_NONE_EXIST):
            work.add(ctx.create_if_none(sr, sr_url, sr_query), orc or obr)
        else:
            work.add(ctx.new(sr, sr_url), orc or obr)

    specimen_refs: list[dict[str, Any]] = []
    for spm, spec, spec_query, url in specimens:
        if work.has(url):
            specimen_refs.append({"reference": url})
            continue
        if await ctx.find_all("Specimen", spec_query, kind=COND_UPDATE):
            work.add(ctx.put(spec, url, None, spec_query), spm)
        else:
            work.add(ctx.new(spec, url), spm)
        specimen_refs.append({"reference": url})

    # Observations: the stored ones found through the stored report's results
    existing = await _stored_observations(ctx, stored)
    result_refs: list[dict[str, Any]] = []
    seen: set[str] = set()
    for obx, obs_status in zip(group["obx"], obx_statuses, strict=True):
        obs = {"resourceType": "Observation", **ctx.mapper.segment(obx, "OBX_Observation")}
        if obx.get(2) == "SN" and "valueQuantity" not in obs and obx.valued(5):
            obs["valueString"] = "".join(obx.f(5).c(n) for n in range(1, 5)).strip()
        if "status" not in obs:
            obs["status"] = obs_status or _OBS_FROM_REPORT.get(report["status"], "unknown")
        ident = (obs.get("identifier") or [None])[0]
        if ident is None:
            code = obx.f(3).c(1) or obx.f(3).c(2) or obx.get(1)
            value = f"{key['value']}-{code}" + (f"-{obx.get(4)}" if obx.get(4) else "")
            if value in seen:
                value += f"-{obx.get(1) or obx.index}"
            ident = {"system": key["system"], "value": value}
            obs["identifier"] = [ident]
        seen.add(ident["value"])
        obs["subject"] = {"reference": patient_ref}
        obs["basedOn"] = [{"reference": sr_url}]
        obs.setdefault("category", [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                                 "code": "laboratory"}]}])
        if specimen_refs:
            obs["specimen"] = specimen_refs[0]
        notes = group["notes"].get(obx.index)
        if notes:
            obs["note"] = [{"text": "\n".join(n.f(3).text for n in notes if n.valued(3))}]
            if not obs["note"][0]["text"]:
                del obs["note"]
        if not any(k.startswith("value") for k in obs) and obs["status"] == "cancelled":
            obs["dataAbsentReason"] = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/data-absent-reason",
                                                   "code": "not-performed"}]}
        query = identifier_query(ident)
        url = ctx.full_url("Observation", query)
        prior = existing.get((ident.get("system"), ident["value"]))
        if prior is not None:
            work.add(ctx.put(obs, url, prior, query), obx)
        elif found is None:  # a new report: its observations are new too
            work.add({"fullUrl": url, "resource": obs, "request": {"method": "POST", "url": "Observation"}}, obx)
        else:
            work.add(ctx.put(obs, url, None, query), obx)
        result_refs.append({"reference": url})

    report["identifier"] = order_idents
    report["subject"] = {"reference": patient_ref}
    report["basedOn"] = [{"reference": sr_url}]
    report.setdefault("category", [{"coding": [{"system": V2_0074, "code": ctx.route.get("category", "LAB")}]}])
    if result_refs:
        report["result"] = result_refs
    if specimen_refs:
        report["specimen"] = specimen_refs
    report_url = ctx.full_url("DiagnosticReport", report_query)
    if found is None:  # searched under the conditional-update lock above, which is held until commit
        work.add(ctx.new(report, report_url), obr)
    else:
        work.add(ctx.put(report, report_url, found, report_query), obr)


def _report_status_from(obx_statuses: list[str | None]) -> str:
    known = [s for s in obx_statuses if s]
    if not known:
        return "unknown"
    if any(s in ("corrected", "amended") for s in known):
        return "corrected"
    if all(s == "final" for s in known):
        return "final"
    return "preliminary" if any(s == "preliminary" for s in known) else "partial"


def _older(new: dict[str, Any], stored: dict[str, Any]) -> bool:
    """True when ``new`` must not replace ``stored`` (see the module docstring)."""
    new_rank, old_rank = RANK.get(new.get("status", ""), 1), RANK.get(stored.get("status", ""), 1)
    if new_rank != old_rank:
        return new_rank < old_rank
    a, b = new.get("issued"), stored.get("issued")
    if not a or not b:
        return False
    from datetime import datetime

    return datetime.fromisoformat(a) < datetime.fromisoformat(b)  # 3.11+ reads a trailing Z


async def _stored_observations(ctx: HandlerContext, stored: dict[str, Any]) -> dict[tuple[Any, str], Any]:
    """(system, value) → the stored Observation, for the stored report's results."""
    out: dict[tuple[Any, str], Any] = {}
    for ref in stored.get("result", []):
        target = ref.get("reference", "")
        if not target.startswith("Observation/"):
            continue
        try:
            version = await ctx.service.read_in(ctx.conn, "Observation", target.split("/", 1)[1])
        except (ResourceNotFound, ResourceGone):  # deleted or gone: a new one will be created
            continue
        for ident in ctx.content(version).get("identifier", []):
            if ident.get("value"):
                out[(ident.get("system"), ident["value"])] = version
    return out
