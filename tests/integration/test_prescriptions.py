"""Prescriptions (fhir_server/workflows/pharmacy/README.md): MedicationRequests grouped by
``groupIdentifier`` (R4 request.html#compound), ``MedicationRequest/$finalize`` with its completeness,
prescribing-right and allergy checks (detectedissue.html), the lock on finalized items
(medicationrequest.html "status"), the printable form, and the role rules, over real HTTP against a
real PostgreSQL.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from tests.conftest import ServerProcess, issue_token

B = "https://fhir-server.example.org/fhir"
FINALIZED = {"system": f"{B}/CodeSystem/workflow", "code": "finalized"}
RX_SYSTEM = f"{B}/prescription-number"


# ---- helpers (also used by test_dispensing.py) ------------------------------------------------

def created(client: httpx.Client, resource: dict[str, Any]) -> str:
    resource = {k: v for k, v in resource.items() if v is not None}
    r = client.post(f"/{resource['resourceType']}", json=resource)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def people(client: httpx.Client, *, prescriber_code: str | None = "doctor", patient_name: str = "Asha") -> dict[str, str]:
    """A patient, a practitioner (with a PractitionerRole of ``prescriber_code``), a facility, an encounter."""
    org = created(client, {"resourceType": "Organization", "name": "Dhanvantari Hospital & Research Centre"})
    patient = created(client, {"resourceType": "Patient", "name": [{"family": "Sharma", "given": [patient_name]}],
                               "gender": "female", "birthDate": "1980-04-12",
                               "identifier": [{"system": "http://hospital.example.org/mrn", "value": f"MRN-{uuid.uuid4().hex[:6]}"}]})
    practitioner = created(client, {"resourceType": "Practitioner", "name": [{"family": "Vaidya", "given": ["Ravi"], "prefix": ["Dr."]}]})
    if prescriber_code:
        created(client, {"resourceType": "PractitionerRole", "active": True, "practitioner": {"reference": f"Practitioner/{practitioner}"},
                         "organization": {"reference": f"Organization/{org}"},
                         "code": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/practitioner-role", "code": prescriber_code}]}]})
    encounter = created(client, {"resourceType": "Encounter", "status": "in-progress",
                                 "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                                 "subject": {"reference": f"Patient/{patient}"}, "serviceProvider": {"reference": f"Organization/{org}"}})
    return {"patient": patient, "practitioner": practitioner, "encounter": encounter, "organization": org}


def item(who: dict[str, str], group: str, *, medication: str = "Ashwagandha churna", quantity: float = 10,
         unit: str = "tablet", **extra: Any) -> dict[str, Any]:
    """A complete draft prescription item."""
    body: dict[str, Any] = {
        "resourceType": "MedicationRequest", "status": "draft", "intent": "order",
        "groupIdentifier": {"system": RX_SYSTEM, "value": group},
        "medicationCodeableConcept": {"text": medication},
        "subject": {"reference": f"Patient/{who['patient']}"},
        "encounter": {"reference": f"Encounter/{who['encounter']}"},
        "authoredOn": "2026-11-29",
        "requester": {"reference": f"Practitioner/{who['practitioner']}"},
        "dosageInstruction": [{
            "text": "1 tablet twice a day after food",
            "timing": {"repeat": {"frequency": 2, "period": 1, "periodUnit": "d", "when": ["PC"],
                                  "boundsDuration": {"value": 5, "unit": "days", "system": "http://unitsofmeasure.org", "code": "d"}}},
            "route": {"text": "oral"},
            "doseAndRate": [{"doseQuantity": {"value": 1, "unit": unit}}],
        }],
        "dispenseRequest": {"quantity": {"value": quantity, "unit": unit}},
    }
    body.update(extra)
    return body


def finalize(client: httpx.Client, group: str, **params: str) -> httpx.Response:
    parameters = [{"name": "prescription", "valueString": f"{RX_SYSTEM}|{group}"}]
    parameters += [{"name": k, "valueString": v} for k, v in params.items()]
    return client.post("/MedicationRequest/$finalize", json={"resourceType": "Parameters", "parameter": parameters})


def finalized_prescription(client: httpx.Client, *, quantity: float = 10, unit: str = "tablet") -> tuple[dict[str, str], str]:
    """A finalized one-item prescription: (people, item id)."""
    who = people(client)
    group = uuid.uuid4().hex[:10]
    rid = created(client, item(who, group, quantity=quantity, unit=unit))
    r = finalize(client, group)
    assert r.status_code == 200, r.text
    return who, rid


def with_token(server: ServerProcess, token: str) -> httpx.Client:
    return httpx.Client(base_url=server.base, timeout=60,
                        headers={"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"})


def errors(r: httpx.Response) -> list[dict[str, Any]]:
    return [i for i in r.json()["issue"] if i["severity"] == "error"]


@pytest.fixture(scope="module")
def role_tokens(database_url: str, server: ServerProcess) -> dict[str, str]:
    return {role: issue_token(database_url, tenant="default", role=role, subject=f"{role}-{uuid.uuid4().hex[:6]}")
            for role in ("doctor", "nurse", "pharmacist")}


def read(client: httpx.Client, ref: str) -> dict[str, Any]:
    r = client.get(f"/{ref}")
    assert r.status_code == 200, r.text
    return dict(r.json())


# ---- finalize -------------------------------------------------------------------------------

AYUSH = {
    "extension": [{"url": f"{B}/StructureDefinition/prescription-anupana",
                   "valueCodeableConcept": {"coding": [{"system": f"{B}/CodeSystem/ayurveda-anupana", "code": "madhu"}], "text": "honey"}}],
    "text": "3 g churna before sunrise with honey",
    "timing": {"repeat": {"extension": [{"url": f"{B}/StructureDefinition/prescription-ayush-timing",
                                         "valueCodeableConcept": {"coding": [{"system": f"{B}/CodeSystem/prescription-ayush-timing", "code": "brahma-muhurta"}]}}],
                          "frequency": 1, "period": 1, "periodUnit": "d",
                          "boundsDuration": {"value": 14, "unit": "days", "system": "http://unitsofmeasure.org", "code": "d"}}},
    "route": {"text": "oral"},
    "doseAndRate": [{"doseQuantity": {"value": 3, "unit": "g", "system": "http://unitsofmeasure.org", "code": "g"}}],
}
HOMEOPATHIC = {
    "extension": [{"url": f"{B}/StructureDefinition/prescription-homeopathic-administration", "extension": [
        {"url": "method", "valueCodeableConcept": {"coding": [{"system": f"{B}/CodeSystem/prescription-homeopathic-method", "code": "dissolve-in-water"}], "text": "dissolve"}},
        {"url": "pills", "valuePositiveInt": 4},
        {"url": "vehicle", "valueCodeableConcept": {"text": "water"}},
        {"url": "vehicleVolume", "valueQuantity": {"value": 30, "unit": "ml", "system": "http://unitsofmeasure.org", "code": "mL"}},
    ]}],
    "timing": {"repeat": {"when": ["AC", "HS"], "boundsDuration": {"value": 7, "unit": "days", "system": "http://unitsofmeasure.org", "code": "d"}}},
    "doseAndRate": [{"doseQuantity": {"value": 4, "unit": "pills"}}],
}


def test_finalize_activates_and_locks_every_item_in_one_go(client: httpx.Client) -> None:
    """operations.html (type-level $finalize): every item of the group goes draft → active with the finalized tag;
    AYUSH timing, anupana and homeopathic administration are kept as structured data (extensibility.html)."""
    who = people(client)
    group = uuid.uuid4().hex[:10]
    med = created(client, {"resourceType": "Medication", "code": {"text": "Arnica montana 30C"}})
    ayur = created(client, item(who, group, medication="Ashwagandha churna", unit="g", quantity=42, dosageInstruction=[AYUSH]))
    homeo = item(who, group, quantity=2, unit="bottle", dosageInstruction=[HOMEOPATHIC],
                 dispenseRequest={"quantity": {"value": 2, "unit": "bottle"}, "expectedSupplyDuration": {"value": 7, "unit": "days", "system": "http://unitsofmeasure.org", "code": "d"}})
    del homeo["medicationCodeableConcept"]
    homeo["medicationReference"] = {"reference": f"Medication/{med}"}
    homeo_id = created(client, homeo)

    r = finalize(client, group)
    assert r.status_code == 200, r.text
    bundle = r.json()
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "collection"
    assert sorted(e["resource"]["id"] for e in bundle["entry"]) == sorted([ayur, homeo_id])
    for rid in (ayur, homeo_id):
        stored = read(client, f"MedicationRequest/{rid}")
        assert stored["status"] == "active"
        assert any(t["system"] == FINALIZED["system"] and t["code"] == "finalized" for t in stored["meta"]["tag"])
    assert read(client, f"MedicationRequest/{ayur}")["dosageInstruction"][0]["extension"][0]["valueCodeableConcept"]["text"] == "honey"


def test_finalize_one_item_at_instance_level(client: httpx.Client) -> None:
    """operations.html instance level: MedicationRequest/[id]/$finalize finalizes that item only."""
    who = people(client)
    group = uuid.uuid4().hex[:10]
    one, other = created(client, item(who, group)), created(client, item(who, group))
    r = client.post(f"/MedicationRequest/{one}/$finalize", json={"resourceType": "Parameters"})
    assert r.status_code == 200, r.text
    assert read(client, f"MedicationRequest/{one}")["status"] == "active"
    assert read(client, f"MedicationRequest/{other}")["status"] == "draft"


def _drop(path: str) -> Any:
    def change(body: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = body
        for p in parents:
            node = node[int(p)] if p.isdigit() else node[p]
        del node[last]
    return change


FAILING = {
    "subject": (lambda b: b.update(subject={"reference": "Patient/no-such-patient"}), "MedicationRequest.subject"),
    "encounter": (_drop("encounter"), "MedicationRequest.encounter"),
    "requester": (_drop("requester"), "MedicationRequest.requester"),
    "medication": (lambda b: b.update(medicationCodeableConcept=None, medicationReference={"reference": "Medication/no-such"}),
                   "MedicationRequest.medicationReference"),
    "dose": (_drop("dosageInstruction.0.doseAndRate"), "MedicationRequest.dosageInstruction[0].doseAndRate"),
    "frequency": (lambda b: b["dosageInstruction"][0]["timing"]["repeat"].update(frequency=None, period=None, periodUnit=None, when=None),
                  "MedicationRequest.dosageInstruction[0].timing"),
    "duration": (_drop("dosageInstruction.0.timing.repeat.boundsDuration"), "MedicationRequest.dosageInstruction[0].timing.repeat.bounds[x]"),
    "quantity": (_drop("dispenseRequest"), "MedicationRequest.dispenseRequest.quantity"),
}


def _clean(body: dict[str, Any]) -> dict[str, Any]:
    for k in [k for k, v in body.items() if v is None]:
        del body[k]
    repeat = body["dosageInstruction"][0]["timing"]["repeat"]
    for k in [k for k, v in repeat.items() if v is None]:
        del repeat[k]
    if not repeat:
        del body["dosageInstruction"][0]["timing"]["repeat"]
    return body


@pytest.mark.parametrize("check", sorted(FAILING))
def test_each_failing_check_is_refused_alone(client: httpx.Client, check: str) -> None:
    """An unknown patient or medication, a missing encounter, prescriber, dose, frequency, duration or quantity: 422 with one issue
    naming the element (operationoutcome.html issue.expression); nothing is written."""
    change, expression = FAILING[check]
    who = people(client)
    group = uuid.uuid4().hex[:10]
    body = item(who, group)
    change(body)
    rid = created(client, _clean(body))
    r = finalize(client, group)
    assert r.status_code == 422, r.text
    found = errors(r)
    assert len(found) == 1, found
    assert found[0]["expression"] == [expression]
    assert rid in found[0]["diagnostics"]
    assert read(client, f"MedicationRequest/{rid}")["status"] == "draft"


def test_prescriber_without_prescribing_right_is_refused(client: httpx.Client) -> None:
    """The requester needs a PractitionerRole with a prescribing code (practitioner-role#doctor or the project's prescriber). R4 medicationrequest.html (MedicationRequest.requester), practitionerrole.html (PractitionerRole.code)."""
    who = people(client, prescriber_code="nurse")
    group = uuid.uuid4().hex[:10]
    created(client, item(who, group))
    r = finalize(client, group)
    assert r.status_code == 422
    [issue] = errors(r)
    assert issue["expression"] == ["MedicationRequest.requester"] and issue["code"] == "business-rule"


def test_every_failing_check_is_reported_at_once(client: httpx.Client) -> None:
    """All problems of all items in one OperationOutcome (one issue each), not the first only. R4 medicationrequest.html, operationoutcome.html (one issue per problem)."""
    who = people(client)
    group = uuid.uuid4().hex[:10]
    bad = item(who, group)
    for key in ("encounter", "requester", "medicationCodeableConcept", "dispenseRequest"):
        del bad[key]
    bad["subject"] = {"reference": "Patient/no-such-patient"}
    bad["medicationReference"] = {"reference": "Medication/no-such"}
    bad["dosageInstruction"] = [{"text": "as needed"}]
    first = created(client, bad)
    second = created(client, item(who, group, dispenseRequest={"numberOfRepeatsAllowed": 1}))
    r = finalize(client, group)
    assert r.status_code == 422
    found = errors(r)
    expressions = sorted((i["diagnostics"].split(":")[0], i["expression"][0]) for i in found)
    assert expressions == sorted([
        (f"MedicationRequest/{first}", e) for e in (
            "MedicationRequest.subject", "MedicationRequest.encounter", "MedicationRequest.requester",
            "MedicationRequest.medicationReference", "MedicationRequest.dosageInstruction[0].doseAndRate",
            "MedicationRequest.dosageInstruction[0].timing", "MedicationRequest.dosageInstruction[0].timing.repeat.bounds[x]",
            "MedicationRequest.dispenseRequest.quantity")
    ] + [(f"MedicationRequest/{second}", "MedicationRequest.dispenseRequest.quantity")])


def test_finalize_of_an_unknown_prescription_has_no_items(client: httpx.Client) -> None:
    """At least one item: a prescription number no MedicationRequest carries is refused (422), naming the parameter. R4 medicationrequest.html (MedicationRequest.groupIdentifier), operations.html."""
    r = finalize(client, "no-such-" + uuid.uuid4().hex)
    assert r.status_code == 422
    assert errors(r)[0]["expression"] == ["Parameters.parameter.where(name='prescription')"]
    r = client.post("/MedicationRequest/$finalize", json={"resourceType": "Parameters"})
    assert r.status_code == 400


def test_allergy_is_flagged_refused_and_can_be_overridden(client: httpx.Client) -> None:
    """allergyintolerance.html + detectedissue.html: an active allergy matching the medication refuses (422 naming
    the item and the allergy; nothing written); override-reason finalizes and records a DetectedIssue (ALGY, severity
    high, implicating the request) with the reason as its mitigation."""
    who = people(client)
    created(client, {"resourceType": "AllergyIntolerance", "patient": {"reference": f"Patient/{who['patient']}"},
                     "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "code": "active"}]},
                     "code": {"text": "Penicillin"}})
    created(client, {"resourceType": "AllergyIntolerance", "patient": {"reference": f"Patient/{who['patient']}"},
                     "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "code": "resolved"}]},
                     "code": {"text": "Paracetamol"}})
    group = uuid.uuid4().hex[:10]
    risky = created(client, item(who, group, medication="Penicillin V 250 mg"))
    created(client, item(who, group, medication="Paracetamol 500 mg"))  # resolved allergy: no alert

    r = finalize(client, group)
    assert r.status_code == 422, r.text
    [issue] = errors(r)
    assert issue["code"] == "business-rule" and issue["expression"] == ["MedicationRequest.medicationCodeableConcept"]
    assert risky in issue["diagnostics"] and "Penicillin" in issue["diagnostics"]
    assert client.get("/DetectedIssue", params={"patient": who["patient"]}).json().get("entry", []) == []
    assert read(client, f"MedicationRequest/{risky}")["status"] == "draft"

    assert finalize(client, group).status_code == 422
    r = finalize(client, group, **{"override-reason": "Tolerated amoxicillin last year; benefit outweighs risk"})
    assert r.status_code == 200, r.text
    alerts = client.get("/DetectedIssue", params={"patient": who["patient"]}).json().get("entry", [])
    assert len(alerts) == 1
    alert = alerts[0]["resource"]
    assert alert["status"] == "final" and "benefit outweighs risk" in alert["mitigation"][0]["action"]["text"]
    assert alert["severity"] == "high" and alert["code"]["coding"][0]["code"] == "ALGY"
    assert {"reference": f"MedicationRequest/{risky}"} in alert["implicated"]
    assert read(client, f"MedicationRequest/{risky}")["status"] == "active"


# ---- the lock ---------------------------------------------------------------------------------

def test_finalized_item_cannot_be_edited_but_can_be_stopped_or_cancelled(client: httpx.Client) -> None:
    """medicationrequest.html: a finalized item is changed only by a new request (priorPrescription); PUT, PATCH,
    a transaction entry and DELETE that edit it are refused (422); a status change to stopped/cancelled is allowed."""
    who = people(client)
    group = uuid.uuid4().hex[:10]
    one, two = created(client, item(who, group)), created(client, item(who, group))
    assert finalize(client, group).status_code == 200
    stored = read(client, f"MedicationRequest/{one}")

    edited = {**stored, "note": [{"text": "double the dose"}]}
    r = client.put(f"/MedicationRequest/{one}", json=edited)
    assert r.status_code == 422 and r.json()["issue"][0]["expression"] == ["MedicationRequest.note"]
    r = client.patch(f"/MedicationRequest/{one}", content=b'[{"op":"replace","path":"/dispenseRequest/quantity/value","value":99}]',
                     headers={"Content-Type": "application/json-patch+json"})
    assert r.status_code == 422
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": edited, "request": {"method": "PUT", "url": f"MedicationRequest/{one}"}}]}
    assert client.post("/", json=bundle).status_code in (400, 409, 422)
    assert client.delete(f"/MedicationRequest/{one}").status_code == 422
    untagged = {k: v for k, v in stored.items() if k != "meta"}
    assert client.put(f"/MedicationRequest/{one}", json={**untagged, "status": "cancelled"}).status_code == 422
    assert read(client, f"MedicationRequest/{one}")["meta"]["versionId"] == stored["meta"]["versionId"]

    r = client.patch(f"/MedicationRequest/{one}", content=b'[{"op":"replace","path":"/status","value":"cancelled"}]',
                     headers={"Content-Type": "application/json-patch+json"})
    assert r.status_code == 200, r.text
    second = read(client, f"MedicationRequest/{two}")
    r = client.put(f"/MedicationRequest/{two}", json={**second, "status": "stopped", "statusReason": {"text": "rash"}})
    assert r.status_code == 200, r.text
    back = read(client, f"MedicationRequest/{two}")
    assert client.put(f"/MedicationRequest/{two}", json={**back, "status": "active"}).status_code == 422

    # superseding: a new request pointing at the old one
    new_group = uuid.uuid4().hex[:10]
    created(client, item(who, new_group, priorPrescription={"reference": f"MedicationRequest/{two}"}))
    assert finalize(client, new_group).status_code == 200


def test_only_finalize_sets_the_finalized_tag(client: httpx.Client) -> None:
    """A create or update that claims the finalized tag without $finalize is refused (422). R4 medicationrequest.html (MedicationRequest.status), resource.html#tag."""
    who = people(client)
    body = item(who, uuid.uuid4().hex[:10], meta={"tag": [FINALIZED]}, status="active")
    r = client.post("/MedicationRequest", json=body)
    assert r.status_code == 422 and r.json()["issue"][0]["expression"] == ["MedicationRequest.meta.tag"]


def test_meta_delete_cannot_unlock_a_finalized_item(client: httpx.Client) -> None:
    """resource-operation-meta-delete.html: $meta-delete goes through the same workflow guard as a write, so the
    finalized tag cannot be removed (422) and the item stays locked."""
    _, rid = finalized_prescription(client)
    stored = read(client, f"MedicationRequest/{rid}")
    tag = next(t for t in stored["meta"]["tag"] if t["code"] == "finalized")
    body = {"resourceType": "Parameters", "parameter": [{"name": "meta", "valueMeta": {"tag": [tag]}}]}
    r = client.post(f"/MedicationRequest/{rid}/$meta-delete", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["issue"][0]["expression"] == ["MedicationRequest.meta.tag"]
    assert any(t["code"] == "finalized" for t in read(client, f"MedicationRequest/{rid}")["meta"]["tag"])


# ---- printable form ------------------------------------------------------------------------

def test_printable_prescription_is_escaped_html_with_every_item(client: httpx.Client) -> None:
    """The printable form (text/html): facility, patient, prescriber, items with dose, frequency in words
    (AYUSH timings too), duration, quantity and system-specific instructions; every value HTML-escaped. R4 medicationrequest.html (MedicationRequest.dosageInstruction, dispenseRequest)."""
    who = people(client, patient_name="<b>Asha</b> & co")
    group = uuid.uuid4().hex[:10]
    created(client, item(who, group, medication="<script>alert(1)</script> Triphala", unit="g", quantity=42, dosageInstruction=[AYUSH]))
    homeo = created(client, item(who, group, medication="Arnica montana 30C", quantity=1, unit="bottle", dosageInstruction=[HOMEOPATHIC]))
    assert finalize(client, group).status_code == 200
    r = client.get("/MedicationRequest/$print", params={"prescription": f"{RX_SYSTEM}|{group}"}, headers={"Accept": "text/html"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/html")
    html = r.text
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt; Triphala" in html
    assert "&lt;b&gt;Asha&lt;/b&gt; &amp; co" in html
    assert "Dhanvantari Hospital &amp; Research Centre" in html
    assert "Dr. Ravi Vaidya" in html
    for text in ("before sunrise (brahma muhurta)", "with honey (anupana)", "once a day", "for 14 days", "42 g", "3 g",
                 "Arnica montana 30C", "dissolve 4 pills in 30 ml water", "before food; at bedtime", "for 7 days", "1 bottle", group):
        assert text in html, text
    one = client.get(f"/MedicationRequest/{homeo}/$print")
    assert one.status_code == 200 and "Arnica montana 30C" in one.text and "Triphala" not in one.text


def test_draft_prints_with_a_draft_banner(client: httpx.Client) -> None:
    """A draft can be previewed; the page says it is not valid for dispensing. R4 medicationrequest.html (MedicationRequest.status draft)."""
    who = people(client)
    rid = created(client, item(who, uuid.uuid4().hex[:10]))
    r = client.get(f"/MedicationRequest/{rid}/$print")
    assert r.status_code == 200 and "DRAFT" in r.text


# ---- roles ----------------------------------------------------------------------------------

def test_only_prescribers_finalize(server: ServerProcess, client: httpx.Client, role_tokens: dict[str, str]) -> None:
    """Roles (README "Roles and permissions"): a nurse may draft but not finalize, a pharmacist may not finalize
    (403 forbidden); a doctor finalizes. R4 security.html, medicationrequest.html, operations.html."""
    who = people(client)
    group = uuid.uuid4().hex[:10]
    with with_token(server, role_tokens["nurse"]) as nurse:
        r = nurse.post("/MedicationRequest", json=item(who, group))
        assert r.status_code == 201, r.text
        r = finalize(nurse, group)
        assert r.status_code == 403 and r.json()["issue"][0]["code"] == "forbidden"
    with with_token(server, role_tokens["pharmacist"]) as pharmacist:
        assert finalize(pharmacist, group).status_code == 403
    with with_token(server, role_tokens["doctor"]) as doctor:
        r = finalize(doctor, group)
        assert r.status_code == 200, r.text


def test_a_doctor_finalizes_only_their_own_prescription(server: ServerProcess, client: httpx.Client, database_url: str) -> None:
    """A caller whose token names a Practitioner (fhirUser) may finalize only prescriptions it is the requester of;
    finalizing twice is refused (the items are no longer drafts). R4 medicationrequest.html (MedicationRequest.requester), security.html."""
    who = people(client)
    group = uuid.uuid4().hex[:10]
    created(client, item(who, group))
    other = issue_token(database_url, tenant="default", role="doctor", subject="dr-other", **{"fhir-user": "Practitioner/someone-else"})
    with with_token(server, other) as c:
        r = finalize(c, group)
        assert r.status_code == 422
        assert [i["expression"] for i in errors(r)] == [["MedicationRequest.requester"]]
    own = issue_token(database_url, tenant="default", role="doctor", subject="dr-own", **{"fhir-user": f"Practitioner/{who['practitioner']}"})
    with with_token(server, own) as c:
        assert finalize(c, group).status_code == 200
        again = finalize(c, group)
        assert again.status_code == 422 and errors(again)[0]["expression"] == ["MedicationRequest.status"]


def test_prescription_record_is_an_abdm_style_document(client: httpx.Client) -> None:
    """documents.html / ABDM PrescriptionRecord: a document Bundle (identifier, timestamp) whose first entry is a
    Composition (SNOMED CT 440545006, subject, encounter, author, custodian) listing every item in one section,
    followed by the referenced resources; the Bundle is valid R4 ($validate)."""
    who = people(client)
    group = uuid.uuid4().hex[:10]
    med = created(client, {"resourceType": "Medication", "code": {"text": "Arnica montana 30C"}})
    one = created(client, item(who, group))
    two = created(client, item(who, group, medicationCodeableConcept=None, medicationReference={"reference": f"Medication/{med}"}))
    assert finalize(client, group).status_code == 200
    r = client.get("/MedicationRequest/$prescription-record", params={"prescription": f"{RX_SYSTEM}|{group}"})
    assert r.status_code == 200, r.text
    bundle = r.json()
    assert bundle["type"] == "document" and bundle["identifier"]["value"] and bundle["timestamp"]
    composition = bundle["entry"][0]["resource"]
    assert composition["resourceType"] == "Composition" and composition["status"] == "final"
    assert composition["type"]["coding"][0]["code"] == "440545006"
    assert composition["identifier"] == {"system": RX_SYSTEM, "value": group}
    assert composition["subject"] == {"reference": f"Patient/{who['patient']}"}
    assert composition["encounter"] == {"reference": f"Encounter/{who['encounter']}"}
    assert composition["custodian"] == {"reference": f"Organization/{who['organization']}"}
    assert sorted(e["reference"] for e in composition["section"][0]["entry"]) == sorted([f"MedicationRequest/{one}", f"MedicationRequest/{two}"])
    types = {(e["resource"]["resourceType"], e["resource"]["id"]) for e in bundle["entry"][1:]}
    assert {("Patient", who["patient"]), ("Practitioner", who["practitioner"]), ("Encounter", who["encounter"]),
            ("Organization", who["organization"]), ("Medication", med), ("MedicationRequest", one), ("MedicationRequest", two)} <= types
    v = client.post("/Bundle/$validate", json=bundle)
    assert v.status_code == 200, v.text
    assert not [i for i in v.json()["issue"] if i["severity"] in ("error", "fatal")]


@pytest.mark.parametrize("code", ["finalize", "print", "prescription-record", "dispense"])
def test_operation_definitions_are_valid_and_in_the_capability_statement(client: httpx.Client, code: str) -> None:
    """operationdefinition.html: each pharmacy operation has a valid OperationDefinition, named by the
    CapabilityStatement (capabilitystatement.html rest.resource.operation.definition)."""
    from fhir_server.workflows.pharmacy.operation_definitions import DEFINITIONS

    definition = DEFINITIONS[code]
    v = client.post("/OperationDefinition/$validate", json=definition)
    assert v.status_code == 200 and not [i for i in v.json()["issue"] if i["severity"] in ("error", "fatal")], v.text
    metadata = client.get("/metadata").json()
    ops = next(r for r in metadata["rest"][0]["resource"] if r["type"] == "MedicationRequest")["operation"]
    assert {"name": code, "definition": definition["url"]} in ops
