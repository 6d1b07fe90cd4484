"""ServiceRequest (+ Patient, Encounter, requester, Specimen) → ORM^O01 or OML^O21 (HL7 v2.5.1 Ch. 4
Order Entry: §4.4.1 ORM^O01 general order, §4.4.6 OML^O21 laboratory order; v2.3/v2.4 receivers get the
same segments without TQ1/SPM, with timing in ORC-7/OBR-27 TQ and priority in OBR-5).

Segments: MSH, PID (PID-3 identifiers with CX-4 authority and CX-5 type, PID-5 names, PID-7 birth
date, PID-8 sex), PV1 when the order names an Encounter (PV1-2 class, PV1-19 visit number), ORC
(ORC-1 order control NW/CA/HD/RL, ORC-2 placer order number, ORC-9 transaction time, ORC-12
requester), TQ1 (TQ1-7/8 occurrence, TQ1-9 priority), OBR (OBR-2 placer number, OBR-4 the code,
OBR-16 requester), NTE per note, SPM per specimen (OML only). FHIR vocabulary goes through the
inbound tables in reverse (``mappings/outbound/README.md``). Every value is escaped for the default
delimiters (``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\``, line breaks as ``\\.br\\``).

The placer order number is the ServiceRequest identifier typed PLAC (v2-0203), else its first
identifier, else the resource id, with the destination's sending application as namespace (or the
identifier's OID as universal id).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from importlib.resources import files
from typing import Any

from hl7_bridge.ack import escape
from hl7_bridge.decode import DEFAULT_ENCODING

__all__ = ["OrderContext", "dtm", "encode_order", "order_control", "placer_number"]

V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
ENC = DEFAULT_ENCODING
FS, CS, RS, SS = ENC.field, ENC.component, ENC.repetition, ENC.subcomponent


def e(value: Any) -> str:
    return escape(str(value), ENC) if value not in (None, "") else ""


def comp(*parts: str) -> str:
    return CS.join(parts).rstrip(CS)


def sub(*parts: str) -> str:
    return SS.join(parts).rstrip(SS)


@cache
def _reverse(name: str) -> dict[str, str]:
    """FHIR code → v2 code from mappings/vocab/<name>.csv (first row wins)."""
    from hl7_bridge.mapper import vocab

    out: dict[str, str] = {}
    for code, (fhir_code, _, _) in vocab(name).items():
        out.setdefault(fhir_code, code)
    return out


@cache
def _systems() -> dict[str, str]:
    from hl7_bridge.mapper import coding_systems

    out: dict[str, str] = {}
    for name, system in coding_systems().items():
        out.setdefault(system, name)
    return out


@cache
def order_controls() -> dict[str, str]:
    text = files("mappings").joinpath("outbound", "Event_OrderControl.csv").read_text(encoding="utf-8")
    return {r["event"]: r["order_control"] for r in csv.DictReader(text.splitlines())}


def order_control(event: str) -> str:
    return order_controls()[event]


def system_name(system: str) -> str:
    """FHIR system URI → v2 coding system name (table 0396) where one is known."""
    if not system:
        return ""
    known = _systems().get(system)
    if known:
        return known
    m = re.fullmatch(r"http://terminology\.hl7\.org/CodeSystem/v2-(\d{4})", system)
    if m:
        return f"HL7{m.group(1)}"
    if system.startswith("urn:oid:"):
        return system[8:]
    return system


_DT = re.compile(r"(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(\.\d+)?)?(Z|[+-]\d{2}:\d{2})?)?)?)?")


def dtm(value: str | None) -> str:
    """FHIR date/dateTime/instant → v2 DTM at the same precision (``2024-03-05T10:00:00+05:30`` →
    ``20240305100000+0530``)."""
    if not value:
        return ""
    m = _DT.fullmatch(value)
    if not m:
        return ""
    y, mo, d, h, mi, s, frac, zone = m.groups()
    out = y + (mo or "") + (d or "") + (h or "") + (mi or "") + (s or "") + (frac[:5] if frac else "")
    if zone:
        out += "+0000" if zone == "Z" else zone.replace(":", "")
    return out


def _now() -> str:
    return datetime.now(UTC).strftime("%Y%m%d%H%M%S") + "+0000"


def cwe(concept: dict[str, Any] | None) -> str:
    """CodeableConcept → CWE (first coding in 1–3, second in 4–6; text alone in CWE-2 … and CWE-9)."""
    if not concept:
        return ""
    codings = [c for c in concept.get("coding") or [] if c.get("code")]
    parts: list[str] = []
    for c in codings[:2]:
        parts += [e(c.get("code")), e(c.get("display") or (concept.get("text") if not parts else "")),
                  e(system_name(c.get("system", "")))]
    if not codings:
        parts = ["", e(concept.get("text"))]
    return comp(*parts)


def hd_of_system(system: str | None, fallback_namespace: str = "") -> str:
    """Identifier.system → HD as subcomponents (for CX-4 / EI-2..4)."""
    if not system:
        return sub(e(fallback_namespace))
    if system.startswith("urn:hl7-v2:aa:"):
        return sub(e(system[len("urn:hl7-v2:aa:"):]))
    if system.startswith("urn:oid:"):
        return sub("", e(system[8:]), "ISO")
    if system.startswith("urn:uuid:"):
        return sub("", e(system[9:]), "UUID")
    return sub("", e(system), "URI")


def cx(identifier: dict[str, Any]) -> str:
    type_code = next((c.get("code") for c in (identifier.get("type") or {}).get("coding") or [] if c.get("code")), "")
    return comp(e(identifier.get("value")), "", "", hd_of_system(identifier.get("system")), e(type_code))


def xpn(name: dict[str, Any]) -> str:
    given = name.get("given") or []
    use = _reverse("NameType").get(name.get("use", ""), "")
    return comp(e(name.get("family")), e(given[0] if given else ""), e(" ".join(given[1:])),
                e(" ".join(name.get("suffix") or [])), e(" ".join(name.get("prefix") or [])), "", e(use))


def xcn(who: dict[str, Any] | None, ref: dict[str, Any] | None) -> str:
    """A Practitioner (or the reference's display) → XCN (id^family^given^middle^suffix^prefix)."""
    if who and who.get("resourceType") == "Practitioner":
        ident = next((i.get("value") for i in who.get("identifier") or [] if i.get("value")), who.get("id", ""))
        name = (who.get("name") or [{}])[0]
        given = name.get("given") or []
        return comp(e(ident), e(name.get("family")), e(given[0] if given else ""), e(" ".join(given[1:])),
                    e(" ".join(name.get("suffix") or [])), e(" ".join(name.get("prefix") or [])))
    if ref:
        rid = (ref.get("reference") or "").rpartition("/")[2]
        return comp(e(rid), e(ref.get("display")))
    return ""


def placer_number(sr: dict[str, Any]) -> tuple[str, str | None]:
    """(value, system) of the placer order number: the PLAC identifier, else the first, else the id."""
    idents = [i for i in sr.get("identifier") or [] if i.get("value")]
    plac = next((i for i in idents if any(c.get("code") == "PLAC" for c in (i.get("type") or {}).get("coding") or [])), None)
    chosen = plac or (idents[0] if idents else None)
    if chosen is None:
        return str(sr.get("id", "")), None
    return str(chosen["value"]), chosen.get("system")


def ei(value: str, system: str | None, namespace: str) -> str:
    if system and system.startswith("urn:oid:"):
        return comp(e(value), e(namespace), e(system[8:]), "ISO")
    return comp(e(value), e(namespace))


@dataclass(slots=True)
class OrderContext:
    """What the order message is built from (references already read)."""

    service_request: dict[str, Any]
    patient: dict[str, Any] | None = None
    encounter: dict[str, Any] | None = None
    requester: dict[str, Any] | None = None
    specimens: list[dict[str, Any]] | None = None


def _version_at_least(version: str, major: int, minor: int) -> bool:
    parts = [int(p) for p in re.findall(r"\d+", version)[:2]] + [0, 0]
    return (parts[0], parts[1]) >= (major, minor)


def encode_order(ctx: OrderContext, *, event: str, message_type: str, version: str, control_id: str,
                 sending_app: str, sending_facility: str, receiving_app: str, receiving_facility: str,
                 now: Callable[[], str] = _now) -> str:
    """The message text, segments separated by <CR>."""
    sr = ctx.service_request
    code, trigger = message_type.split("^")
    structure = f"{code}_{trigger}"
    modern = _version_at_least(version, 2, 5)
    control = order_control(event)
    segs: list[list[str]] = []
    segs.append(["MSH", ENC.msh2, e(sending_app), e(sending_facility), e(receiving_app), e(receiving_facility), now(), "",
                 comp(code, trigger, structure), e(control_id), "P", e(version), "", "", "AL", "NE", "", "UNICODE UTF-8"])
    pat = ctx.patient or {}
    subject_ref = (sr.get("subject") or {}).get("reference", "")
    ids = [cx(i) for i in pat.get("identifier") or [] if i.get("value")] or ([comp(e(subject_ref.rpartition("/")[2]))] if subject_ref else [])
    segs.append(["PID", "1", "", RS.join(ids), "", RS.join(xpn(n) for n in pat.get("name") or []), "",
                 dtm(pat.get("birthDate")), e(_reverse("AdministrativeSex").get(pat.get("gender", ""), ""))])
    if ctx.encounter:
        enc = ctx.encounter
        klass = _reverse("PatientClass_EncounterClass").get((enc.get("class") or {}).get("code", ""), "")
        visit = next((i.get("value") for i in enc.get("identifier") or [] if i.get("value")), enc.get("id"))
        segs.append(["PV1", "1", e(klass or "U")] + [""] * 16 + [comp(e(visit))])
    placer, placer_system = placer_number(sr)
    placer_ei = ei(placer, placer_system, sending_app)
    requester = xcn(ctx.requester, sr.get("requester"))
    start, end = _occurrence(sr)
    priority = _reverse("Priority_ServiceRequest").get(sr.get("priority", ""), "")
    orc = ["ORC", control, placer_ei, "", "", "", "", "", "", dtm(sr.get("authoredOn")) or now(), "", "", requester]
    if not modern and (start or priority):
        orc[7] = comp("", "", "", start, end, priority)  # ORC-7 quantity/timing (TQ), before v2.5
    segs.append(orc)
    if modern and (start or end or priority):
        segs.append(["TQ1", "1", "", "", "", "", "", start, end, e(priority)])
    obr = ["OBR", "1", placer_ei, "", cwe(sr.get("code"))]
    if not modern:
        obr += [e(priority)]  # OBR-5 priority (v2.3/v2.4)
    obr += [""] * (16 - len(obr)) + [requester]
    if not modern and (start or priority):
        obr += [""] * (27 - len(obr)) + [comp("", "", "", start, end, priority)]
    segs.append(obr)
    for n, note in enumerate(sr.get("note") or [], 1):
        if note.get("text"):
            segs.append(["NTE", str(n), "P", e(note["text"])])
    if code == "OML" and modern:
        for n, spec in enumerate(ctx.specimens or [], 1):
            sid = next((i.get("value") for i in spec.get("identifier") or [] if i.get("value")), spec.get("id", ""))
            collected = (spec.get("collection") or {}).get("collectedDateTime")
            spm = ["SPM", str(n), comp(e(sid)), "", cwe(spec.get("type"))]
            if collected:
                spm += [""] * (17 - len(spm)) + [dtm(collected)]
            segs.append(spm)
    return "\r".join(FS.join(s).rstrip(FS) if s[0] != "MSH" else FS.join(s) for s in segs) + "\r"


def _occurrence(sr: dict[str, Any]) -> tuple[str, str]:
    if sr.get("occurrenceDateTime"):
        return dtm(sr["occurrenceDateTime"]), ""
    period = sr.get("occurrencePeriod") or {}
    return dtm(period.get("start")), dtm(period.get("end"))
