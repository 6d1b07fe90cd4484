"""``$meta``, ``$meta-add``, ``$meta-delete`` (https://hl7.org/fhir/R4/resource-operation-meta.html,
resource-operation-meta-add.html, resource-operation-meta-delete.html) over real HTTP.

"This operation is special in that executing this operation does not cause a new version of the
resource to be created": versionId, lastUpdated and the history stay; `_tag` search follows.
"""

from __future__ import annotations

import uuid

import httpx
import psycopg

from tests.integration.test_errors import assert_outcome


def _meta_param(**lists: list) -> dict:
    return {"resourceType": "Parameters", "parameter": [{"name": "meta", "valueMeta": lists}]}


def _returned(r: httpx.Response) -> dict:
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["resourceType"] == "Parameters" and body["parameter"][0]["name"] == "return"
    return dict(body["parameter"][0]["valueMeta"])


def _history_count(client: httpx.Client, path: str) -> int:
    r = client.get(f"{path}/_history")
    assert r.status_code == 200, r.text
    return len(r.json().get("entry", []))


def _search_tag(client: httpx.Client, rtype: str, system: str, code: str) -> list[str]:
    r = client.get(f"/{rtype}", params={"_tag": f"{system}|{code}"})
    assert r.status_code == 200, r.text
    return [e["resource"]["id"] for e in r.json().get("entry", [])]


def test_meta_add_and_delete_keep_the_version(client: httpx.Client, db: psycopg.Connection) -> None:
    """resource-operation-meta-add.html / -meta-delete.html: no new version; `_tag`, `_security`
    and `_profile` searches find the resource after add and not after delete."""
    system = f"http://example.org/tags/{uuid.uuid4().hex}"
    r = client.post("/Patient", json={"resourceType": "Patient", "meta": {"tag": [{"system": system, "code": "keep"}]}})
    assert r.status_code == 201
    created = r.json()
    pid, path = created["id"], f"/Patient/{created['id']}"
    assert _history_count(client, path) == 1
    audit_before = db.execute(
        "SELECT count(*) FROM audit_event WHERE resource_type = 'Patient' AND resource_id = %s AND action = 'U'", (pid,)
    ).fetchone()[0]

    add = _meta_param(
        tag=[{"system": system, "code": "vip", "display": "VIP"}, {"system": system, "code": "keep", "display": "other"}],
        security=[{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}],
        profile=["http://example.org/StructureDefinition/p1"],
    )
    meta = _returned(client.post(f"{path}/$meta-add", json=add))
    assert meta["versionId"] == "1" and meta["lastUpdated"] == created["meta"]["lastUpdated"]
    # identity is system + code: the existing 'keep' tag stays as it was (no display added)
    assert meta["tag"] == [{"system": system, "code": "keep"}, {"system": system, "code": "vip", "display": "VIP"}]
    assert meta["profile"] == ["http://example.org/StructureDefinition/p1"]

    read = client.get(path)
    assert read.headers["etag"] == 'W/"1"'
    assert read.json()["meta"] == meta
    assert _history_count(client, path) == 1
    assert client.get(f"{path}/_history/1").json()["meta"] == meta  # the current history row changed in place
    assert pid in _search_tag(client, "Patient", system, "vip")
    assert pid in [e["resource"]["id"] for e in client.get("/Patient", params={"_security": "R"}).json().get("entry", [])]
    assert pid in [
        e["resource"]["id"]
        for e in client.get("/Patient", params={"_profile": "http://example.org/StructureDefinition/p1"}).json().get("entry", [])
    ]
    # audited as an update of version 1
    rows = db.execute(
        "SELECT action, interaction, version_id FROM audit_event WHERE resource_type = 'Patient' AND resource_id = %s "
        "AND action = 'U'", (pid,)
    ).fetchall()
    assert len(rows) == audit_before + 1 and rows[-1] == ("U", "update", 1)

    meta = _returned(client.post(f"{path}/$meta-delete", json=_meta_param(
        tag=[{"system": system, "code": "vip"}, {"system": system, "code": "never-there"}],
        profile=["http://example.org/StructureDefinition/p1"],
    )))
    assert meta["tag"] == [{"system": system, "code": "keep"}] and "profile" not in meta
    assert meta["versionId"] == "1"
    assert _history_count(client, path) == 1
    assert pid not in _search_tag(client, "Patient", system, "vip")
    assert pid in _search_tag(client, "Patient", system, "keep")
    assert _returned(client.get(f"{path}/$meta")) == meta

    # an ordinary update afterwards still makes version 2 and keeps what it is given
    current = client.get(path).json()
    r = client.put(path, json=current)
    assert r.status_code == 200 and r.json()["meta"]["versionId"] == "2"


def test_meta_at_type_and_system_level_is_the_union_in_use(client: httpx.Client) -> None:
    """resource-operation-meta.html: at type and system level, the tags, security labels and
    profiles in use (of live resources)."""
    system = f"http://example.org/tags/{uuid.uuid4().hex}"
    r = client.post("/Observation", json={
        "resourceType": "Observation", "status": "final", "code": {"text": "x"},
        "meta": {"tag": [{"system": system, "code": "obs"}], "profile": [f"{system}/profile"]},
    })
    oid = r.json()["id"]
    client.post("/Basic", json={"resourceType": "Basic", "code": {"text": "y"}, "meta": {"tag": [{"system": system, "code": "basic"}]}})
    obs_meta = _returned(client.get("/Observation/$meta"))
    assert {"system": system, "code": "obs"} in obs_meta["tag"]
    assert {"system": system, "code": "basic"} not in obs_meta["tag"]
    assert f"{system}/profile" in obs_meta["profile"]
    all_meta = _returned(client.post("/$meta"))
    assert {"system": system, "code": "obs"} in all_meta["tag"] and {"system": system, "code": "basic"} in all_meta["tag"]
    # a deleted resource's tags are no longer in use
    assert client.delete(f"/Observation/{oid}").status_code == 204
    assert {"system": system, "code": "obs"} not in _returned(client.get("/$meta")).get("tag", [])


def test_meta_errors(client: httpx.Client) -> None:
    """resource-operation-meta*.html: unknown 404, deleted 410, a missing or malformed meta 400,
    $meta-add only by POST on an instance."""
    assert_outcome(client.get("/Patient/no-such-id/$meta"), 404, "not-found")
    assert_outcome(client.post("/Patient/no-such-id/$meta-add", json=_meta_param(tag=[{"code": "a"}])), 404, "not-found")
    pid = client.post("/Patient", json={"resourceType": "Patient"}).json()["id"]
    assert_outcome(client.post(f"/Patient/{pid}/$meta-add", json={"resourceType": "Parameters"}), 400, "invalid")
    assert_outcome(client.post(f"/Patient/{pid}/$meta-add", json=_meta_param(tag=["not-a-coding"])), 400, "invalid")
    # the resulting resource is validated like a write: the issue names the element
    body = assert_outcome(client.post(f"/Patient/{pid}/$meta-add", json=_meta_param(profile=["has space"])), 400, "value")
    assert body["issue"][0]["expression"][0].startswith("Patient.meta.profile")
    assert_outcome(client.get(f"/Patient/{pid}/$meta-add"), 405)
    assert_outcome(client.post("/Patient/$meta-add", json=_meta_param(tag=[{"code": "a"}])), 404, "not-found")
    assert client.delete(f"/Patient/{pid}").status_code == 204
    assert_outcome(client.get(f"/Patient/{pid}/$meta"), 410, "deleted")
    assert_outcome(client.post(f"/Patient/{pid}/$meta-delete", json=_meta_param(tag=[{"code": "a"}])), 410, "deleted")


def test_capability_statement_lists_the_operations(client: httpx.Client) -> None:
    """capabilitystatement.html rest.operation / rest.resource.operation: name + canonical definition."""
    cs = client.get("/metadata").json()
    rest = cs["rest"][0]
    assert {"name": "meta", "definition": "http://hl7.org/fhir/OperationDefinition/Resource-meta"} in rest["operation"]
    by_type = {r["type"]: {o["name"]: o["definition"] for o in r.get("operation", [])} for r in rest["resource"]}
    assert by_type["Patient"]["everything"] == "http://hl7.org/fhir/OperationDefinition/Patient-everything"
    assert by_type["Encounter"]["everything"] == "http://hl7.org/fhir/OperationDefinition/Encounter-everything"
    assert "everything" not in by_type["Observation"]
    assert by_type["Observation"]["validate"] == "http://hl7.org/fhir/OperationDefinition/Resource-validate"
    assert by_type["Observation"]["meta-add"] == "http://hl7.org/fhir/OperationDefinition/Resource-meta-add"
    assert by_type["Observation"]["meta-delete"] == "http://hl7.org/fhir/OperationDefinition/Resource-meta-delete"
