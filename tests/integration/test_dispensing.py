"""Dispensing (fhir_server/workflows/pharmacy/README.md "Dispensing"; R4 medicationdispense.html,
medicationrequest.html "dispenseRequest"): ``MedicationRequest/[id]/$dispense`` and plain REST writes of a
MedicationDispense follow one rule set — only against finalized items, partial and complete dispenses
tracked against the prescribed quantity, no over-dispensing without a reason, substitution recorded, the
request completed when fully dispensed, all in one transaction; concurrent dispenses never exceed the
prescription. Real HTTP, real PostgreSQL.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import httpx
import psycopg
import pytest

from fhir_server.audit.actor import Actor
from fhir_server.services.resources import ResourceService
from fhir_server.storage.db import Database
from fhir_server.workflows.pharmacy import stock
from fhir_server.workflows.pharmacy.finalize import finalize as finalize_items
from tests.conftest import ServerProcess, issue_token
from tests.integration.test_prescriptions import created, finalized_prescription, item, people, read, with_token

B = "https://fhir-server.example.org/fhir"
OVERRIDE = f"{B}/StructureDefinition/prescription-dispense-override"


def dispense(client: httpx.Client, rid: str, quantity: float | None = None, **params: Any) -> httpx.Response:
    parameter: list[dict[str, Any]] = []
    if quantity is not None:
        parameter.append({"name": "quantity", "valueQuantity": {"value": quantity, "unit": "tablet"}})
    for name, value in params.items():
        parameter.append({"name": name.replace("_", "-"), **(value if isinstance(value, dict) else {"valueString": value})})
    return client.post(f"/MedicationRequest/{rid}/$dispense", json={"resourceType": "Parameters", "parameter": parameter})


def out(r: httpx.Response, name: str) -> Any:
    p = next(p for p in r.json()["parameter"] if p["name"] == name)
    return p.get("resource") or p.get("valueQuantity")


def rest_dispense(who: dict[str, str], rid: str, quantity: float, unit: str = "tablet", **extra: Any) -> dict[str, Any]:
    body = {"resourceType": "MedicationDispense", "status": "completed", "medicationCodeableConcept": {"text": "Ashwagandha churna"},
            "subject": {"reference": f"Patient/{who['patient']}"},
            "authorizingPrescription": [{"reference": f"MedicationRequest/{rid}"}],
            "quantity": {"value": quantity, "unit": unit}}
    body.update(extra)
    return body


def dispensed_in_db(database_url: str, rid: str) -> Decimal:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT coalesce(sum((content->'quantity'->>'value')::numeric), 0) FROM resource WHERE resource_type = 'MedicationDispense' "
            "AND NOT deleted AND content->>'status' = 'completed' AND content->'authorizingPrescription' @> %s::jsonb",
            (f'[{{"reference": "MedicationRequest/{rid}"}}]',),
        ).fetchone()
        assert row is not None
        return Decimal(row[0])


@pytest.fixture(scope="module")
def role_tokens(database_url: str, server: ServerProcess) -> dict[str, str]:
    return {role: issue_token(database_url, tenant="default", role=role, subject=f"{role}-{uuid.uuid4().hex[:6]}")
            for role in ("doctor", "nurse", "pharmacist")}


def test_partial_then_complete_dispense_completes_the_request(client: httpx.Client) -> None:
    """A partial dispense leaves the request active with the rest to dispense; the last one (default: what is
    left) completes it (medicationrequest.html status completed)."""
    _, rid = finalized_prescription(client, quantity=10)
    r = dispense(client, rid, 4)
    assert r.status_code == 200, r.text
    assert out(r, "dispense")["status"] == "completed" and out(r, "dispense")["quantity"]["value"] == 4
    assert out(r, "request")["status"] == "active"
    assert out(r, "remaining")["value"] == 6
    r = dispense(client, rid)
    assert r.status_code == 200, r.text
    assert out(r, "dispense")["quantity"]["value"] == 6
    assert out(r, "remaining")["value"] == 0
    assert read(client, f"MedicationRequest/{rid}")["status"] == "completed"


def test_over_dispense_is_refused_unless_overridden_with_a_reason(client: httpx.Client, database_url: str) -> None:
    """No more than dispenseRequest.quantity (422 naming MedicationDispense.quantity, nothing written); with
    override-reason it is allowed and the reason is recorded on the dispense. R4 medicationdispense.html (MedicationDispense.quantity), medicationrequest.html (dispenseRequest.quantity)."""
    _, rid = finalized_prescription(client, quantity=10)
    r = dispense(client, rid, 11)
    assert r.status_code == 422, r.text
    issue = r.json()["issue"][0]
    assert issue["code"] == "business-rule" and issue["expression"] == ["MedicationDispense.quantity"]
    assert dispensed_in_db(database_url, rid) == 0
    assert dispense(client, rid, 10).status_code == 200
    assert dispense(client, rid, 1).status_code == 422
    r = dispense(client, rid, 2, override_reason="Patient travelling; 2 spare tablets approved by Dr. Vaidya")
    assert r.status_code == 200, r.text
    assert out(r, "dispense")["extension"] == [{"url": OVERRIDE, "valueString": "Patient travelling; 2 spare tablets approved by Dr. Vaidya"}]
    assert dispensed_in_db(database_url, rid) == 12


def test_rest_dispense_follows_the_same_rules(client: httpx.Client) -> None:
    """A plain POST/PUT of a MedicationDispense with authorizingPrescription goes through the same rules as
    $dispense: finalized request only, the prescribed unit, no over-dispense; a reversal (entered-in-error) reopens
    the request. A dispense without a prescription (over the counter) is not concerned. R4 medicationdispense.html (MedicationDispense.authorizingPrescription)."""
    who, rid = finalized_prescription(client, quantity=10)
    assert client.post("/MedicationDispense", json=rest_dispense(who, rid, 11)).status_code == 422
    r = client.post("/MedicationDispense", json=rest_dispense(who, rid, 3, unit="bottle"))
    assert r.status_code == 422 and r.json()["issue"][0]["expression"] == ["MedicationDispense.quantity"]
    first = created(client, rest_dispense(who, rid, 3))
    assert read(client, f"MedicationRequest/{rid}")["status"] == "active"
    second = created(client, rest_dispense(who, rid, 7))
    assert read(client, f"MedicationRequest/{rid}")["status"] == "completed"
    body = read(client, f"MedicationDispense/{second}")
    assert client.put(f"/MedicationDispense/{second}", json={**body, "quantity": {"value": 8, "unit": "tablet"}}).status_code == 422
    r = client.put(f"/MedicationDispense/{second}", json={**body, "status": "entered-in-error"})
    assert r.status_code == 200, r.text
    assert read(client, f"MedicationRequest/{rid}")["status"] == "active"
    assert read(client, f"MedicationDispense/{first}")["status"] == "completed"
    r = client.post("/MedicationDispense", json=rest_dispense(who, rid, 8, extension=[{"url": OVERRIDE, "valueString": "spare strip"}]))
    assert r.status_code == 201, r.text
    assert read(client, f"MedicationRequest/{rid}")["status"] == "completed"

    draft = created(client, item(people(client), uuid.uuid4().hex[:10]))
    r = client.post("/MedicationDispense", json=rest_dispense(who, draft, 1))
    assert r.status_code == 422 and r.json()["issue"][0]["expression"] == ["MedicationDispense.authorizingPrescription"]
    assert dispense(client, draft, 1).status_code == 422
    otc = {"resourceType": "MedicationDispense", "status": "completed", "medicationCodeableConcept": {"text": "ORS sachet"},
           "quantity": {"value": 2, "unit": "sachet"}}
    assert client.post("/MedicationDispense", json=otc).status_code == 201


def test_dispense_against_a_stopped_request_is_refused(client: httpx.Client) -> None:
    """A stopped/cancelled item cannot be dispensed any more. R4 medicationrequest.html (MedicationRequest.status), medicationdispense.html."""
    _, rid = finalized_prescription(client, quantity=10)
    r = client.patch(f"/MedicationRequest/{rid}", content=b'[{"op":"replace","path":"/status","value":"stopped"}]',
                     headers={"Content-Type": "application/json-patch+json"})
    assert r.status_code == 200, r.text
    r = dispense(client, rid, 1)
    assert r.status_code == 422 and "stopped" in r.json()["issue"][0]["diagnostics"]


def test_substitution_is_recorded(client: httpx.Client) -> None:
    """medicationdispense.html substitution: another medication dispensed, with type and reason."""
    _, rid = finalized_prescription(client, quantity=10)
    r = dispense(client, rid, 10, medication={"valueCodeableConcept": {"text": "Ashwagandha vati (generic)"}},
                 substitution_type={"valueCode": "G"}, substitution_reason={"valueCode": "FP"})
    assert r.status_code == 200, r.text
    d = out(r, "dispense")
    assert d["medicationCodeableConcept"]["text"] == "Ashwagandha vati (generic)"
    assert d["substitution"]["wasSubstituted"] is True
    assert d["substitution"]["type"]["coding"][0] == {"system": "http://terminology.hl7.org/CodeSystem/v3-substanceAdminSubstitution", "code": "G"}
    assert d["substitution"]["reason"][0]["coding"][0]["code"] == "FP"
    assert out(r, "request")["status"] == "completed"


async def _parallel(base: str, headers: dict[str, str], calls: list[tuple[str, str, dict[str, Any]]]) -> list[int]:
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=120,
                                 limits=httpx.Limits(max_connections=len(calls))) as ac:
        async def one(method: str, url: str, body: dict[str, Any]) -> int:
            return (await ac.request(method, url, json=body)).status_code
        return list(await asyncio.gather(*(one(*c) for c in calls)))


def test_concurrent_dispenses_never_exceed_the_prescription(server: ServerProcess, client: httpx.Client, database_url: str) -> None:
    """10 parallel $dispense of 3 against 10 prescribed: exactly 3 succeed (the request row is locked and the sum
    taken under the lock), 9 dispensed, the rest refused 422; the same with 10 parallel REST POSTs of 2 (5 succeed). R4 medicationdispense.html (MedicationDispense.quantity), medicationrequest.html (dispenseRequest.quantity)."""
    _, rid = finalized_prescription(client, quantity=10)
    body = {"resourceType": "Parameters", "parameter": [{"name": "quantity", "valueQuantity": {"value": 3, "unit": "tablet"}}]}
    statuses = asyncio.run(_parallel(server.base, dict(client.headers), [("POST", f"/MedicationRequest/{rid}/$dispense", body)] * 10))
    assert sorted(statuses) == [200] * 3 + [422] * 7, statuses
    assert dispensed_in_db(database_url, rid) == 9
    assert read(client, f"MedicationRequest/{rid}")["status"] == "active"

    who, rid = finalized_prescription(client, quantity=10)
    statuses = asyncio.run(_parallel(server.base, dict(client.headers), [("POST", "/MedicationDispense", rest_dispense(who, rid, 2))] * 10))
    assert sorted(statuses) == [201] * 5 + [422] * 5, statuses
    assert dispensed_in_db(database_url, rid) == 10
    assert read(client, f"MedicationRequest/{rid}")["status"] == "completed"


def test_only_pharmacists_dispense(server: ServerProcess, client: httpx.Client, role_tokens: dict[str, str]) -> None:
    """Roles (README "Roles and permissions"): a doctor or nurse may not dispense (403 forbidden), by the
    operation or by REST; a pharmacist may. R4 security.html, medicationdispense.html, operations.html."""
    who, rid = finalized_prescription(client, quantity=10)
    for role in ("doctor", "nurse"):
        with with_token(server, role_tokens[role]) as c:
            r = dispense(c, rid, 1)
            assert r.status_code == 403 and r.json()["issue"][0]["code"] == "forbidden"
            assert c.post("/MedicationDispense", json=rest_dispense(who, rid, 1)).status_code == 403
    with with_token(server, role_tokens["pharmacist"]) as pharmacist:
        assert dispense(pharmacist, rid, 1).status_code == 200
        assert pharmacist.post("/MedicationDispense", json=rest_dispense(who, rid, 1)).status_code == 201
        # a pharmacist sees the allergy alerts (DetectedIssue), cannot edit a finalized item's content
        assert pharmacist.get("/DetectedIssue", params={"patient": who["patient"]}).status_code == 200
        stored = read(pharmacist, f"MedicationRequest/{rid}")
        assert pharmacist.put(f"/MedicationRequest/{rid}", json={**stored, "note": [{"text": "x"}]}).status_code == 422


# ---- the stock seam (in process: the ledger is a Python object) ------------------------------

class RecordingLedger:
    def __init__(self) -> None:
        self.draws: list[tuple[str, dict[str, Any], dict[str, Any], str | None]] = []

    async def draw(self, conn: Any, tenant: str, medication: dict[str, Any], quantity: dict[str, Any], location: str | None) -> None:
        self.draws.append((tenant, medication, quantity, location))
        if quantity.get("value", 0) > 100:
            from fhir_server.errors import UnprocessableEntity
            raise UnprocessableEntity("out of stock", expression="MedicationDispense.quantity")


@pytest.fixture
async def svc(database_url: str) -> AsyncIterator[ResourceService]:
    db = Database(database_url, min_size=1, max_size=2)
    await db.open()
    try:
        yield ResourceService(db, f"pharmacy-{uuid.uuid4().hex[:8]}", Actor("test"))
    finally:
        await db.close()


async def test_stock_ledger_draws_in_the_dispense_transaction(svc: ResourceService) -> None:
    """The stock seam (stock.py): a completed dispense draws its quantity from its location, a reversal puts it
    back, and a ledger that refuses rolls the dispense back. R4 medicationdispense.html (MedicationDispense.quantity, location)."""
    async def make(resource: dict[str, Any]) -> str:
        return (await svc.create(resource["resourceType"], resource)).version.id
    patient = await make({"resourceType": "Patient"})
    practitioner = await make({"resourceType": "Practitioner"})
    await make({"resourceType": "PractitionerRole", "practitioner": {"reference": f"Practitioner/{practitioner}"},
                "code": [{"coding": [{"system": f"{B}/CodeSystem/prescription-prescriber-role", "code": "prescriber"}]}]})
    encounter = await make({"resourceType": "Encounter", "status": "in-progress", "class": {"code": "AMB"}, "subject": {"reference": f"Patient/{patient}"}})
    who = {"patient": patient, "practitioner": practitioner, "encounter": encounter}
    rid = await make(item(who, "stock-1", quantity=200))
    await finalize_items(svc.db, svc, item_id=rid)
    ledger = RecordingLedger()
    stock.set_stock_ledger(ledger)
    try:
        d = await make(rest_dispense(who, rid, 5, location={"reference": "Location/main-pharmacy"}))
        assert ledger.draws == [(svc.tenant, {"medicationCodeableConcept": {"text": "Ashwagandha churna"}},
                                 {"value": 5, "unit": "tablet"}, "Location/main-pharmacy")]
        stored = (await svc.read("MedicationDispense", d)).content or ""
        import orjson
        await svc.update("MedicationDispense", d, {**orjson.loads(stored), "status": "entered-in-error"})
        assert ledger.draws[-1][2] == {"value": -5, "unit": "tablet"}
        with pytest.raises(Exception, match="out of stock"):
            await make(rest_dispense(who, rid, 150))
        async with svc.db.connection() as conn:
            cur = await conn.execute("SELECT count(*) FROM resource WHERE tenant_id = %s AND resource_type = 'MedicationDispense'", (svc.tenant,))
            assert (await cur.fetchone())[0] == 1
    finally:
        stock.set_stock_ledger(stock.NoStockLedger())


def test_transaction_bundle_dispenses_are_all_or_nothing(client: httpx.Client, database_url: str) -> None:
    """bundle.html#transaction: two dispense entries that together exceed the prescription fail the whole Bundle."""
    who, rid = finalized_prescription(client, quantity=10)
    entry = {"request": {"method": "POST", "url": "MedicationDispense"}}
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {**entry, "resource": rest_dispense(who, rid, 6)}, {**entry, "resource": rest_dispense(who, rid, 6)}]}
    r = client.post("/", json=bundle)
    assert r.status_code == 422, r.text
    assert dispensed_in_db(database_url, rid) == 0
    bundle["entry"][1]["resource"] = rest_dispense(who, rid, 4)
    assert client.post("/", json=bundle).status_code == 200
    assert read(client, f"MedicationRequest/{rid}")["status"] == "completed"
