"""``$validate`` (https://hl7.org/fhir/R4/resource-operation-validate.html) over real HTTP.

"The operation returns a 200 OK whether or not the resource is valid"; the OperationOutcome lists
the issues (each naming its element), or says all is OK. Nothing is written.
"""

from __future__ import annotations

import httpx
import psycopg

from tests.integration.test_errors import assert_outcome, count_rows

VALID = {"resourceType": "Patient", "gender": "female", "birthDate": "1970-01-01"}
INVALID = {"resourceType": "Patient", "gender": "woman", "birthDate": "1970-02-30"}


def _params(resource: dict | None = None, **values: str) -> dict:
    params = [{"name": k, "valueCode" if k == "mode" else "valueUri": v} for k, v in values.items()]
    if resource is not None:
        params.insert(0, {"name": "resource", "resource": resource})
    return {"resourceType": "Parameters", "parameter": params}


def _create(client: httpx.Client, resource: dict) -> str:
    r = client.post(f"/{resource['resourceType']}", json=resource)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def test_valid_resource_is_all_ok_and_nothing_is_written(client: httpx.Client, db: psycopg.Connection) -> None:
    """resource-operation-validate.html: a valid resource gives 200 and an information issue."""
    before = count_rows(db)
    for body in (VALID, _params(VALID)):
        body_out = assert_outcome(client.post("/Patient/$validate", json=body), 200)
        assert [i["severity"] for i in body_out["issue"]] == ["information"]
        assert body_out["issue"][0]["diagnostics"].startswith("All OK")
    assert count_rows(db) == before


def test_invalid_resource_is_200_with_issues_naming_elements(client: httpx.Client) -> None:
    """resource-operation-validate.html: an invalid resource still gives 200; issues carry expressions."""
    body = assert_outcome(client.post("/Patient/$validate", json=INVALID), 200)
    errors = {(i["code"], i["expression"][0]) for i in body["issue"] if i["severity"] == "error"}
    assert ("code-invalid", "Patient.gender") in errors
    assert ("value", "Patient.birthDate") in errors
    # a resource of another type than the URL's
    body = assert_outcome(client.post("/Patient/$validate", json={"resourceType": "Basic", "code": {"text": "x"}}), 200)
    assert body["issue"][0]["severity"] == "error" and body["issue"][0]["expression"] == ["resourceType"]


def test_profile_parameter(client: httpx.Client) -> None:
    """resource-operation-validate.html `profile`: validate against that profile; an unknown one is an error issue."""
    known = "http://hl7.org/fhir/StructureDefinition/Patient"
    body = assert_outcome(client.post("/Patient/$validate", json=_params(VALID, profile=known)), 200)
    assert body["issue"][-1]["diagnostics"].startswith("All OK")
    unknown = "http://example.org/StructureDefinition/no-such-profile"
    body = assert_outcome(client.post("/Patient/$validate", json=_params(VALID, profile=unknown)), 200)
    assert [(i["severity"], i["code"]) for i in body["issue"]] == [("error", "not-found")]
    assert unknown in body["issue"][0]["diagnostics"]
    # also from the query string, with the resource as the raw body
    body = assert_outcome(client.post("/Patient/$validate", params={"profile": unknown}, json=VALID), 200)
    assert body["issue"][0]["code"] == "not-found"
    # a profile of another type
    obs_profile = "http://hl7.org/fhir/StructureDefinition/Observation"
    body = assert_outcome(client.post("/Patient/$validate", json=_params(VALID, profile=obs_profile)), 200)
    assert body["issue"][0]["code"] == "invalid"


def test_mode_create_update_delete(client: httpx.Client) -> None:
    """resource-operation-validate.html `mode`: update needs the id (matching the URL's on an instance),
    delete needs an existing instance; create notes that the id is ignored."""
    pid = _create(client, dict(VALID))
    body = assert_outcome(client.post("/Patient/$validate", json=_params(VALID, mode="update")), 200)
    assert (body["issue"][0]["code"], body["issue"][0]["expression"]) == ("required", ["Patient.id"])
    body = assert_outcome(client.post(f"/Patient/{pid}/$validate", json=_params({**VALID, "id": "other"}, mode="update")), 200)
    assert (body["issue"][0]["code"], body["issue"][0]["expression"]) == ("invalid", ["Patient.id"])
    body = assert_outcome(client.post(f"/Patient/{pid}/$validate", json=_params({**VALID, "id": pid}, mode="update")), 200)
    assert [i["severity"] for i in body["issue"]] == ["information"]
    body = assert_outcome(client.post("/Patient/$validate", json=_params({**VALID, "id": "x1"}, mode="create")), 200)
    assert {i["severity"] for i in body["issue"]} == {"information"}
    assert body["issue"][0]["expression"] == ["Patient.id"]

    body = assert_outcome(client.post(f"/Patient/{pid}/$validate", json=_params(mode="delete")), 200)
    assert body["issue"][0]["severity"] == "information"
    assert_outcome(client.post("/Patient/no-such-id/$validate", json=_params(mode="delete")), 404, "not-found")
    assert_outcome(client.post("/Patient/$validate", json=_params(mode="delete")), 400, "invalid")
    assert client.delete(f"/Patient/{pid}").status_code == 204
    assert_outcome(client.post(f"/Patient/{pid}/$validate", json=_params(mode="delete")), 410, "deleted")
    assert_outcome(client.post("/Patient/$validate", json=_params(VALID, mode="upsert")), 400, "invalid")


def test_get_instance_validates_the_stored_resource(client: httpx.Client) -> None:
    """resource-operation-validate.html: [type]/[id]/$validate without a resource checks the stored one."""
    pid = _create(client, dict(VALID))
    body = assert_outcome(client.get(f"/Patient/{pid}/$validate"), 200)
    assert body["issue"][0]["diagnostics"].startswith("All OK")
    body = assert_outcome(client.get(f"/Patient/{pid}/$validate", params={"profile": "http://example.org/none"}), 200)
    assert body["issue"][0]["code"] == "not-found"
    assert_outcome(client.get("/Patient/no-such-id/$validate"), 404, "not-found")


def test_malformed_input_is_400(client: httpx.Client) -> None:
    """resource-operation-validate.html: validation that cannot be performed is a 4xx."""
    headers = {"Content-Type": "application/fhir+json"}
    assert_outcome(client.post("/Patient/$validate", content=b"{not json", headers=headers), 400, "invalid")
    assert_outcome(client.post("/Patient/$validate", content=b"[1, 2]", headers=headers), 400, "invalid")
    bad = {"resourceType": "Parameters", "parameter": [{"name": "resource", "valueString": "x"}]}
    assert_outcome(client.post("/Patient/$validate", json=bad), 400, "invalid")
    assert_outcome(client.get("/Patient/$validate"), 400, "invalid")
