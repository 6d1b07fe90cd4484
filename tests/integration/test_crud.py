"""The RESTful interactions of https://hl7.org/fhir/R4/http.html, over real HTTP and PostgreSQL."""

from __future__ import annotations

import json
import uuid

import httpx

PATIENT = {
    "resourceType": "Patient",
    "identifier": [{"system": "http://hospital.example.org/mrn", "value": "MRN-1"}],
    "name": [{"family": "Sharma", "given": ["Asha"]}],
    "gender": "female",
    "birthDate": "1980-04-12",
}


def new_patient(**changes: object) -> dict:
    p = {**PATIENT, **changes}
    p["identifier"] = [{"system": "http://hospital.example.org/mrn", "value": f"MRN-{uuid.uuid4().hex[:12]}"}]
    return p


def create(client: httpx.Client, resource: dict, **headers: str) -> httpx.Response:
    return client.post(f"/{resource['resourceType']}", json=resource, headers=headers)


def test_create_returns_201_location_etag_and_server_meta(client: httpx.Client) -> None:
    """http.html#create: 201, Location with id and version, ETag; the server owns id and meta."""
    body = new_patient(id="client-chosen", meta={"versionId": "99", "lastUpdated": "2001-01-01T00:00:00Z"})
    r = create(client, body)
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["id"] != "client-chosen"
    assert created["meta"]["versionId"] == "1"
    assert created["meta"]["lastUpdated"] != "2001-01-01T00:00:00Z"
    assert r.headers["etag"] == 'W/"1"'
    assert r.headers["location"].endswith(f"/fhir/Patient/{created['id']}/_history/1")
    assert r.headers["content-type"].startswith("application/fhir+json")
    assert "last-modified" in r.headers


def test_read_returns_what_was_created(client: httpx.Client) -> None:
    """http.html#read: 200 with the resource, ETag and Last-Modified."""
    created = create(client, new_patient()).json()
    r = client.get(f"/Patient/{created['id']}")
    assert r.status_code == 200
    assert r.json() == created
    assert r.headers["etag"] == 'W/"1"'


def test_read_unknown_id_is_404_operation_outcome(client: httpx.Client) -> None:
    """http.html#read: an unknown resource is 404 with an OperationOutcome."""
    r = client.get("/Patient/does-not-exist")
    assert r.status_code == 404
    assert r.json()["resourceType"] == "OperationOutcome"
    assert r.json()["issue"][0]["code"] == "not-found"


def test_update_makes_version_2_and_vread_keeps_version_1(client: httpx.Client) -> None:
    """http.html#update and #vread."""
    created = create(client, new_patient()).json()
    pid = created["id"]
    changed = {**created, "gender": "other"}
    r = client.put(f"/Patient/{pid}", json=changed)
    assert r.status_code == 200, r.text
    assert r.json()["meta"]["versionId"] == "2"
    assert r.headers["etag"] == 'W/"2"'
    assert client.get(f"/Patient/{pid}/_history/1").json()["gender"] == "female"
    assert client.get(f"/Patient/{pid}/_history/2").json()["gender"] == "other"
    assert client.get(f"/Patient/{pid}/_history/3").status_code == 404


def test_update_with_client_id_creates(client: httpx.Client) -> None:
    """http.html#upsert: PUT to a new id creates the resource (201)."""
    pid = f"client-{uuid.uuid4().hex[:8]}"
    r = client.put(f"/Patient/{pid}", json=new_patient(id=pid))
    assert r.status_code == 201, r.text
    assert r.json()["id"] == pid
    assert r.headers["location"].endswith(f"/Patient/{pid}/_history/1")


def test_update_id_must_match_url(client: httpx.Client) -> None:
    """http.html#update: a body id that differs from the URL id is 400."""
    created = create(client, new_patient()).json()
    r = client.put(f"/Patient/{created['id']}", json={**created, "id": "other"})
    assert r.status_code == 400
    assert r.json()["resourceType"] == "OperationOutcome"
    r = client.put(f"/Patient/{created['id']}", json={k: v for k, v in created.items() if k != "id"})
    assert r.status_code == 400


def test_if_match_version_aware_update(client: httpx.Client) -> None:
    """http.html#concurrency: If-Match with the current version succeeds, a stale one is 412."""
    created = create(client, new_patient()).json()
    pid = created["id"]
    ok = client.put(f"/Patient/{pid}", json=created, headers={"If-Match": 'W/"1"'})
    assert ok.status_code == 200
    stale = client.put(f"/Patient/{pid}", json=created, headers={"If-Match": 'W/"1"'})
    assert stale.status_code == 412
    assert stale.json()["resourceType"] == "OperationOutcome"


def test_delete_then_read_is_410_and_history_keeps_it(client: httpx.Client) -> None:
    """http.html#delete: later reads answer 410 Gone; history keeps every version."""
    created = create(client, new_patient()).json()
    pid = created["id"]
    r = client.delete(f"/Patient/{pid}")
    assert r.status_code == 204
    assert client.get(f"/Patient/{pid}").status_code == 410
    assert client.get(f"/Patient/{pid}/_history/1").status_code == 200
    assert client.get(f"/Patient/{pid}/_history/2").status_code == 410
    hist = client.get(f"/Patient/{pid}/_history").json()
    assert [e["request"]["method"] for e in hist["entry"]] == ["DELETE", "POST"]
    # deleting again changes nothing
    assert client.delete(f"/Patient/{pid}").status_code == 204
    assert len(client.get(f"/Patient/{pid}/_history").json()["entry"]) == 2


def test_delete_then_recreate_by_put(client: httpx.Client) -> None:
    """http.html#delete: a deleted resource can be brought back by an update (new version)."""
    created = create(client, new_patient()).json()
    pid = created["id"]
    client.delete(f"/Patient/{pid}")
    r = client.put(f"/Patient/{pid}", json={k: v for k, v in created.items() if k != "meta"})
    assert r.status_code == 201
    assert r.json()["meta"]["versionId"] == "3"
    assert client.get(f"/Patient/{pid}").status_code == 200


def test_delete_unknown_is_404(client: httpx.Client) -> None:
    """http.html#delete."""
    assert client.delete("/Patient/never-existed").status_code == 404


def test_json_patch(client: httpx.Client) -> None:
    """http.html#patch: JSON Patch makes a new version."""
    created = create(client, new_patient()).json()
    pid = created["id"]
    ops = [{"op": "replace", "path": "/gender", "value": "male"}, {"op": "add", "path": "/active", "value": True}]
    r = client.patch(f"/Patient/{pid}", content=json.dumps(ops), headers={"Content-Type": "application/json-patch+json"})
    assert r.status_code == 200, r.text
    assert r.json()["gender"] == "male" and r.json()["active"] is True
    assert r.json()["meta"]["versionId"] == "2"


def test_json_patch_that_breaks_validation_is_rejected(client: httpx.Client) -> None:
    """http.html#patch: the patched resource must still be valid."""
    created = create(client, new_patient()).json()
    ops = '[{"op": "replace", "path": "/gender", "value": "robot"}]'
    r = client.patch(f"/Patient/{created['id']}", content=ops, headers={"Content-Type": "application/json-patch+json"})
    assert r.status_code == 400
    assert client.get(f"/Patient/{created['id']}").json()["meta"]["versionId"] == "1"


def test_json_patch_failed_test_op_is_422(client: httpx.Client) -> None:
    """http.html#patch: a patch that cannot be applied is 422."""
    created = create(client, new_patient()).json()
    ops = '[{"op": "test", "path": "/gender", "value": "male"}]'
    r = client.patch(f"/Patient/{created['id']}", content=ops, headers={"Content-Type": "application/json-patch+json"})
    assert r.status_code == 422
    assert r.json()["resourceType"] == "OperationOutcome"


def test_conditional_create(client: httpx.Client) -> None:
    """http.html#ccreate: If-None-Exist: no match creates, one match returns it (200), several 412."""
    p = new_patient()
    ident = p["identifier"][0]
    cond = f"identifier={ident['system']}|{ident['value']}"
    first = create(client, p, **{"If-None-Exist": cond})
    assert first.status_code == 201
    again = create(client, p, **{"If-None-Exist": cond})
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    # a second resource with the same identifier makes the criteria ambiguous
    assert create(client, p).status_code == 201
    assert create(client, p, **{"If-None-Exist": cond}).status_code == 412


def test_conditional_update(client: httpx.Client) -> None:
    """http.html#cond-update: 0 matches create, 1 updates that one, several 412."""
    p = new_patient()
    ident = p["identifier"][0]
    url = f"/Patient?identifier={ident['system']}|{ident['value']}"
    r1 = client.put(url, json=p)
    assert r1.status_code == 201, r1.text
    r2 = client.put(url, json={**p, "gender": "other"})
    assert r2.status_code == 200
    assert r2.json()["id"] == r1.json()["id"] and r2.json()["meta"]["versionId"] == "2"
    create(client, p)
    assert client.put(url, json=p).status_code == 412


def test_conditional_delete(client: httpx.Client) -> None:
    """http.html#3.1.0.7.1: conditional delete of one match; several matches 412."""
    p = new_patient()
    ident = p["identifier"][0]
    url = f"/Patient?identifier={ident['system']}|{ident['value']}"
    pid = create(client, p).json()["id"]
    assert client.delete(url).status_code == 204
    assert client.get(f"/Patient/{pid}").status_code == 410
    create(client, p)
    create(client, p)
    assert client.delete(url).status_code == 412


def test_if_none_match_and_if_modified_since_give_304(client: httpx.Client) -> None:
    """http.html#cread: conditional read answers 304 Not Modified."""
    created = create(client, new_patient()).json()
    url = f"/Patient/{created['id']}"
    assert client.get(url, headers={"If-None-Match": 'W/"1"'}).status_code == 304
    assert client.get(url, headers={"If-None-Match": 'W/"2"'}).status_code == 200
    last_modified = client.get(url).headers["last-modified"]
    assert client.get(url, headers={"If-Modified-Since": last_modified}).status_code == 304
    assert client.get(url, headers={"If-Modified-Since": "Sat, 01 Jan 2000 00:00:00 GMT"}).status_code == 200


def test_prefer_return(client: httpx.Client) -> None:
    """http.html#ops: Prefer: return=minimal | representation | OperationOutcome."""
    minimal = create(client, new_patient(), Prefer="return=minimal")
    assert minimal.status_code == 201 and minimal.content == b""
    assert minimal.headers["location"]
    outcome = create(client, new_patient(), Prefer="return=OperationOutcome")
    assert outcome.status_code == 201 and outcome.json()["resourceType"] == "OperationOutcome"
    rep = create(client, new_patient(), Prefer="return=representation")
    assert rep.json()["resourceType"] == "Patient"


def test_format_and_accept_negotiation(client: httpx.Client) -> None:
    """http.html#mime-type: JSON variants are served; formats the server lacks get 406/415 (XML: test_xml_http.py)."""
    pid = create(client, new_patient()).json()["id"]
    r = client.get(f"/Patient/{pid}", headers={"Accept": "application/json"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    assert client.get(f"/Patient/{pid}?_format=json").headers["content-type"].startswith("application/fhir+json")
    assert client.get(f"/Patient/{pid}?_format=application/fhir%2Bjson").status_code == 200
    assert client.get(f"/Patient/{pid}", headers={"Accept": "text/turtle"}).status_code == 406
    assert client.get(f"/Patient/{pid}?_format=ttl").status_code == 406
    r = client.post("/Patient", content=b"@prefix fhir: <http://hl7.org/fhir/> .", headers={"Content-Type": "text/turtle"})
    assert r.status_code == 415
    assert r.json()["resourceType"] == "OperationOutcome"


def test_pretty(client: httpx.Client) -> None:
    """http.html#general: _pretty=true indents the JSON."""
    pid = create(client, new_patient()).json()["id"]
    assert b"\n  " in client.get(f"/Patient/{pid}?_pretty=true").content
    assert b"\n" not in client.get(f"/Patient/{pid}").content


def test_summary_and_elements_on_read(client: httpx.Client) -> None:
    """search.html#summary and #elements, applied to read; the result is marked SUBSETTED."""
    pid = create(client, new_patient(text={"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">A</div>'},
                                     communication=[{"language": {"text": "Hindi"}}])).json()["id"]
    s = client.get(f"/Patient/{pid}?_summary=true").json()
    assert "name" in s and "communication" not in s and "text" not in s
    assert any(t["code"] == "SUBSETTED" for t in s["meta"]["tag"])
    t = client.get(f"/Patient/{pid}?_summary=text").json()
    assert "text" in t and "name" not in t
    d = client.get(f"/Patient/{pid}?_summary=data").json()
    assert "text" not in d and "communication" in d
    e = client.get(f"/Patient/{pid}?_elements=gender,birthDate").json()
    assert set(e) == {"resourceType", "id", "meta", "gender", "birthDate"}
    assert client.get(f"/Patient/{pid}?_summary=bogus").status_code == 400


def test_capability_statement(server, client: httpx.Client) -> None:
    """http.html#capabilities: /metadata describes what the server does, and needs no token."""
    r = httpx.get(f"{server.base}/metadata")
    assert r.status_code == 200
    cs = r.json()
    assert cs["resourceType"] == "CapabilityStatement" and cs["fhirVersion"] == "4.0.1"
    resources = {res["type"]: res for res in cs["rest"][0]["resource"]}
    assert len(resources) == 146
    patient = resources["Patient"]
    assert {i["code"] for i in patient["interaction"]} >= {"read", "vread", "update", "patch", "delete", "create", "search-type", "history-instance", "history-type"}
    assert patient["conditionalDelete"] == "single"
    assert any(p["name"] == "identifier" for p in patient["searchParam"])
