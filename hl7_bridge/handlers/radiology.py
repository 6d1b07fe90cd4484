"""Radiology results → DiagnosticReport (+ ImagingStudy). HL7 v2.5.1 Ch. 7 (ORU^R01 from a RIS) and
Ch. 9 (MDM^T02 original document with content; T04 status change, T06 addendum, T08 edit, T10
replacement, all with content); HL7 v2-to-FHIR IG OBR[DiagnosticReport], TXA[DocumentReference];
FHIR R4 DiagnosticReport, ImagingStudy.

* **Radiology or lab** (ORU^R01 only; MDM is always a report): the sender option ``category``
  (``RAD`` | ``LAB``) decides when set; else OBR-24 (diagnostic service section, table 0074) through
  ``vocab/DiagnosticServiceSection_ServiceRequestCategory.csv`` (RAD, RX, RUS, CT, MR/NMR, NMS, US,
  OUS, VUS, CUS, XRC → imaging); else the route's ``category``.
* **DiagnosticReport**: keyed like the lab report (filler, else placer order number; MDM without
  an order: TXA-12 unique document number, a replacement found through TXA-13 parent document);
  category ``RAD`` (v2-0074, plus OBR-24 when another section), code OBR-4 (MDM without OBR: TXA-2),
  status OBR-25 (MDM: TXA-17 through ``vocab/DocumentCompletionStatus_DiagnosticReport.csv``; a T06
  addendum of a final report → ``appended``, a T08/T10 edit/replacement → ``amended``), report text
  (OBX TX/FT/ST, repetitions and OBX as lines) → ``conclusion`` (the impression section when the
  OBX-3 codes mark one, ``vocab/ObservationIdentifier_ReportSection.csv``) and ``presentedForm``
  (text/plain, UTF-8, base64, titled); OBX ED with Base64 data → another ``presentedForm``;
  ``resultsInterpreter`` OBR-32 (MDM: TXA-22, else TXA-9); basedOn the ServiceRequest
  (conditional create on placer, else filler, order number, as the lab path).
* **ImagingStudy** when an accession number (IPC-1, else OBR-18, else — sender option
  ``accession: "filler"`` — the filler order number) or a Study Instance UID (IPC-3, else an OBX whose
  OBX-3 names it (``vocab/ObservationIdentifier_StudyInstanceUid.csv``) or an RP/HD OBX holding an OID,
  else ZDS-1) is sent: identifier (accession typed ACSN; UID ``urn:dicom:uid`` / ``urn:oid:…``),
  status from the report's, subject, basedOn, started (OBR-7), modality (IPC-5, else OBR-24 through
  ``vocab/DiagnosticServiceSection_Modality.csv``), procedureCode (OBR-4), interpreter.
  Found by accession, else UID, under the lock, then updated by id (one study, several versions).
* **Versions**: as ``oru.py`` — found under the conditional-update lock, updated by id; a group whose
  status ranks below the stored one (or the same with an older issued time) is skipped with a note.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from fhir_server.services.resources import COND_UPDATE
from hl7_bridge.decode import Component, Segment
from hl7_bridge.handlers import oru as lab
from hl7_bridge.handlers.adt import practitioner_ref
from hl7_bridge.handlers.common import HandlerContext, Work, identifier_query
from hl7_bridge.mapper import coding_system, vocab
from mappings.functions import MappingError, dtm_to_datetime, dtm_to_instant

__all__ = ["is_radiology", "mdm", "oru_group"]

V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
V2_0270 = "http://terminology.hl7.org/CodeSystem/v2-0270"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
DICOM_UID = "urn:dicom:uid"
IMAGING = "363679005"  # SNOMED CT Imaging (procedure): ServiceRequest.category
_UID = re.compile(r"[0-2](\.(0|[1-9]\d*))+")
_TEXT_TYPES = ("TX", "FT", "ST")
_ED_TYPES = {"AP": "application", "IM": "image", "TEXT": "text", "AU": "audio", "MULTIPART": "multipart"}
_REVISION = {"appended": "appended", "amended": "amended"}


def is_radiology(ctx: HandlerContext, obr: Segment) -> bool:
    chosen = str(ctx.sender.options.get("category") or "").upper()
    if chosen:
        return chosen == "RAD"
    hit = vocab("DiagnosticServiceSection_ServiceRequestCategory").get(obr.get(24))
    if hit is not None:
        return hit[0] == IMAGING
    return str(ctx.route.get("category", "")).upper() == "RAD"


# ---- ORU^R01 ------------------------------------------------------------------------------------
async def oru_group(ctx: HandlerContext, work: Work, group: dict[str, Any], patient_ref: str) -> None:
    obr: Segment = group["obr"]
    orc: Segment | None = group["orc"]
    placer, filler, key, report_query = lab._order_keys(ctx, group)
    found = await ctx.find_one("DiagnosticReport", report_query, kind=COND_UPDATE)
    report = {"resourceType": "DiagnosticReport", **ctx.mapper.segment(obr, "OBR_DiagnosticReport")}
    if "status" not in report:
        if obr.valued(25):
            raise MappingError(f"OBR-25 '{obr.get(25)}' is not a result status this bridge knows", "OBR-25", "103")
        report["status"] = lab._report_status_from([lab._status(ctx, o, 11, "ObservationResultStatus", None) for o in group["obx"]])
    issued = obr.get(22) or ctx.msg.msh.get(7)
    if issued and "issued" not in report:
        report["issued"] = dtm_to_instant(issued, ctx.mapper.ctx.timezone)
    await _write(ctx, work, _Source(obr, orc, group["obx"], group.get("extra", []), placer, filler, key, found,
                                    obr.f(32).sub(1), obr), report, patient_ref)


# ---- MDM^T02/T04/T06/T08/T10 --------------------------------------------------------------------
async def mdm(ctx: HandlerContext) -> Work:
    work = Work()
    pid, txa = ctx.msg.first("PID"), ctx.msg.first("TXA")
    if pid is None:
        raise MappingError(f"an {ctx.msg.message_code}^{ctx.msg.trigger} message needs a PID segment", "PID", "100")
    if txa is None:
        raise MappingError(f"an {ctx.msg.message_code}^{ctx.msg.trigger} message needs a TXA segment", "TXA", "100")
    patient_ref = await ctx.patient_entry(work, pid, update=bool(ctx.sender.options.get("update_patient")))
    orc, obr = ctx.msg.first("ORC"), ctx.msg.first("OBR")
    placer = _first_ident(ctx, ((orc, 2), (obr, 2), (txa, 14)), "PLAC")
    filler = _first_ident(ctx, ((orc, 3), (obr, 3), (txa, 15)), "FILL")
    document = _first_ident(ctx, ((txa, 12),), None)
    key = filler or placer or document
    if key is None:
        raise MappingError("TXA-12 (unique document number) or an order number (TXA-14/TXA-15) is required", "TXA-12", "101")
    found = await ctx.find_one("DiagnosticReport", identifier_query(key), kind=COND_UPDATE)
    parent = _first_ident(ctx, ((txa, 13),), None)
    if found is None and parent is not None and key is document:  # a replacement names the document it replaces
        found = await ctx.find_one("DiagnosticReport", identifier_query(parent), kind=COND_UPDATE)
    report: dict[str, Any] = {"resourceType": "DiagnosticReport"}
    if obr is not None:
        report.update(ctx.mapper.segment(obr, "OBR_DiagnosticReport"))
    raw_status = txa.get(17)
    if raw_status:
        hit = vocab("DocumentCompletionStatus_DiagnosticReport").get(raw_status)
        if hit is None:
            raise MappingError(f"TXA-17 '{raw_status}' is not a document completion status this bridge knows", "TXA-17", "103")
        report["status"] = hit[0]
    elif "status" not in report:
        if obr is not None and obr.valued(25):
            raise MappingError(f"OBR-25 '{obr.get(25)}' is not a result status this bridge knows", "OBR-25", "103")
        report["status"] = "unknown"
    revision = _REVISION.get(str(ctx.route.get("revision", "")))
    if (revision and report["status"] == "final" and found is not None
            and lab.RANK.get(ctx.content(found).get("status", ""), 1) >= lab.RANK["final"]):
        report["status"] = revision
    if "code" not in report:
        doc_type = txa.f(2)
        if not doc_type:
            raise MappingError("OBR-4 (universal service id) or TXA-2 (document type) is required", "TXA-2", "101")
        coding = {"system": coding_system(doc_type.c(3)) if doc_type.c(3) else V2_0270, "code": doc_type.c(1),
                  **({"display": doc_type.c(2)} if doc_type.c(2) else {})}
        report["code"] = {"coding": [coding]}
    tz = ctx.mapper.ctx.timezone
    when = next((v for v in ((obr.get(22) if obr else ""), txa.get(8), txa.get(6), txa.get(4), ctx.msg.msh.get(7)) if v), "")
    if when and "issued" not in report:
        report["issued"] = dtm_to_instant(when, tz)
    if "effectiveDateTime" not in report and txa.get(4):
        report["effectiveDateTime"] = dtm_to_datetime(txa.get(4), tz)
    interpreter = obr.f(32).sub(1) if obr is not None and obr.valued(32) else (txa.f(22) if txa.valued(22) else txa.f(9))
    obx = [s for s in ctx.msg.segments if s.name == "OBX"]
    extra = [s for s in ctx.msg.segments if s.name in ("IPC", "ZDS")]
    idents_extra = [document] if document is not None else []
    await _write(ctx, work, _Source(obr, orc, obx, extra, placer, filler, key, found, interpreter, obr or txa,
                                    idents_extra), report, patient_ref)
    return work


def _first_ident(ctx: HandlerContext, places: tuple[tuple[Segment | None, int], ...], type_code: str | None) -> dict[str, Any] | None:
    for seg, n in places:
        if seg is None or not seg.valued(n):
            continue
        ident = ctx.mapper.datatype(seg.f(n), "EI_Identifier")
        if ident.get("value"):
            return {"type": {"coding": [{"system": V2_0203, "code": type_code}]}, **ident} if type_code else ident
    return None


# ---- shared -------------------------------------------------------------------------------------
class _Source:
    """What one report is built from (an ORU OBR group or an MDM message)."""

    def __init__(self, obr: Segment | None, orc: Segment | None, obx: list[Segment], extra: list[Segment],
                 placer: dict[str, Any] | None, filler: dict[str, Any] | None, key: dict[str, Any], found: Any,
                 interpreter: Component, origin: Segment, more_idents: list[dict[str, Any]] | None = None) -> None:
        self.obr, self.orc, self.obx, self.extra = obr, orc, obx, extra
        self.placer, self.filler, self.key, self.found = placer, filler, key, found
        self.interpreter, self.origin = interpreter, origin
        self.more_idents = more_idents or []


async def _write(ctx: HandlerContext, work: Work, src: _Source, report: dict[str, Any], patient_ref: str) -> None:
    stored: dict[str, Any] = ctx.content(src.found) if src.found is not None else {}
    if src.found is not None and lab._older(report, stored):
        work.notes.append(f"out of order: {report['status']} report for order {src.key['value']} not applied over the "
                          f"stored {stored.get('status')} one issued {stored.get('issued')}")
        return
    obr, orc = src.obr, src.orc

    # ServiceRequest: conditional create on the placer (else filler) order number, as the lab path
    sr_url: str | None = None
    sr_key = src.placer or src.filler
    if sr_key is not None:
        sr_query = identifier_query(sr_key)
        sr: dict[str, Any] = {"resourceType": "ServiceRequest", "status": "active", "intent": "order"}
        if obr is not None:
            sr.update(ctx.mapper.segment(obr, "OBR_ServiceRequest"))
        elif "code" in report:
            sr["code"] = report["code"]
        sr["identifier"] = [i for i in (src.placer, src.filler) if i is not None]
        sr["subject"] = {"reference": patient_ref}
        sr["category"] = [{"coding": [{"system": "http://snomed.info/sct", "code": IMAGING, "display": "Imaging"}]}]
        requester_xcn = orc.f(12) if orc is not None and orc.valued(12) else (obr.f(16) if obr is not None else None)
        if requester_xcn:
            requester = await practitioner_ref(ctx, work, requester_xcn, orc or src.origin)
            if requester is not None and "reference" in requester:
                sr["requester"] = requester
        sr_url = ctx.full_url("ServiceRequest", sr_query)
        if not work.has(sr_url):
            work.add(ctx.create_if_none(sr, sr_url, sr_query), orc or src.origin)

    interpreter = await practitioner_ref(ctx, work, src.interpreter, src.origin) if src.interpreter else None
    text, impression, attachments, uid = _report_content(ctx, work, src.obx)

    # ImagingStudy
    study_url = await _imaging_study(ctx, work, src, report, patient_ref, sr_url, interpreter, uid)

    sections = [report.get("category", [{}])[0].get("coding", [{}])[0].get("code")] if report.get("category") else []
    report["category"] = [{"coding": [{"system": V2_0074, "code": "RAD", "display": "Radiology"}]}]
    report["category"] += [{"coding": [{"system": V2_0074, "code": c}]} for c in sections if c and c != "RAD"]
    sent = [i for i in (src.placer, src.filler, *src.more_idents) if i is not None]
    keys = {(i.get("system"), i.get("value")) for i in sent}
    report["identifier"] = sent + [i for i in stored.get("identifier", []) if (i.get("system"), i.get("value")) not in keys]
    report["subject"] = {"reference": patient_ref}
    if sr_url is not None:
        report["basedOn"] = [{"reference": sr_url}]
    if interpreter is not None and "reference" in interpreter:
        report["resultsInterpreter"] = [interpreter]
    if study_url is not None:
        report["imagingStudy"] = [{"reference": study_url}]
    if text:
        report["conclusion"] = impression or text
        title = _title(report)
        attachments.insert(0, {"contentType": "text/plain; charset=utf-8",
                               "data": base64.b64encode(text.encode("utf-8")).decode("ascii"), "title": title,
                               **({"creation": report["issued"]} if report.get("issued") else {})})
    if attachments:
        report["presentedForm"] = attachments
    url = ctx.full_url("DiagnosticReport", identifier_query(src.key))
    if src.found is None:  # searched under the conditional-update lock, held until commit
        work.add(ctx.new(report, url), src.origin)
    else:
        work.add(ctx.put(report, url, src.found, identifier_query(src.key)), src.origin)


def _title(report: dict[str, Any]) -> str:
    code = report.get("code") or {}
    coding = (code.get("coding") or [{}])[0]
    name = code.get("text") or coding.get("display") or coding.get("code") or "Imaging"
    return f"{name} report"


def _report_content(ctx: HandlerContext, work: Work, obxs: list[Segment]) -> tuple[str, str, list[dict[str, Any]], str | None]:
    """(the whole report text, its impression section, attachments from ED OBX, a study UID OBX's value)."""
    lines: list[str] = []
    impression: list[str] = []
    attachments: list[dict[str, Any]] = []
    uid: str | None = None
    uid_codes = vocab("ObservationIdentifier_StudyInstanceUid")
    sections = vocab("ObservationIdentifier_ReportSection")
    for obx in obxs:
        vt, ident = obx.get(2).upper(), obx.f(3)
        first = ident.raw.split(ident.enc.component)[0].replace(ident.enc.subcomponent, "&")
        codes = {ident.c(1), ident.c(4), first} - {""}  # "&IMP": IHE report sections
        value = obx.f(5).c(1)
        if (codes & uid_codes.keys()) or (vt in ("RP", "HD") and _UID.fullmatch(value or "")):
            if _UID.fullmatch(value or ""):
                uid = uid or value
            else:
                work.notes.append(f"OBX {obx.get(1) or obx.index}: '{value}' is not a DICOM UID; ignored")
            continue
        if vt in _TEXT_TYPES:
            text = "\n".join(rep.text for rep in obx.reps(5))
            lines.append(text)
            if any(sections.get(c, ("",))[0] == "impression" for c in codes):
                impression.append(text)
        elif vt == "ED":
            att = _ed_attachment(obx.f(5))
            if att is None:
                work.notes.append(f"OBX {obx.get(1) or obx.index}: ED without Base64 data; not kept")
            else:
                attachments.append(att)
    return "\n".join(lines).strip("\n"), "\n".join(impression).strip("\n"), attachments, uid


def _ed_attachment(ed: Component) -> dict[str, Any] | None:
    kind, subtype, encoding, data = ed.c(2), ed.c(3), ed.c(4).upper(), ed.c(5)
    if not data:
        return None
    if encoding == "BASE64":
        try:
            base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            return None
        payload = data
    elif encoding == "A":
        payload = base64.b64encode(data.encode("utf-8")).decode("ascii")
    else:
        return None
    major = _ED_TYPES.get(kind.upper(), kind.lower() or "application")
    return {"contentType": f"{major}/{(subtype or 'octet-stream').lower()}", "data": payload}


async def _imaging_study(ctx: HandlerContext, work: Work, src: _Source, report: dict[str, Any], patient_ref: str,
                         sr_url: str | None, interpreter: dict[str, Any] | None, obx_uid: str | None) -> str | None:
    ipc = next((s for s in src.extra if s.name == "IPC"), None)
    zds = next((s for s in src.extra if s.name == "ZDS"), None)
    accession: dict[str, Any] | None = None
    if ipc is not None and ipc.valued(1):
        accession = ctx.mapper.datatype(ipc.f(1), "EI_Identifier") or None
    elif src.obr is not None and src.obr.valued(18):
        accession = ctx.mapper.datatype(src.obr.f(18), "EI_Identifier") or None
    elif ctx.sender.options.get("accession") == "filler" and src.filler is not None:
        accession = {k: v for k, v in src.filler.items() if k != "type"}
    uid = (ipc.get(3) if ipc is not None and ipc.valued(3) else "") or obx_uid or (zds.get(1) if zds is not None else "")
    if uid and not _UID.fullmatch(uid):
        work.notes.append(f"'{uid}' is not a DICOM Study Instance UID; not used")
        uid = ""
    if (accession is None or not accession.get("value")) and not uid:
        return None
    idents: list[dict[str, Any]] = []
    if uid:
        idents.append({"system": DICOM_UID, "value": f"urn:oid:{uid}"})
    if accession is not None and accession.get("value"):
        idents.append({"type": {"coding": [{"system": V2_0203, "code": "ACSN"}]}, **accession})
    # one study: found by accession, else by UID (both locked: a later message may add the other)
    found = None
    primary = idents[-1]
    for ident in reversed(idents):
        hit = await ctx.find_one("ImagingStudy", identifier_query(ident), kind=COND_UPDATE)
        found = found or hit
    stored = ctx.content(found) if found is not None else {}
    keys = {(i.get("system"), i.get("value")) for i in idents}
    status = vocab("DiagnosticReportStatus_ImagingStudy").get(report.get("status", "unknown"), ("unknown",))[0]
    study: dict[str, Any] = {
        "resourceType": "ImagingStudy",
        "identifier": idents + [i for i in stored.get("identifier", []) if (i.get("system"), i.get("value")) not in keys],
        "status": status,
        "subject": {"reference": patient_ref},
    }
    if sr_url is not None:
        study["basedOn"] = [{"reference": sr_url}]
    started = src.obr.get(7) if src.obr is not None else ""
    if started:
        study["started"] = dtm_to_datetime(started, ctx.mapper.ctx.timezone)
    modality = _modality(src)
    if modality:
        study["modality"] = modality
    if report.get("code"):
        study["procedureCode"] = [report["code"]]
    if interpreter is not None and "reference" in interpreter:
        study["interpreter"] = [interpreter]
    query = identifier_query(primary)
    url = ctx.full_url("ImagingStudy", query)
    if found is None:
        work.add(ctx.new(study, url), ipc or src.origin)
    else:
        work.add(ctx.put(study, url, found, query), ipc or src.origin)
    return url


def _modality(src: _Source) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for seg in [s for s in src.extra if s.name == "IPC"]:
        m = seg.f(5)
        if m.c(1):
            system = DCM if m.c(3) in ("", "DCM") else coding_system(m.c(3))
            coding = {"system": system, "code": m.c(1), **({"display": m.c(2)} if m.c(2) else {})}
            if coding not in out:
                out.append(coding)
    if not out and src.obr is not None:
        hit = vocab("DiagnosticServiceSection_Modality").get(src.obr.get(24))
        if hit is not None:
            out.append({"system": hit[1], "code": hit[0], "display": hit[2]})
    return out
