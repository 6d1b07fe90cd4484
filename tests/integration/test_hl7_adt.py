"""ADT events over real MLLP: Patient and Encounter (class, location/bed, admit/discharge times,
attending), A08 update, A11/A13 cancels, A40 merge, the unknown-patient refuse policy, and the
``serve --mllp-port`` listener with the results read back over FHIR REST."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import ServerProcess, free_port, issue_token, server_env
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


def adt(app: str, control: str, event: str, *, mrn: str = "MRN-7", visit: str = "V-100", bed: str = "12",
        pv1_44: str = "20240301083000", pv1_45: str = "", family: str = "Iyer", version: str = "2.5.1") -> bytes:
    return msg(
        f"MSH|^~\\&|{app}|LAB|EHR|HOSP|20240301083500||ADT^{event}^ADT_A01|{control}|P|{version}",
        f"EVN|{event}|20240301083500",
        f"PID|1||{mrn}^^^HOSP^MR||{family}^Meera^^^Mrs||19750102|F|||12 MG Road^^Pune^MH^411001^IND^H||^PRN^PH^^91^20^5551234",
        f"PV1|1|I|WARD3^301^{bed}^HOSP||||4455^Nair^Arun^^^Dr^^^HOSP||MED||||||||||{visit}^^^HOSP^VN|||||||||||||||||||||||||"
        f"{pv1_44}|{pv1_45}",
    )


async def test_a01_admit_creates_patient_and_encounter(listener: Any, database_url: str) -> None:
    """HL7 v2.5.1 Ch. 3 (Patient Administration) §3.3.1 ADT^A01 Admit/Visit Notification: PID and PV1 (location/bed,
    attending, visit number, admit time) become Patient, Encounter, Location and Practitioner."""
    app, _, tenant = new_sender(database_url, timezone="Asia/Kolkata")
    async with MLLPClient(listener.port) as c:
        ack = await c.send(adt(app, "A1", "A01"))
    assert ack_code(ack) == "AA", ack
    [patient] = resources(database_url, tenant, "Patient")
    [enc] = resources(database_url, tenant, "Encounter")
    [loc] = resources(database_url, tenant, "Location")
    [prac] = resources(database_url, tenant, "Practitioner")
    assert patient["name"] == [{"family": "Iyer", "given": ["Meera"], "prefix": ["Mrs"]}]
    assert patient["address"] == [{"line": ["12 MG Road"], "city": "Pune", "state": "MH", "postalCode": "411001",
                                   "country": "IND", "use": "home"}]
    assert patient["telecom"] == [{"value": "+91 (20) 5551234", "use": "home", "system": "phone"}]
    assert enc["status"] == "in-progress"
    assert enc["class"] == {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP",
                            "display": "inpatient encounter"}
    assert enc["period"] == {"start": "2024-03-01T08:30:00+05:30"}  # the sender's zone: no offset in the message
    assert enc["subject"] == {"reference": f"Patient/{patient['id']}"}
    assert enc["location"] == [{"location": {"reference": f"Location/{loc['id']}", "display": "WARD3 301 12"}, "status": "active"}]
    assert loc["identifier"] == [{"value": "HOSP/WARD3/301/12", "system": "urn:hl7-v2:location"}]
    assert loc["physicalType"]["coding"][0]["code"] == "bd"
    assert enc["participant"][0]["individual"] == {"reference": f"Practitioner/{prac['id']}", "display": "Dr Arun Nair"}
    assert enc["identifier"][0]["value"] == "V-100"


async def test_a02_transfer_a03_discharge_a13_cancel_discharge(listener: Any, database_url: str) -> None:
    """HL7 v2.5.1 Ch. 3 §3.3.2 A02 Transfer a Patient, §3.3.3 A03 Discharge/End Visit (PV1-45 discharge time), §3.3.13
    A13 Cancel Discharge/End Visit."""
    app, _, tenant = new_sender(database_url)
    async with MLLPClient(listener.port) as c:
        assert ack_code(await c.send(adt(app, "T1", "A01"))) == "AA"
        assert ack_code(await c.send(adt(app, "T2", "A02", bed="14"))) == "AA"
        [enc] = resources(database_url, tenant, "Encounter")
        assert [(loc["location"]["display"], loc["status"]) for loc in enc["location"]] == [
            ("WARD3 301 12", "completed"), ("WARD3 301 14", "active")]
        assert ack_code(await c.send(adt(app, "T3", "A03", bed="14", pv1_45="20240305120000"))) == "AA"
        [enc] = resources(database_url, tenant, "Encounter")
        assert enc["status"] == "finished" and enc["period"]["end"] == "2024-03-05T12:00:00Z"
        assert ack_code(await c.send(adt(app, "T4", "A13", bed="14"))) == "AA"
    [enc] = resources(database_url, tenant, "Encounter")
    assert enc["status"] == "in-progress" and "end" not in enc["period"] and enc["meta"]["versionId"] == "4"
    assert counts(database_url, tenant)["Patient"] == 4  # one Patient, four versions
    assert len(resources(database_url, tenant, "Location")) == 2


async def test_a08_updates_demographics_and_a11_cancels_the_visit(listener: Any, database_url: str) -> None:
    """HL7 v2.5.1 Ch. 3 §3.3.4 A04 Register a Patient, §3.3.8 A08 Update Patient Information, §3.3.11 A11 Cancel
    Admit/Visit Notification."""
    app, _, tenant = new_sender(database_url)
    async with MLLPClient(listener.port) as c:
        assert ack_code(await c.send(adt(app, "U1", "A04"))) == "AA"
        assert ack_code(await c.send(adt(app, "U2", "A08", family="Iyer-Menon"))) == "AA"
        [enc] = resources(database_url, tenant, "Encounter")
        assert enc["status"] == "planned"  # A08 keeps the stored status
        assert ack_code(await c.send(adt(app, "U3", "A11", family="Iyer-Menon"))) == "AA"
    [patient] = resources(database_url, tenant, "Patient")
    assert patient["name"][0]["family"] == "Iyer-Menon"
    [enc] = resources(database_url, tenant, "Encounter")
    assert enc["status"] == "cancelled"


async def test_a40_merge_links_the_prior_patient_replaced_by_the_survivor(listener: Any, database_url: str) -> None:
    """HL7 v2.5.1 Ch. 3 §3.3.40 ADT^A40 Merge Patient - Patient Identifier List (MRG-1 prior identifier); FHIR R4
    patient.html, Patient.link (replaced-by / replaces)."""
    app, _, tenant = new_sender(database_url)
    async with MLLPClient(listener.port) as c:
        assert ack_code(await c.send(adt(app, "M1", "A01", mrn="OLD-1", visit="V-1"))) == "AA"
        assert ack_code(await c.send(adt(app, "M2", "A04", mrn="NEW-1", visit="V-2"))) == "AA"
        ack = await c.send(msg(
            f"MSH|^~\\&|{app}|LAB|EHR|HOSP|20240302090000||ADT^A40^ADT_A39|M3|P|2.5.1",
            "EVN|A40|20240302090000",
            "PID|1||NEW-1^^^HOSP^MR||Iyer^Meera||19750102|F",
            "MRG|OLD-1^^^HOSP^MR",
        ))
    assert ack_code(ack) == "AA", ack
    patients = {p["identifier"][0]["value"]: p for p in resources(database_url, tenant, "Patient")}
    old, new = patients["OLD-1"], patients["NEW-1"]
    assert old["active"] is False
    assert old["link"] == [{"other": {"reference": f"Patient/{new['id']}"}, "type": "replaced-by"}]
    assert new["active"] is True
    assert new["link"] == [{"other": {"reference": f"Patient/{old['id']}"}, "type": "replaces"}]
    assert {"value": "OLD-1", "use": "old"}.items() <= next(i for i in new["identifier"] if i["value"] == "OLD-1").items()
    # encounters stay where they were (documented): the old visit still points at the old record
    encounters = {e["identifier"][0]["value"]: e for e in resources(database_url, tenant, "Encounter")}
    assert encounters["V-1"]["subject"]["reference"] == f"Patient/{old['id']}"


async def test_a40_with_an_unknown_prior_patient_is_ae_and_writes_nothing(listener: Any, database_url: str) -> None:
    """HL7 v2.5.1 Ch. 3 §3.3.40 A40 Merge Patient; Ch. 2 (Control) MSA-1 AE with ERR-2 error location and ERR-3 code 204
    Unknown key identifier (HL7 table 0357)."""
    app, _, tenant = new_sender(database_url)
    async with MLLPClient(listener.port) as c:
        ack = await c.send(msg(
            f"MSH|^~\\&|{app}|LAB|EHR|HOSP|20240302090000||ADT^A40^ADT_A39|M9|P|2.5.1",
            "PID|1||NEW-9^^^HOSP^MR||Iyer^Meera",
            "MRG|NOPE-9^^^HOSP^MR",
        ))
    assert ack_code(ack) == "AE"
    err = ack_segment(ack, "ERR")
    assert err is not None and err[2] == "MRG^3^1" and err[3].startswith("204^")
    assert counts(database_url, tenant) == {}


async def test_unknown_patient_refused_by_policy_is_ae_with_err_and_nothing_written(listener: Any, database_url: str) -> None:
    """HL7 v2.5.1 Ch. 2 (Control) acknowledgment: MSA-1 AE, ERR-2 error location PID-3, ERR-3 code 204 Unknown key
    identifier (HL7 table 0357)."""
    app, _, tenant = new_sender(database_url, unknown_patient="refuse")
    async with MLLPClient(listener.port) as c:
        ack = await c.send(adt(app, "R1", "A01"))
    assert ack_code(ack) == "AE"
    assert ack_segment(ack, "ERR")[2:4] == ["PID^3^3", "204^Unknown key identifier^HL70357"]
    assert counts(database_url, tenant) == {}
    [row] = log_rows(database_url, app)
    assert row["status"] == "error" and row["ack_code"] == "AE" and row["error_location"] == "PID-3"


async def test_v23_ack_uses_err_1(listener: Any, database_url: str) -> None:
    """HL7 v2.3 Ch. 2 (Control) ERR segment: ERR-1 Error Code and Location (split into ERR-2/ERR-3 from v2.5)."""
    app, _, _ = new_sender(database_url, unknown_patient="refuse")
    async with MLLPClient(listener.port) as c:
        ack = await c.send(adt(app, "R23", "A01", version="2.3"))
    assert ack_code(ack) == "AE"
    assert ack_segment(ack, "ERR")[1] == "PID^3^3^204&Unknown key identifier&HL70357"


@pytest.mark.parametrize("name", [
    "hapi-hl7v2/ADT_A01.hl7", "hapi-hl7v2/adt_a03.hl7", "microsoft-fhir-converter/ADT-A01-01.hl7",
    "microsoft-fhir-converter/ADT-A02-01.hl7", "microsoft-fhir-converter/ADT-A03-01.hl7",
    "microsoft-fhir-converter/ADT-A04-01.hl7", "microsoft-fhir-converter/ADT-A08-01.hl7",
    "microsoft-fhir-converter/ADT-A11-01.hl7", "microsoft-fhir-converter/ADT-A13-01.hl7",
])
async def test_sample_adt_messages_are_accepted(listener: Any, database_url: str, name: str) -> None:
    """HL7 v2 Ch. 3 (Patient Administration) ADT events as real senders write them (HAPI and Microsoft FHIR-Converter
    samples): answered AA (Ch. 2 acknowledgment)."""
    app, facility, tenant = new_sender(database_url)
    async with MLLPClient(listener.port) as c:
        ack = await c.send(with_sender(sample(name), app, facility))
    assert ack_code(ack) == "AA", ack
    assert len(resources(database_url, tenant, "Patient")) == 1


def test_serve_with_mllp_port_writes_what_fhir_rest_reads(database_url: str) -> None:
    """``fhir-server serve --mllp-port``: the listener beside the workers; read back over FHIR REST.
    HL7 v2 MLLP Release 1 in, FHIR R4 http.html#search out."""
    import asyncio

    app, _, tenant = new_sender(database_url)
    port = free_port()
    srv = ServerProcess(server_env(DATABASE_URL=database_url), ["--workers", "2", "--mllp-port", str(port)])
    srv.start()
    try:
        async def send() -> str:
            for _ in range(100):  # the listener process may still be starting
                try:
                    async with MLLPClient(port) as c:
                        return await c.send(adt(app, "S1", "A01"))
                except OSError:
                    await asyncio.sleep(0.2)
            raise AssertionError("the MLLP listener did not start")

        assert ack_code(asyncio.run(send())) == "AA"
        token = issue_token(database_url, tenant=tenant, role="admin")
        r = httpx.get(f"{srv.base}/{tenant}/Encounter", params={"identifier": "V-100"},
                      headers={"Authorization": f"Bearer {token}"}, timeout=30)
        if r.status_code == 404:  # tenant in the URL not routed: the token's tenant decides
            r = httpx.get(f"{srv.base}/Encounter", params={"identifier": "V-100"},
                          headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert r.status_code == 200, r.text
        [entry] = r.json()["entry"]
        assert entry["resource"]["status"] == "in-progress"
        assert entry["resource"]["class"]["code"] == "IMP"
    finally:
        srv.stop()
