"""Orders from an external system over real MLLP sockets into the real PostgreSQL: ORM^O01 and OML^O21 →
ServiceRequest (new, cancel, hold/release, status change, change), keyed by the placer order number."""

from __future__ import annotations

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

V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
SNOMED = "http://snomed.info/sct"


def orm(app: str, control: str, order_control: str, *, order_status: str = "", when: str = "20240312090000") -> bytes:
    """An ORM^O01 for a CT head (placer PO-9 from the EHR) with timing, priority, a diagnosis and a note."""
    return msg(
        f"MSH|^~\\&|{app}|LAB|RIS|HOSP|{when}||ORM^O01^ORM_O01|{control}|P|2.5.1",
        "PID|1||MRN-400^^^HOSP&1.2.3.4&ISO^MR||Rao^Kiran||19900202|M",
        "PV1|1|E|ER^^^HOSP||||||||||||||||V-400^^^HOSP&1.2.3.4&ISO^VN",
        f"ORC|{order_control}|PO-9^EHR||PG-9^EHR|{order_status}||^^^20240312100000^^S||{when}|||4444^Menon^Anil^^^Dr",
        "OBR|1|PO-9^EHR||70450^CT head without contrast^C4|||||||||Headache since 2 days|||||||||||CT|||||||"
        "R51^Headache^I10",
        "NTE|1||Patient is claustrophobic",
        "DG1|1||S06.9^Intracranial injury^I10",
    )


async def test_orm_new_order_then_cancel(listener: Any, database_url: str) -> None:
    """HL7 v2.5.1 Ch. 4 §4.4.1 ORM^O01 with ORC-1 NW then CA (table 0119; IG concept map OrderControlCode
    [ServiceRequest.status]) → FHIR R4 ServiceRequest active (code OBR-4, category from OBR-24, priority TQ.6,
    occurrence TQ.4, requisition ORC-4, authoredOn ORC-9, requester ORC-12, reasonCode OBR-31 + DG1-3, note OBR-13 +
    NTE, encounter PV1-19), then version 2 revoked."""
    app, _, tenant = new_sender(database_url)
    async with MLLPClient(listener.port) as c:
        ack = await c.send(orm(app, "O1", "NW"))
        assert ack_code(ack) == "AA", ack
        [sr] = resources(database_url, tenant, "ServiceRequest")
        [patient] = resources(database_url, tenant, "Patient")
        [prac] = resources(database_url, tenant, "Practitioner")
        assert {k: v for k, v in sr.items() if k not in ("id", "meta")} == {
            "resourceType": "ServiceRequest",
            "code": {"coding": [{"code": "70450", "display": "CT head without contrast", "system": "http://www.ama-assn.org/go/cpt"}]},
            "intent": "order",
            "status": "active",
            "reasonCode": [
                {"coding": [{"code": "R51", "display": "Headache", "system": "http://hl7.org/fhir/sid/icd-10"}]},
                {"coding": [{"code": "S06.9", "display": "Intracranial injury", "system": "http://hl7.org/fhir/sid/icd-10"}]},
            ],
            "note": [{"text": "Headache since 2 days"}, {"text": "Patient is claustrophobic"}],
            "requisition": {"value": "PG-9", "system": "urn:hl7-v2:aa:EHR"},
            "authoredOn": "2024-03-12T09:00:00Z",
            "occurrenceDateTime": "2024-03-12T10:00:00Z",
            "priority": "stat",
            "category": [{"coding": [{"system": SNOMED, "code": "363679005", "display": "Imaging"}]}],
            "identifier": [{"type": {"coding": [{"system": V2_0203, "code": "PLAC"}]}, "value": "PO-9",
                            "system": "urn:hl7-v2:aa:EHR"}],
            "subject": {"reference": f"Patient/{patient['id']}"},
            "encounter": {"identifier": {"value": "V-400", "system": "urn:oid:1.2.3.4",
                                         "type": {"coding": [{"system": V2_0203, "code": "VN", "display": "Visit number"}]}}},
            "requester": {"reference": f"Practitioner/{prac['id']}", "display": "Dr Anil Menon"},
        }
        ack = await c.send(orm(app, "O2", "CA", when="20240312093000"))
    assert ack_code(ack) == "AA", ack
    [cancelled] = resources(database_url, tenant, "ServiceRequest")
    assert cancelled["id"] == sr["id"] and cancelled["meta"]["versionId"] == "2"
    assert cancelled["status"] == "revoked" and cancelled["authoredOn"] == "2024-03-12T09:30:00Z"
    assert cancelled["code"] == sr["code"] and cancelled["identifier"] == sr["identifier"]


async def test_hold_release_and_status_change(listener: Any, database_url: str) -> None:
    """HL7 v2.5.1 Ch. 4 ORC-1 HD (hold), RL (release), SC with ORC-5 order status CM (table 0038; IG concept map
    OrderStatus) and XO (change: status kept) → FHIR R4 ServiceRequest.status on-hold, active, completed, completed."""
    app, _, tenant = new_sender(database_url)
    async with MLLPClient(listener.port) as c:
        assert ack_code(await c.send(orm(app, "H0", "NW"))) == "AA"
        statuses = []
        for control, code, status in (("H1", "HD", ""), ("H2", "RL", ""), ("H3", "SC", "CM"), ("H4", "XO", "")):
            ack = await c.send(orm(app, control, code, order_status=status))
            assert ack_code(ack) == "AA", ack
            statuses.append(resources(database_url, tenant, "ServiceRequest")[0]["status"])
    assert statuses == ["on-hold", "active", "completed", "completed"]
    assert counts(database_url, tenant)["ServiceRequest"] == 5


async def test_cancel_of_unknown_order_is_ae_naming_orc2(listener: Any, database_url: str) -> None:
    """HL7 v2.5.1 Ch. 4 ORC-1 CA for an order the receiver does not know → AE with ERR-2 ORC^4^2 and table 0357 code
    204 (unknown key identifier); nothing written (not even the Patient)."""
    app, _, tenant = new_sender(database_url)
    async with MLLPClient(listener.port) as c:
        ack = await c.send(orm(app, "U1", "CA"))
    assert ack_code(ack) == "AE"
    err = ack_segment(ack, "ERR")
    assert err is not None and err[2] == "ORC^4^2" and err[3].startswith("204^")
    assert "PO-9" in err[8]
    assert counts(database_url, tenant) == {}
    [row] = log_rows(database_url, app)
    assert row["status"] == "error" and row["error_location"] == "ORC-2" and row["error_code"] == "204"


async def test_unknown_order_control_code_is_ae(listener: Any, database_url: str) -> None:
    """HL7 v2.5.1 Ch. 4 ORC-1 (table 0119) a code not applicable to inbound orders (RE) → AE 103 naming ORC-1."""
    app, _, tenant = new_sender(database_url)
    async with MLLPClient(listener.port) as c:
        ack = await c.send(orm(app, "X1", "RE"))
    assert ack_code(ack) == "AE"
    err = ack_segment(ack, "ERR")
    assert err is not None and err[2] == "ORC^4^1" and err[3].startswith("103^")
    assert counts(database_url, tenant) == {}


def oml(app: str, control: str) -> bytes:
    """An OML^O21 lab order with TQ1 timing/priority and two specimens."""
    return msg(
        f"MSH|^~\\&|{app}|LAB|LIS|HOSP|20240313080000+0530||OML^O21^OML_O21|{control}|P|2.5.1",
        "PID|1||MRN-500^^^HOSP&1.2.3.4&ISO^MR||Iyer^Devi||19850303|F",
        "ORC|NW|LO-5^EHR|||||||20240313080000+0530|||5555^Pillai^Rekha^^^Dr",
        "TQ1|1||||||20240313083000+0530|20240313090000+0530|A",
        "OBR|1|LO-5^EHR||24331-1^Lipid panel^LN",
        "SPM|1|SP-51&EHR^SP-51F&LAB||SER^Serum^HL70487|||||||||||||20240313081500+0530",
        "SPM|2|SP-52&EHR||BLD^Whole blood^HL70487",
    )


async def test_oml_o21_with_specimens(listener: Any, database_url: str) -> None:
    """HL7 v2.5.1 Ch. 4 §4.4.6 OML^O21 (ORC, TQ1 start/end/priority, OBR, SPM) → FHIR R4 ServiceRequest (category
    laboratory, occurrencePeriod, priority asap, specimen) and Specimen per SPM (SPM-2 filler id, else placer id)."""
    app, _, tenant = new_sender(database_url)
    async with MLLPClient(listener.port) as c:
        ack = await c.send(oml(app, "L1"))
    assert ack_code(ack) == "AA", ack
    [sr] = resources(database_url, tenant, "ServiceRequest")
    specimens = {s["identifier"][0]["value"]: s for s in resources(database_url, tenant, "Specimen")}
    assert sorted(specimens) == ["SP-51F", "SP-52"]
    assert sr["category"] == [{"coding": [{"system": SNOMED, "code": "108252007", "display": "Laboratory procedure"}]}]
    assert sr["occurrencePeriod"] == {"start": "2024-03-13T08:30:00+05:30", "end": "2024-03-13T09:00:00+05:30"}
    assert sr["priority"] == "asap" and sr["status"] == "active"
    assert sorted(r["reference"] for r in sr["specimen"]) == sorted(f"Specimen/{s['id']}" for s in specimens.values())
    serum = specimens["SP-51F"]
    assert serum["request"] == [{"reference": f"ServiceRequest/{sr['id']}"}]
    assert serum["type"]["coding"][0]["code"] == "SER"
    assert serum["collection"] == {"collectedDateTime": "2024-03-13T08:15:00+05:30"}


async def test_orm_then_lab_oru_results_refer_to_the_same_order(listener: Any, database_url: str) -> None:
    """HL7 v2.5.1 Ch. 4 OML^O21 then Ch. 7 ORU^R01 with the same placer order number (ORC-2) → one FHIR R4
    ServiceRequest, the DiagnosticReport's basedOn."""
    app, _, tenant = new_sender(database_url)
    oru = msg(
        f"MSH|^~\\&|{app}|LAB|EHR|HOSP|20240313120000+0530||ORU^R01^ORU_R01|R1|P|2.5.1",
        "PID|1||MRN-500^^^HOSP&1.2.3.4&ISO^MR||Iyer^Devi||19850303|F",
        "ORC|RE|LO-5^EHR|LF-5^LAB",
        "OBR|1|LO-5^EHR|LF-5^LAB|24331-1^Lipid panel^LN||||||||||||||||||20240313120000+0530|||F",
        "OBX|1|NM|2093-3^Cholesterol^LN||180|mg/dL^mg/dL^UCUM|<200|N|||F",
    )
    async with MLLPClient(listener.port) as c:
        assert ack_code(await c.send(oml(app, "L1"))) == "AA"
        assert ack_code(await c.send(oru)) == "AA"
    [sr] = resources(database_url, tenant, "ServiceRequest")
    [report] = resources(database_url, tenant, "DiagnosticReport")
    assert report["basedOn"] == [{"reference": f"ServiceRequest/{sr['id']}"}]
    assert sr["meta"]["versionId"] == "1"


async def test_hapi_oml_samples_new_then_change(listener: Any, database_url: str) -> None:
    """HAPI HL7v2 samples OML^O21 (example_oml_o21 messages 1 and 5: ORC-1 NW then XO for the same placer order, SPM
    written as EI — fixed by a per-sender override of SPM_Specimen) → FHIR R4 ServiceRequest version 1 active, then
    version 2 still active with five specimens; OBR-16 requester, TQ1-9 A → asap."""
    override = {"SPM_Specimen": [{"field": "SPM-2", "fhir_path": "identifier[+]", "datatype_map": "EI[Identifier]"}]}
    app, facility, tenant = new_sender(database_url, overrides=override)
    async with MLLPClient(listener.port) as c:
        first = await c.send(with_sender(sample("hapi-hl7v2/example_oml_o21_01.hl7"), app, facility))
        assert ack_code(first) == "AA", first
        [sr] = resources(database_url, tenant, "ServiceRequest")
        assert sr["status"] == "active" and len(sr["specimen"]) == 3
        change = await c.send(with_sender(sample("hapi-hl7v2/example_oml_o21_05.hl7"), app, facility))
    assert ack_code(change) == "AA", change
    [sr] = resources(database_url, tenant, "ServiceRequest")
    [prac] = resources(database_url, tenant, "Practitioner")
    assert sr["meta"]["versionId"] == "2" and sr["status"] == "active" and sr["priority"] == "asap"
    assert sr["code"] == {"coding": [{"code": "82951", "display": "Glucose Tolerance Test", "system": "http://www.ama-assn.org/go/cpt"}]}
    assert sr["identifier"] == [{"type": {"coding": [{"system": V2_0203, "code": "PLAC"}]}, "value": "12345678",
                                 "system": "urn:hl7-v2:aa:gastric"}]
    assert sr["requisition"] == {"value": "666", "system": "urn:hl7-v2:aa:gastric"}
    assert sr["requester"] == {"reference": f"Practitioner/{prac['id']}", "display": "DR PHYSICIAN"}
    assert sorted(s["identifier"][0]["value"] for s in resources(database_url, tenant, "Specimen")) == [
        f"12345678{n}" for n in range(1, 6)]
    assert len(sr["specimen"]) == 5


async def test_microsoft_orm_sample_radiology_order(listener: Any, database_url: str) -> None:
    """microsoft/FHIR-Converter ORM-O01-01 sample (v2.6 ORM^O01 NW for a CT head with CTD, DG1, OBX, FT1, CTI, BLG
    segments) → one FHIR R4 ServiceRequest active with code, reasonCode from DG1-3 and requester ORC-12."""
    app, facility, tenant = new_sender(database_url)
    async with MLLPClient(listener.port) as c:
        ack = await c.send(with_sender(sample("microsoft-fhir-converter/ORM-O01-01.hl7"), app, facility))
    assert ack_code(ack) == "AA", ack
    [sr] = resources(database_url, tenant, "ServiceRequest")
    assert sr["status"] == "active" and sr["intent"] == "order"
    assert sr["code"]["coding"][0] == {"code": "24725-4", "display": "CT Head", "system": "http://loinc.org"}
    assert sr["identifier"][0]["value"] == "1101" and sr["identifier"][1]["value"] == "1201"
    assert [i["type"]["coding"][0]["code"] for i in sr["identifier"]] == ["PLAC", "FILL"]
    assert sr["reasonCode"][0]["coding"][0]["code"] == "S06.9"
    [prac] = resources(database_url, tenant, "Practitioner")
    assert sr["requester"] == {"reference": f"Practitioner/{prac['id']}", "display": "JONES A ORDPROVIDER"}
    assert sr["occurrenceDateTime"] == "2002-03-15"  # ORC-7 TQ.4 (no TQ1, no OBR-27)
