"""ORU^R01 lab results over real MLLP sockets into the real PostgreSQL: the exact resources written,
versions not duplicates (preliminary → final → corrected), out-of-order arrival, duplicates."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.test_hl7_support import (
    MLLPClient,
    ack_code,
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


def oru(app: str, control: str, status: str, value: str, *, when: str = "20240305101500", flag: str = "H",
        obx_status: str | None = None, mrn: str = "MRN-100") -> bytes:
    """A lab ORU^R01 with one order (placer P-1, filler F-1) and two results."""
    s = obx_status or status
    return msg(
        f"MSH|^~\\&|{app}|LAB|EHR|HOSP|{when}+0100||ORU^R01^ORU_R01|{control}|P|2.5.1|||AL|NE||UNICODE UTF-8",
        f"PID|1||{mrn}^^^HOSP&1.2.3.4&ISO^MR||Sharma^Asha^K||19800412|F",
        "ORC|RE|P-1^EHR|F-1^LAB",
        f"OBR|1|P-1^EHR|F-1^LAB|24331-1^Lipid panel^LN|||20240305080000+0100|||||||||1234^Rao^Vikram^^^Dr|||||"
        f"{when}+0100|||{status}",
        f"OBX|1|NM|2093-3^Cholesterol^LN||{value}|mg/dL^mg/dL^UCUM|<200|{flag}|||{s}|||20240305080000+0100",
        f"OBX|2|ST|8251-1^Comment^LN||fasting\\F\\12h\\S\\ok||||||{s}",
        "NTE|1||Sample slightly \\T\\ haemolysed",
        "SPM|1|SP-9&LAB&2.16.840.1.9&ISO||SER^Serum^HL70487|||||||||||||20240305075500+0100",
    )


async def test_oru_r01_writes_report_observations_specimen_and_order(listener: Any, database_url: str) -> None:
    """HL7 v2.5.1 Ch. 7 (Observation Reporting) §7.3.1 ORU^R01 Unsolicited Transmission of an Observation Message: PID,
    ORC/OBR, OBX (value, units, range, OBX-8 flags), NTE and SPM become Patient, ServiceRequest, DiagnosticReport,
    Observation, Specimen and Practitioner; Ch. 2 (Control) escape sequences in text fields."""
    app, _, tenant = new_sender(database_url)
    async with MLLPClient(listener.port) as c:
        ack = await c.send(oru(app, "C1", "F", "250"))
    assert ack_code(ack) == "AA", ack
    assert "MSA|AA|C1" in ack
    [report] = resources(database_url, tenant, "DiagnosticReport")
    obs = {o["code"]["coding"][0]["code"]: o for o in resources(database_url, tenant, "Observation")}
    [patient] = resources(database_url, tenant, "Patient")
    [sr] = resources(database_url, tenant, "ServiceRequest")
    [spec] = resources(database_url, tenant, "Specimen")
    [prac] = resources(database_url, tenant, "Practitioner")
    assert patient["identifier"][0] == {
        "value": "MRN-100", "system": "urn:oid:1.2.3.4",
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR",
                             "display": "Medical record number"}]},
    }
    assert patient["name"] == [{"family": "Sharma", "given": ["Asha", "K"]}]
    assert patient["gender"] == "female" and patient["birthDate"] == "1980-04-12"
    assert report["status"] == "final"
    assert report["code"] == {"coding": [{"code": "24331-1", "display": "Lipid panel", "system": "http://loinc.org"}]}
    assert report["issued"] == "2024-03-05T10:15:00+01:00"
    assert report["effectiveDateTime"] == "2024-03-05T08:00:00+01:00"
    assert report["subject"] == {"reference": f"Patient/{patient['id']}"}
    assert report["basedOn"] == [{"reference": f"ServiceRequest/{sr['id']}"}]
    assert report["specimen"] == [{"reference": f"Specimen/{spec['id']}"}]
    assert sorted(r["reference"] for r in report["result"]) == sorted(f"Observation/{o['id']}" for o in obs.values())
    assert [i["type"]["coding"][0]["code"] for i in report["identifier"]] == ["PLAC", "FILL"]
    chol = obs["2093-3"]
    assert chol["status"] == "final"
    assert chol["valueQuantity"] == {"unit": "mg/dL", "code": "mg/dL", "system": "http://unitsofmeasure.org", "value": 250}
    assert chol["referenceRange"] == [{"text": "<200", "high": {"value": 200, "unit": "mg/dL", "code": "mg/dL",
                                                                  "system": "http://unitsofmeasure.org"}}]
    assert chol["interpretation"] == [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                                                   "code": "H", "display": "High"}]}]
    assert chol["specimen"] == {"reference": f"Specimen/{spec['id']}"}
    comment = obs["8251-1"]
    assert comment["valueString"] == "fasting|12h^ok"  # \F\ and \S\ unescaped
    assert comment["note"] == [{"text": "Sample slightly & haemolysed"}]  # \T\
    assert sr["identifier"][0]["value"] == "P-1" and sr["status"] == "active" and sr["intent"] == "order"
    assert sr["requester"] == {"reference": f"Practitioner/{prac['id']}", "display": "Dr Vikram Rao"}
    assert spec["identifier"] == [{"value": "SP-9", "system": "urn:oid:2.16.840.1.9"}]
    assert spec["type"]["coding"][0] == {"code": "SER", "display": "Serum", "system": "http://terminology.hl7.org/CodeSystem/v2-0487"}
    assert spec["collection"] == {"collectedDateTime": "2024-03-05T07:55:00+01:00"}
    [row] = log_rows(database_url, app)
    assert row["status"] == "processed" and row["ack_code"] == "AA" and row["attempts"] == 1
    assert len(row["resources"]) == 7  # Patient, Practitioner, ServiceRequest, Specimen, 2 Observations, DiagnosticReport


async def test_critical_flags_map_to_critical_interpretation(listener: Any, database_url: str) -> None:
    """HL7 v2.5.1 Ch. 7 OBX-8 Abnormal Flags (HL7 table 0078, HH) -> FHIR R4 Observation.interpretation
    (v3-ObservationInterpretation HH Critical high)."""
    app, _, tenant = new_sender(database_url)
    async with MLLPClient(listener.port) as c:
        assert ack_code(await c.send(oru(app, "HH1", "F", "999", flag="HH"))) == "AA"
    chol = next(o for o in resources(database_url, tenant, "Observation") if o["code"]["coding"][0]["code"] == "2093-3")
    assert chol["interpretation"][0]["coding"][0]["code"] == "HH"
    assert chol["interpretation"][0]["coding"][0]["display"] == "Critical high"


async def test_preliminary_final_corrected_are_versions_of_the_same_resources(listener: Any, database_url: str) -> None:
    """HL7 v2.5.1 Ch. 7 OBR-25 Result Status / OBX-11 Observation Result Status (HL7 tables 0123 / 0085: P, F, C); FHIR
    R4 http.html#update: each status is a new version of the same resources."""
    app, _, tenant = new_sender(database_url)
    async with MLLPClient(listener.port) as c:
        assert ack_code(await c.send(oru(app, "V1", "P", "240", when="20240305090000"))) == "AA"
        assert ack_code(await c.send(oru(app, "V2", "F", "250", when="20240305100000"))) == "AA"
        assert ack_code(await c.send(oru(app, "V3", "C", "205", when="20240305110000", flag="N"))) == "AA"
    [report] = resources(database_url, tenant, "DiagnosticReport")
    assert report["status"] == "corrected" and report["meta"]["versionId"] == "3"
    observations = resources(database_url, tenant, "Observation")
    assert len(observations) == 2
    chol = next(o for o in observations if o["code"]["coding"][0]["code"] == "2093-3")
    assert chol["meta"]["versionId"] == "3" and chol["status"] == "corrected" and chol["valueQuantity"]["value"] == 205
    history = counts(database_url, tenant)
    assert history["DiagnosticReport"] == 3 and history["Observation"] == 6
    assert history["Patient"] == 1 and history["ServiceRequest"] == 1 and history["Specimen"] == 3


async def test_preliminary_arriving_after_final_does_not_overwrite_it(listener: Any, database_url: str) -> None:
    """HL7 v2.5.1 Ch. 7 OBR-25 / OBX-11 result status (HL7 tables 0123 / 0085): a preliminary arriving after the final
    does not replace it."""
    app, _, tenant = new_sender(database_url)
    async with MLLPClient(listener.port) as c:
        assert ack_code(await c.send(oru(app, "O1", "F", "250", when="20240305100000"))) == "AA"
        late = await c.send(oru(app, "O2", "P", "240", when="20240305090000"))
    assert ack_code(late) == "AA"
    assert "out of order" in late
    [report] = resources(database_url, tenant, "DiagnosticReport")
    assert report["status"] == "final" and report["meta"]["versionId"] == "1"
    chol = next(o for o in resources(database_url, tenant, "Observation") if o["code"]["coding"][0]["code"] == "2093-3")
    assert chol["valueQuantity"]["value"] == 250 and chol["meta"]["versionId"] == "1"
    rows = log_rows(database_url, app)
    assert rows[1]["status"] == "processed" and rows[1]["resources"] == [] and "out of order" in rows[1]["error"]


async def test_duplicate_control_id_returns_the_original_ack_and_writes_nothing(listener: Any, database_url: str) -> None:
    """HL7 v2.5.1 Ch. 2 (Control) MSH-10 Message Control ID: a repeat of an acknowledged message gets the original ACK
    and writes nothing."""
    app, _, tenant = new_sender(database_url)
    message = oru(app, "DUP1", "F", "250")
    async with MLLPClient(listener.port) as c:
        first = await c.send(message)
        before = counts(database_url, tenant)
        second = await c.send(message)
        # even with a different body: same sender + facility + MSH-10 is the same message
        third = await c.send(oru(app, "DUP1", "C", "1"))
    assert ack_code(first) == "AA"
    assert second == first and third == first
    assert counts(database_url, tenant) == before
    assert len(log_rows(database_url, app)) == 1


async def test_concurrent_duplicates_process_once(listener: Any, database_url: str) -> None:
    """HL7 v2.5.1 Ch. 2 (Control) MSH-10 Message Control ID: concurrent copies of one message are processed once, all
    get the same ACK."""
    import asyncio

    app, _, tenant = new_sender(database_url)
    message = oru(app, "RACE1", "F", "250")

    async def one() -> str:
        async with MLLPClient(listener.port) as c:
            return await c.send(message)

    acks = await asyncio.gather(*(one() for _ in range(4)))
    assert len(set(acks)) == 1 and ack_code(acks[0]) == "AA"
    assert counts(database_url, tenant)["DiagnosticReport"] == 1


@pytest.mark.parametrize(
    "name",
    ["microsoft-fhir-converter/ORU-R01-01.hl7", "microsoft-fhir-converter/LAB-ORU-1.hl7",
     "microsoft-fhir-converter/LAB-ORU-2.hl7", "cdc-reportstream/valid_hl7.hl7", "cdc-reportstream/etor_ORU_20240220.hl7"],
)
async def test_sample_oru_messages_are_accepted(listener: Any, database_url: str, name: str) -> None:
    """HL7 v2 Ch. 7 (Observation Reporting) ORU^R01 as real senders write them (Microsoft FHIR-Converter, CDC
    ReportStream samples): one DiagnosticReport per OBR, one Observation per OBX under an OBR."""
    app, facility, tenant = new_sender(database_url)
    raw = with_sender(sample(name), app, facility)  # the sample as sent by a sender of this test
    from hl7_bridge.decode import decode, parse

    m = parse(decode(raw)[0])
    async with MLLPClient(listener.port) as c:
        ack = await c.send(raw)
    assert ack_code(ack) == "AA", ack
    reports = resources(database_url, tenant, "DiagnosticReport")
    observations = resources(database_url, tenant, "Observation")
    assert reports and observations
    assert len(reports) == len(m.all("OBR"))
    first_obr = m.first("OBR").index
    assert len(observations) == len([o for o in m.all("OBX") if o.index > first_obr])  # OBX before any OBR: no order
    for report in reports:
        refs = {r["reference"] for r in report.get("result", [])}
        assert refs <= {f"Observation/{o['id']}" for o in observations}
