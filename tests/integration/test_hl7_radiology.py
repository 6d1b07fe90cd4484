"""Radiology results over real MLLP sockets into the real PostgreSQL: ORU^R01 from a RIS and MDM^T02/T08/T10
→ DiagnosticReport (report text as conclusion and presentedForm) + ImagingStudy; versions, not duplicates."""

from __future__ import annotations

import base64
from typing import Any

from tests.integration.test_hl7_support import (
    MLLPClient,
    ack_code,
    ack_segment,
    counts,
    listener_fixture,
    log_rows,
    msg,
    new_sender,
    resources,
    sample,
    with_sender,
)

listener = listener_fixture()

DICOM_STUDY_UID = "1.2.840.113619.2.55.3.604688119.969.1268071029.320"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"


def obr(**fields: str) -> str:
    """An OBR segment with the given fields (``f4="…"`` is OBR-4), others empty."""
    top = max(int(k[1:]) for k in fields)
    return "OBR|" + "|".join(fields.get(f"f{n}", "") for n in range(1, top + 1))


def rad_oru(app: str, control: str, status: str, *, when: str, impression: str = "No acute cardiopulmonary disease.",
            section: str = "RX", uid: bool = True) -> bytes:
    """A chest X-ray report from a RIS: accession in OBR-18, study UID in ZDS-1, findings and impression as TX OBX."""
    return msg(
        f"MSH|^~\\&|{app}|LAB|EHR|HOSP|{when}+0530||ORU^R01^ORU_R01|{control}|P|2.5.1",
        "PID|1||MRN-200^^^HOSP&1.2.3.4&ISO^MR||Verma^Ravi||19700101|M",
        "ORC|RE|PO-77^EHR|FO-77^RIS",
        obr(f1="1", f2="PO-77^EHR", f3="FO-77^RIS", f4="36643-5^XR Chest 2 Views^LN", f7="20240310090000+0530",
            f16="1111^Iyer^Meera^^^Dr", f18="ACC-77", f22=f"{when}+0530", f24=section, f25=status,
            f32="2222&Khan&Sameer&&&Dr"),
        f"OBX|1|TX|&GDT^Findings||Lungs are clear.~No pleural effusion.||||||{status}",
        f"OBX|2|TX|&IMP^Impression||{impression}||||||{status}",
        *([f"ZDS|{DICOM_STUDY_UID}^RIS^Application^DICOM"] if uid else []),
    )


def decoded(attachment: dict[str, Any]) -> str:
    return base64.b64decode(attachment["data"]).decode("utf-8")


async def test_radiology_oru_writes_report_text_and_imaging_study(listener: Any, database_url: str) -> None:
    """HL7 v2.5.1 Ch. 7 §7.3.1 ORU^R01 (OBR-24 diagnostic service section RX, table 0074; OBR-18 accession; OBR-32
    principal result interpreter; TX OBX report text; IHE RAD ZDS-1 Study Instance UID) → FHIR R4 DiagnosticReport
    (category RAD, conclusion, presentedForm, resultsInterpreter, imagingStudy) and ImagingStudy (identifier ACSN +
    urn:dicom:uid, status, subject, basedOn, started, modality, procedureCode)."""
    app, _, tenant = new_sender(database_url)
    async with MLLPClient(listener.port) as c:
        ack = await c.send(rad_oru(app, "R1", "F", when="20240310110000"))
    assert ack_code(ack) == "AA", ack
    [report] = resources(database_url, tenant, "DiagnosticReport")
    [study] = resources(database_url, tenant, "ImagingStudy")
    [patient] = resources(database_url, tenant, "Patient")
    [sr] = resources(database_url, tenant, "ServiceRequest")
    pracs = {p["identifier"][0]["value"]: p for p in resources(database_url, tenant, "Practitioner")}
    assert resources(database_url, tenant, "Observation") == []  # the report text is not split into Observations
    assert report["status"] == "final"
    assert report["category"] == [{"coding": [{"system": V2_0074, "code": "RAD", "display": "Radiology"}]},
                                  {"coding": [{"system": V2_0074, "code": "RX"}]}]
    assert report["code"] == {"coding": [{"code": "36643-5", "display": "XR Chest 2 Views", "system": "http://loinc.org"}]}
    assert report["effectiveDateTime"] == "2024-03-10T09:00:00+05:30"
    assert report["issued"] == "2024-03-10T11:00:00+05:30"
    assert report["subject"] == {"reference": f"Patient/{patient['id']}"}
    assert report["basedOn"] == [{"reference": f"ServiceRequest/{sr['id']}"}]
    assert report["imagingStudy"] == [{"reference": f"ImagingStudy/{study['id']}"}]
    assert report["resultsInterpreter"] == [{"reference": f"Practitioner/{pracs['2222']['id']}", "display": "Dr Sameer Khan"}]
    assert [i["type"]["coding"][0]["code"] for i in report["identifier"]] == ["PLAC", "FILL"]
    assert report["conclusion"] == "No acute cardiopulmonary disease."  # the impression section (&IMP)
    [form] = report["presentedForm"]
    assert form["contentType"] == "text/plain; charset=utf-8"
    assert form["title"] == "XR Chest 2 Views report"
    assert form["creation"] == "2024-03-10T11:00:00+05:30"
    assert decoded(form) == "Lungs are clear.\nNo pleural effusion.\nNo acute cardiopulmonary disease."
    assert {k: v for k, v in study.items() if k not in ("id", "meta")} == {
        "resourceType": "ImagingStudy",
        "identifier": [
            {"system": "urn:dicom:uid", "value": f"urn:oid:{DICOM_STUDY_UID}"},
            {"type": {"coding": [{"system": V2_0203, "code": "ACSN"}]}, "value": "ACC-77",
             "system": f"urn:hl7-v2:sender:{app}@LAB"},
        ],
        "status": "available",
        "subject": {"reference": f"Patient/{patient['id']}"},
        "basedOn": [{"reference": f"ServiceRequest/{sr['id']}"}],
        "started": "2024-03-10T09:00:00+05:30",
        "modality": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "DX", "display": "Digital Radiography"}],
        "procedureCode": [report["code"]],
        "interpreter": [{"reference": f"Practitioner/{pracs['2222']['id']}", "display": "Dr Sameer Khan"}],
    }
    assert sr["category"] == [{"coding": [{"system": "http://snomed.info/sct", "code": "363679005", "display": "Imaging"}]}]
    assert sr["requester"] == {"reference": f"Practitioner/{pracs['1111']['id']}", "display": "Dr Meera Iyer"}


async def test_radiology_preliminary_final_corrected_are_versions_and_late_preliminary_is_skipped(
        listener: Any, database_url: str) -> None:
    """HL7 v2.5.1 Ch. 7 OBR-25 Result Status (table 0123: P, F, C) → FHIR R4 http.html#update: versions 1, 2, 3 of the
    same DiagnosticReport and ImagingStudy; a preliminary arriving after the final changes nothing (AA, log note)."""
    app, _, tenant = new_sender(database_url)
    async with MLLPClient(listener.port) as c:
        assert ack_code(await c.send(rad_oru(app, "V1", "P", when="20240310100000", impression="Possible opacity.",
                                             uid=False))) == "AA"
        assert ack_code(await c.send(rad_oru(app, "V2", "F", when="20240310110000", impression="Opacity RLL."))) == "AA"
        assert ack_code(await c.send(rad_oru(app, "V3", "C", when="20240310120000", impression="No opacity."))) == "AA"
        late = await c.send(rad_oru(app, "V0", "P", when="20240310093000", impression="stale"))
    assert ack_code(late) == "AA"
    [report] = resources(database_url, tenant, "DiagnosticReport")
    [study] = resources(database_url, tenant, "ImagingStudy")
    assert report["status"] == "corrected" and report["meta"]["versionId"] == "3"
    assert report["conclusion"] == "No opacity."
    assert decoded(report["presentedForm"][0]).endswith("No opacity.")
    # the study was created from the accession alone, then found by it and given the UID
    assert study["meta"]["versionId"] == "3" and study["status"] == "available"
    assert [i["system"] for i in study["identifier"]] == ["urn:dicom:uid", f"urn:hl7-v2:sender:{app}@LAB"]
    history = counts(database_url, tenant)
    assert history["DiagnosticReport"] == 3 and history["ImagingStudy"] == 3 and history["ServiceRequest"] == 1
    assert "out of order" in late
    rows = log_rows(database_url, app)
    assert [r["ack_code"] for r in rows] == ["AA", "AA", "AA", "AA"]
    assert rows[-1]["resources"] == [] and "out of order" in rows[-1]["error"]


async def test_sender_category_rad_routes_oru_without_obr24_to_radiology(listener: Any, database_url: str) -> None:
    """Sender option ``category: RAD`` (bridge README "Radiology"): HL7 v2.5.1 ORU^R01 without OBR-24 is a radiology
    report (FHIR R4 DiagnosticReport.category RAD, no Observations); no accession or UID → no ImagingStudy."""
    app, _, tenant = new_sender(database_url, category="RAD")
    message = rad_oru(app, "S1", "F", when="20240310110000", section="", uid=False).replace(b"|ACC-77|", b"||")
    async with MLLPClient(listener.port) as c:
        assert ack_code(await c.send(message)) == "AA"
    [report] = resources(database_url, tenant, "DiagnosticReport")
    assert report["category"] == [{"coding": [{"system": V2_0074, "code": "RAD", "display": "Radiology"}]}]
    assert "imagingStudy" not in report
    assert resources(database_url, tenant, "ImagingStudy") == [] and resources(database_url, tenant, "Observation") == []


def mdm(app: str, event: str, control: str, *, status: str, text: str, doc: str, parent: str = "",
        when: str = "20240311080000") -> bytes:
    """An MDM without ORC/OBR (a transcription system): TXA-12 unique document number, TXA-13 parent."""
    return msg(
        f"MSH|^~\\&|{app}|LAB|EHR|HOSP|{when}||MDM^{event}^MDM_{event}|{control}|P|2.5.1",
        f"EVN|{event}|{when}",
        "PID|1||MRN-300^^^HOSP&1.2.3.4&ISO^MR||Nair^Lata||19650505|F",
        "PV1|1|O|RAD^^^HOSP",
        f"TXA|1|RA^Radiology report^HL70270|TX|20240311070000||{when}||{when}|3333^Das^Amit^^^Dr|||{doc}|{parent}||||{status}",
        f"OBX|1|TX|&GDT^Report||{text}||||||F",
    )


async def test_mdm_t02_then_t10_replacement_are_versions_of_one_report(listener: Any, database_url: str) -> None:
    """HL7 v2.5.1 Ch. 9 §9.6.2 MDM^T02 (original document notification and content: TXA-2 document type, TXA-12
    unique document number, TXA-17 completion status DI/AU, table 0271) and §9.6.10 MDM^T10 (replacement, TXA-13 parent
    document) → one FHIR R4 DiagnosticReport in versions: preliminary, then amended; text in presentedForm."""
    app, _, tenant = new_sender(database_url)
    async with MLLPClient(listener.port) as c:
        a1 = await c.send(mdm(app, "T02", "M1", status="DI", text="Dictated: mild cardiomegaly.", doc="DOC-1^RIS"))
        assert ack_code(a1) == "AA", a1
        [first] = resources(database_url, tenant, "DiagnosticReport")
        assert first["status"] == "preliminary"
        assert ack_code(await c.send(mdm(app, "T02", "M2", status="AU", text="Mild cardiomegaly.", doc="DOC-1^RIS",
                                         when="20240311090000"))) == "AA"
        ack = await c.send(mdm(app, "T10", "M3", status="AU", text="Mild cardiomegaly. Addendum: no effusion.",
                               doc="DOC-2^RIS", parent="DOC-1^RIS", when="20240311100000"))
    assert ack_code(ack) == "AA", ack
    [report] = resources(database_url, tenant, "DiagnosticReport")
    [prac] = resources(database_url, tenant, "Practitioner")
    assert report["id"] == first["id"] and report["meta"]["versionId"] == "3"
    assert report["status"] == "amended"
    assert report["code"] == {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0270", "code": "RA",
                                          "display": "Radiology report"}]}
    assert sorted(i["value"] for i in report["identifier"]) == ["DOC-1", "DOC-2"]
    assert report["effectiveDateTime"] == "2024-03-11T07:00:00Z"
    assert report["issued"] == "2024-03-11T10:00:00Z"
    assert report["conclusion"] == "Mild cardiomegaly. Addendum: no effusion."
    assert report["presentedForm"][0]["title"] == "Radiology report report"
    assert decoded(report["presentedForm"][0]) == "Mild cardiomegaly. Addendum: no effusion."
    assert report["resultsInterpreter"] == [{"reference": f"Practitioner/{prac['id']}", "display": "Dr Amit Das"}]
    assert "basedOn" not in report and resources(database_url, tenant, "ServiceRequest") == []
    assert resources(database_url, tenant, "ImagingStudy") == []


async def test_mdm_t02_sample_with_dicom_study_uid(listener: Any, database_url: str) -> None:
    """HL7 v2.8 MDM^T02 sample (microsoft/FHIR-Converter MDM-T02-01: ORC/OBR order numbers, TXA-17 AU, OBX HD
    113014^DICOM Study^DCM, ED without data) → FHIR R4 DiagnosticReport final + ImagingStudy keyed by the Study
    Instance UID; the empty ED is noted, not stored."""
    app, facility, tenant = new_sender(database_url)
    async with MLLPClient(listener.port) as c:
        ack = await c.send(with_sender(sample("microsoft-fhir-converter/MDM-T02-01.hl7"), app, facility))
    assert ack_code(ack) == "AA", ack
    [report] = resources(database_url, tenant, "DiagnosticReport")
    [study] = resources(database_url, tenant, "ImagingStudy")
    [sr] = resources(database_url, tenant, "ServiceRequest")
    assert report["status"] == "final"
    assert report["code"]["coding"][0]["code"] == "02585"
    assert [i["value"] for i in report["identifier"]] == ["00012345", "1-1", "1.2.840.317.5947431.51.20080131160038"]
    assert report["imagingStudy"] == [{"reference": f"ImagingStudy/{study['id']}"}]
    assert report["basedOn"] == [{"reference": f"ServiceRequest/{sr['id']}"}]
    assert study["identifier"] == [{"system": "urn:dicom:uid", "value": "urn:oid:1.2.840.317.5947431.51"}]
    assert study["status"] == "available" and study["started"] == "2008-01-31T15:55:00+02:15"
    [row] = log_rows(database_url, app)
    assert row["status"] == "processed" and row["ack_code"] == "AA"
    assert "ED without Base64 data" in ack


async def test_mdm_t02_ig_sample_keeps_report_text(listener: Any, database_url: str) -> None:
    """HL7 v2-to-FHIR IG sample Message.hl7_MDM_T02 (v2.5.1: TX, FT with \\.br\\ line breaks, ST and an ED whose data
    is not Base64) → FHIR R4 DiagnosticReport final whose presentedForm holds the text lines; the bad ED is skipped."""
    app, facility, tenant = new_sender(database_url)
    async with MLLPClient(listener.port) as c:
        ack = await c.send(with_sender(sample("hl7-v2-to-fhir/MDM_T02.hl7"), app, facility))
    assert ack_code(ack) == "AA", ack
    [report] = resources(database_url, tenant, "DiagnosticReport")
    assert report["status"] == "final"
    assert report["code"]["coding"][0]["code"] == "11502-2"
    [form] = report["presentedForm"]
    text = decoded(form)
    assert text.startswith("Transcription Authentication Interface Message Text\nCritical Values Entered On:")
    assert "\nCalled Critical Value Reported \n" in text  # FT \.br\ → line break
    assert text.endswith("Table formatting from the original result was not included.")
    assert report["conclusion"] == text
    assert resources(database_url, tenant, "ImagingStudy") == []


async def test_mdm_unknown_completion_status_is_ae_and_writes_nothing(listener: Any, database_url: str) -> None:
    """HL7 v2.5.1 Ch. 9 TXA-17 Document Completion Status (table 0271) unknown → AE with ERR naming TXA-17 (table 0357
    code 103); FHIR R4 transaction all-or-nothing: nothing written."""
    app, _, tenant = new_sender(database_url)
    async with MLLPClient(listener.port) as c:
        ack = await c.send(mdm(app, "T02", "BAD1", status="ZZ", text="x", doc="DOC-9"))
    assert ack_code(ack) == "AE"
    err = ack_segment(ack, "ERR")
    assert err is not None and err[2] == "TXA^5^17" and err[3].startswith("103^")
    assert counts(database_url, tenant) == {}


async def test_ipc_segment_gives_accession_study_uid_and_modality(listener: Any, database_url: str) -> None:
    """HL7 v2.5.1 Ch. 4 §4.5.6 IPC (Imaging Procedure Control: IPC-1 accession identifier, IPC-3 study instance UID,
    IPC-5 modality) in an ORU^R01 group with OBR-24 CT → FHIR R4 ImagingStudy identifier (ACSN, urn:dicom:uid) and
    modality (DCM CT); DiagnosticReport category RAD + CT."""
    app, _, tenant = new_sender(database_url)
    message = msg(
        f"MSH|^~\\&|{app}|LAB|EHR|HOSP|20240315120000||ORU^R01^ORU_R01|I1|P|2.5.1",
        "PID|1||MRN-201^^^HOSP&1.2.3.4&ISO^MR||Gupta^Anu||19750101|F",
        obr(f1="1", f2="PO-88^EHR", f3="FO-88^RIS", f4="CTHEAD^CT Head^L", f7="20240315100000", f24="CT", f25="F"),
        "IPC|ACC-88^RIS|RP-1|1.2.3.4.5.6.7|SPS-1|CT^Computed Tomography^DCM",
        "OBX|1|TX|&IMP^Impression||Normal CT head.||||||F",
    )
    async with MLLPClient(listener.port) as c:
        ack = await c.send(message)
    assert ack_code(ack) == "AA", ack
    [report] = resources(database_url, tenant, "DiagnosticReport")
    [study] = resources(database_url, tenant, "ImagingStudy")
    assert report["category"] == [{"coding": [{"system": V2_0074, "code": "RAD", "display": "Radiology"}]},
                                  {"coding": [{"system": V2_0074, "code": "CT"}]}]
    assert report["conclusion"] == "Normal CT head." and report["status"] == "final"
    assert study["identifier"] == [
        {"system": "urn:dicom:uid", "value": "urn:oid:1.2.3.4.5.6.7"},
        {"type": {"coding": [{"system": V2_0203, "code": "ACSN"}]}, "value": "ACC-88", "system": "urn:hl7-v2:aa:RIS"},
    ]
    assert study["modality"] == [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "CT",
                                  "display": "Computed Tomography"}]
    assert study["started"] == "2024-03-15T10:00:00Z"
