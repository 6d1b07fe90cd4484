"""SIU scheduling messages over real MLLP (HL7 v2.5.1 Ch. 10; the IG's SIU_S12 message map and SCH/AIS/
AIL/AIP[Appointment] segment maps): S12 book, S13 reschedule, S14 modify, S15 cancel, S26 no-show,
S17 delete → versions of ONE Appointment keyed by the placer/filler appointment ids. The appointment
rules of fhir_server/workflows/appointments apply to these writes as to REST ones."""

from __future__ import annotations

from typing import Any

import psycopg

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


def siu(app: str, control: str, event: str, *, filler: str = "F-1", placer: str = "P-1", start: str = "20240310093000",
        end: str = "20240310100000", status: str = "Booked", reason: str = "", nte: str = "Fasting required",
        mrn: str = "MRN-S1", sch6: str = "", extra: tuple[str, ...] = ()) -> bytes:
    return msg(
        f"MSH|^~\\&|{app}|LAB|EHR|HOSP|20240301083500||SIU^{event}^SIU_S12|{control}|P|2.5.1",
        f"SCH|{placer}^PMS|{filler}^SCHED||||{sch6}|FOLLOWUP^Follow-up^HL70276|Normal^Routine^HL70277|30|min|"
        f"^^^{start}^{end}||||||||||||||{status}",
        *([f"NTE|1||{nte}"] if nte else []),
        f"PID|1||{mrn}^^^HOSP^MR||Rao^Kiran||19800101|M",
        "RGS|1|A",
        f"AIS|1|A|CARDIO^Cardiology consult^L|{start}|||30|min",
        "AIL|1|A|OPD^R2^^HOSP|C^Clinic^HL70305",
        "AIP|1|A|7788^Menon^Priya^^^Dr^^^HOSP|ATND^Attending^HL70443",
        *extra,
    )


def _history(database_url: str, tenant: str, rid: str) -> list[dict[str, Any]]:
    import orjson

    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT content::text FROM resource_history WHERE tenant_id = %s AND resource_type = 'Appointment' "
            "AND id = %s ORDER BY version_id", (tenant, rid)).fetchall()
    return [orjson.loads(r[0]) for r in rows]


async def test_s12_books_an_appointment_with_exact_fields(listener: Any, database_url: str) -> None:
    """HL7 v2.5.1 §10.4.1 SIU^S12 Notification of new appointment booking; IG SCH[Appointment] (identifiers
    PLAC/FILL, SCH-7 reasonCode via AppointmentReasonCodes, SCH-8 appointmentType, SCH-9 minutesDuration,
    SCH-25 status via FillerStatusCodes), AIS-3 serviceType, AIL/AIP participants, NTE comment."""
    app, _, tenant = new_sender(database_url, timezone="Asia/Kolkata")
    async with MLLPClient(listener.port) as c:
        ack = await c.send(siu(app, "S1", "S12"))
    assert ack_code(ack) == "AA", ack
    [appt] = resources(database_url, tenant, "Appointment")
    [patient] = resources(database_url, tenant, "Patient")
    [prac] = resources(database_url, tenant, "Practitioner")
    [loc] = resources(database_url, tenant, "Location")
    system = "urn:hl7-v2:aa:PMS"
    assert appt["identifier"] == [
        {"value": "P-1", "system": system,
         "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "PLAC"}]}},
        {"value": "F-1", "system": "urn:hl7-v2:aa:SCHED",
         "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "FILL"}]}},
    ]
    assert appt["status"] == "booked"
    assert appt["start"] == "2024-03-10T09:30:00+05:30" and appt["end"] == "2024-03-10T10:00:00+05:30"
    assert appt["minutesDuration"] == 30
    assert appt["reasonCode"] == [{"coding": [  # the IG's SNOMED CT code first, the sender's table 0276 code kept
        {"system": "http://snomed.info/sct", "code": "185389009", "display": "Follow-up visit (procedure)"},
        {"system": "http://terminology.hl7.org/CodeSystem/v2-0276", "code": "FOLLOWUP", "display": "Follow-up"}]}]
    assert appt["appointmentType"]["coding"][0] == {
        "system": "http://terminology.hl7.org/CodeSystem/v2-0277", "code": "Normal",
        "display": "Routine schedule request type – default if not valued"}
    assert appt["serviceType"] == [{"coding": [{"code": "CARDIO", "display": "Cardiology consult",
                                                "system": "urn:hl7-v2:coding-system:L"}]}]
    assert appt["comment"] == "Fasting required"
    assert "cancelationReason" not in appt
    assert appt["participant"] == [
        {"actor": {"reference": f"Patient/{patient['id']}"}, "status": "accepted"},
        {"type": [{"coding": [{"code": "ATND", "display": "Attending",
                               "system": "http://terminology.hl7.org/CodeSystem/v2-0443"}]}],
         "status": "accepted", "actor": {"reference": f"Practitioner/{prac['id']}", "display": "Dr Priya Menon"}},
        {"type": [{"coding": [{"code": "C", "display": "Clinic",
                               "system": "http://terminology.hl7.org/CodeSystem/v2-0305"}]}],
         "status": "accepted", "actor": {"reference": f"Location/{loc['id']}", "display": "OPD R2"}},
    ]
    assert loc["identifier"] == [{"value": "HOSP/OPD/R2", "system": "urn:hl7-v2:location"}]
    assert "basedOn" not in appt


async def test_sch26_order_number_links_the_service_request(listener: Any, database_url: str) -> None:
    """IG SIU_S12 / SCH[Appointment] rows 26-27: Appointment.basedOn the ServiceRequest of the placer order number
    (the stored one when known, else a logical reference by identifier)."""
    app, _, tenant = new_sender(database_url)
    oru = msg(
        f"MSH|^~\\&|{app}|LAB|EHR|HOSP|20240301083500||ORU^R01^ORU_R01|B0|P|2.5.1",
        "PID|1||MRN-S1^^^HOSP^MR||Rao^Kiran||19800101|M",
        "OBR|1|ORD-77^PMS|FIL-77^LAB|GLU^Glucose^L|||20240301080000||||||||||||||20240301090000|||F",
        "OBX|1|NM|GLU^Glucose^L||5.5|mmol/L|||||F",
    )
    async with MLLPClient(listener.port) as c:
        raw = siu(app, "B1", "S12").replace(b"|Booked\r", b"|Booked|ORD-77^PMS\r")
        assert ack_code(await c.send(raw)) == "AA"
        [appt] = resources(database_url, tenant, "Appointment")
        assert appt["basedOn"] == [{"identifier": {"value": "ORD-77", "system": "urn:hl7-v2:aa:PMS"}}]
        assert ack_code(await c.send(oru)) == "AA"  # the order becomes known
        raw = siu(app, "B2", "S14").replace(b"|Booked\r", b"|Booked|ORD-77^PMS\r")
        assert ack_code(await c.send(raw)) == "AA"
    [order] = resources(database_url, tenant, "ServiceRequest")
    [appt] = resources(database_url, tenant, "Appointment")
    assert appt["basedOn"] == [{"reference": f"ServiceRequest/{order['id']}"}]


async def test_s13_reschedule_s14_modify_are_new_versions(listener: Any, database_url: str) -> None:
    """HL7 v2.5.1 §10.4.2 S13 Notification of appointment rescheduling, §10.4.3 S14 Notification of appointment
    modification: the same Appointment (keyed by SCH-2) gets versions 2 and 3, never a duplicate."""
    app, _, tenant = new_sender(database_url)
    async with MLLPClient(listener.port) as c:
        assert ack_code(await c.send(siu(app, "R1", "S12"))) == "AA"
        assert ack_code(await c.send(siu(app, "R2", "S13", start="20240312140000", end="20240312144500"))) == "AA"
        [appt] = resources(database_url, tenant, "Appointment")
        assert appt["meta"]["versionId"] == "2"
        assert (appt["start"], appt["end"], appt["status"]) == ("2024-03-12T14:00:00Z", "2024-03-12T14:45:00Z", "booked")
        assert ack_code(await c.send(siu(app, "R3", "S14", start="20240312140000", end="20240312144500",
                                         status="", nte="Bring earlier ECG"))) == "AA"
    [appt] = resources(database_url, tenant, "Appointment")
    assert appt["meta"]["versionId"] == "3" and appt["status"] == "booked" and appt["comment"] == "Bring earlier ECG"
    assert [v["start"] for v in _history(database_url, tenant, appt["id"])] == [
        "2024-03-10T09:30:00Z", "2024-03-12T14:00:00Z", "2024-03-12T14:00:00Z"]
    assert counts(database_url, tenant)["Patient"] == 1


async def test_s15_cancel_with_reason_then_s14_does_not_resurrect(listener: Any, database_url: str) -> None:
    """HL7 v2.5.1 §10.4.4 S15 Notification of appointment cancellation (SCH-6 event reason →
    cancelationReason); a later S14 for the cancelled appointment is acknowledged and not applied."""
    app, _, tenant = new_sender(database_url)
    async with MLLPClient(listener.port) as c:
        assert ack_code(await c.send(siu(app, "C1", "S12"))) == "AA"
        ack = await c.send(siu(app, "C2", "S15", status="Cancelled", sch6="PATREQ^Patient request^L"))
        assert ack_code(ack) == "AA", ack
        [appt] = resources(database_url, tenant, "Appointment")
        assert appt["status"] == "cancelled"
        assert appt["cancelationReason"] == {"coding": [{"code": "PATREQ", "display": "Patient request",
                                                         "system": "urn:hl7-v2:coding-system:L"}]}
        ack = await c.send(siu(app, "C3", "S14", status="Booked", start="20240320090000", end="20240320093000"))
        assert ack_code(ack) == "AA"
        assert "out of order" in ack_segment(ack, "MSA")[3]
    [appt] = resources(database_url, tenant, "Appointment")
    assert appt["status"] == "cancelled" and appt["meta"]["versionId"] == "2"
    assert appt["start"] == "2024-03-10T09:30:00Z"
    assert "out of order" in log_rows(database_url, app)[-1]["error"]
    # a new booking with a new id is a new appointment
    async with MLLPClient(listener.port) as c:
        assert ack_code(await c.send(siu(app, "C4", "S12", filler="F-2", placer="P-2"))) == "AA"
    assert sorted(a["status"] for a in resources(database_url, tenant, "Appointment")) == ["booked", "cancelled"]


async def test_s15_reason_from_evn4(listener: Any, database_url: str) -> None:
    """HL7 v2.5.1 §3.4.1 EVN-4 Event Reason Code: used for cancelationReason when SCH-6 is empty."""
    app, _, tenant = new_sender(database_url)
    raw = siu(app, "E1", "S15", status="Cancelled").replace(b"\rSCH|", b"\rEVN|S15|20240301||DOC^Doctor unavailable^L\rSCH|")
    async with MLLPClient(listener.port) as c:
        assert ack_code(await c.send(raw)) == "AA"
    [appt] = resources(database_url, tenant, "Appointment")
    assert appt["status"] == "cancelled" and appt["cancelationReason"]["coding"][0]["code"] == "DOC"


async def test_s26_noshow_and_s17_delete(listener: Any, database_url: str) -> None:
    """HL7 v2.5.1 §10.4.12 S26 Notification that patient did not show up → noshow; §10.4.6 S17 Notification of
    appointment deletion → entered-in-error (the IG's FillerStatusCodes 'Deleted')."""
    app, _, tenant = new_sender(database_url)
    # the appointment rules (fhir_server/workflows/appointments/transitions.py) let the sender's own
    # role ("integration") mark its appointments entered-in-error
    async with MLLPClient(listener.port) as c:
        assert ack_code(await c.send(siu(app, "N1", "S12"))) == "AA"
        assert ack_code(await c.send(siu(app, "N2", "S26", status="Noshow"))) == "AA"
        [appt] = resources(database_url, tenant, "Appointment")
        assert appt["status"] == "noshow" and "cancelationReason" not in appt
        ack = await c.send(siu(app, "N3", "S17", status="Deleted"))
        assert ack_code(ack) == "AA", ack
    [appt] = resources(database_url, tenant, "Appointment")
    assert appt["status"] == "entered-in-error" and appt["meta"]["versionId"] == "3"


async def test_unknown_patient_refused_writes_nothing(listener: Any, database_url: str) -> None:
    """Issue 6 "unknown patient where creation is refused": AE with ERR (204, PID-3) and nothing written."""
    app, _, tenant = new_sender(database_url, unknown_patient="refuse")
    async with MLLPClient(listener.port) as c:
        ack = await c.send(siu(app, "U1", "S12"))
    assert ack_code(ack) == "AE"
    err = ack_segment(ack, "ERR")
    assert err is not None and err[2].startswith("PID") and err[3].startswith("204")
    assert counts(database_url, tenant) == {}
    assert log_rows(database_url, app)[-1]["status"] == "error"


async def test_start_offset_and_duration_from_resource_segments(listener: Any, database_url: str) -> None:
    """HL7 v2.5.1 §10.6.4 AIS-4..-8 (start, duration in units) when neither TQ1 nor SCH-11 give the times;
    IG AIS[Appointment]: end = start + AIS-7; SCH-25 filler status → Appointment.status."""
    app, _, tenant = new_sender(database_url)
    raw = msg(
        f"MSH|^~\\&|{app}|LAB|EHR|HOSP|20240301083500||SIU^S12^SIU_S12|O1|P|2.5.1",
        "SCH||F-9^SCHED|||||CHECKUP^Checkup^HL70276||||||||||||||||||Waitlist",
        "PID|1||MRN-O1^^^HOSP^MR||Das^Anil||19700101|M",
        "RGS|1|A",
        "AIS|1|A|XRAY^Chest X-ray^L|20240401101500+0530|||1|h",
    )
    async with MLLPClient(listener.port) as c:
        assert ack_code(await c.send(raw)) == "AA"
    [appt] = resources(database_url, tenant, "Appointment")
    assert (appt["start"], appt["end"], appt["minutesDuration"]) == ("2024-04-01T10:15:00+05:30", "2024-04-01T11:15:00+05:30", 60)
    assert appt["status"] == "waitlist"  # SCH-25 through the IG's FillerStatusCodes map


async def test_microsoft_sample_siu_s12(listener: Any, database_url: str) -> None:
    """A real SIU^S12 (v2.8, microsoft-fhir-converter/SIU-S12-01.hl7 of ../shared/data/hl7v2): TQ1 times,
    AIS/AIG/AIL/AIP participants, SCH-25 Booked."""
    app, facility, tenant = new_sender(database_url)
    raw = with_sender(sample("microsoft-fhir-converter/SIU-S12-01.hl7"), app, facility)
    async with MLLPClient(listener.port) as c:
        ack = await c.send(raw)
    assert ack_code(ack) == "AA", ack
    [appt] = resources(database_url, tenant, "Appointment")
    assert appt["status"] == "booked"
    assert (appt["start"], appt["end"]) == ("2021-09-24T09:30:00+02:15", "2021-09-24T10:20:00+02:15")
    assert appt["minutesDuration"] == 50
    assert appt["reasonCode"][0]["coding"][0]["code"] == "373110003"  # EMERGENCY
    assert appt["comment"] == "Appointment booked for emergency procedure"
    assert appt["serviceType"][0]["coding"][0]["code"] == "76164006"
    kinds = [p["actor"].get("reference", "").split("/")[0] or p["actor"].get("display") for p in appt["participant"]]
    assert kinds == ["Patient", "Practitioner", "Location", "EVIS X12 Video Colonoscope"]
    assert all(p["status"] == "accepted" for p in appt["participant"])
