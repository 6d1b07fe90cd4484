"""Search over HTTP (https://hl7.org/fhir/R4/http.html#search, search.html): searchset bundles and paging."""

from __future__ import annotations

import uuid

import httpx

from tests.integration.test_crud import new_patient


def _family() -> str:
    return f"Fam{uuid.uuid4().hex[:8]}"


def test_search_returns_searchset_with_total_fullurl_and_match_mode(client: httpx.Client) -> None:
    """search.html#return and bundle.html: searchset with total, fullUrl and search.mode = match."""
    fam = _family()
    ids = {client.post("/Patient", json=new_patient(name=[{"family": fam}])).json()["id"] for _ in range(3)}
    b = client.get("/Patient", params={"family": fam}).json()
    assert b["type"] == "searchset" and b["total"] == 3
    assert {e["resource"]["id"] for e in b["entry"]} == ids
    assert all(e["search"]["mode"] == "match" and e["fullUrl"].endswith(e["resource"]["id"]) for e in b["entry"])


def test_post_search_matches_get(client: httpx.Client) -> None:
    """http.html#search: POST [type]/_search with a form body."""
    fam = _family()
    client.post("/Patient", json=new_patient(name=[{"family": fam}]))
    r = client.post("/Patient/_search", data={"family": fam})
    assert r.status_code == 200 and r.json()["total"] == 1


def test_paging_walks_all_matches_once(client: httpx.Client) -> None:
    """search.html#count: _count and next links."""
    fam = _family()
    ids = {client.post("/Patient", json=new_patient(name=[{"family": fam}])).json()["id"] for _ in range(5)}
    seen: list[str] = []
    url: str | None = f"/Patient?family={fam}&_count=2"
    while url:
        b = client.get(url).json()
        seen += [e["resource"]["id"] for e in b.get("entry", [])]
        nxt = [link["url"] for link in b["link"] if link["relation"] == "next"]
        url = nxt[0] if nxt else None
    assert sorted(seen) == sorted(ids)


def test_summary_count_has_total_only(client: httpx.Client) -> None:
    """search.html#summary: _summary=count."""
    fam = _family()
    client.post("/Patient", json=new_patient(name=[{"family": fam}]))
    b = client.get("/Patient", params={"family": fam, "_summary": "count"}).json()
    assert b["total"] == 1 and "entry" not in b


def test_unknown_parameter_is_reported_or_strict_400(client: httpx.Client) -> None:
    """search.html#errors: ignored and reported by default; Prefer: handling=strict gives 400."""
    b = client.get("/Patient", params={"shoe-size": "9", "_count": "1"}).json()
    outcome = [e for e in b.get("entry", []) if e["search"]["mode"] == "outcome"]
    assert outcome and outcome[0]["resource"]["issue"][0]["severity"] == "warning"
    r = client.get("/Patient", params={"shoe-size": "9"}, headers={"Prefer": "handling=strict"})
    assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome"


def test_deleted_resources_are_not_found(client: httpx.Client) -> None:
    """http.html#delete: a deleted resource is no longer a search result."""
    fam = _family()
    pid = client.post("/Patient", json=new_patient(name=[{"family": fam}])).json()["id"]
    client.delete(f"/Patient/{pid}")
    assert client.get("/Patient", params={"family": fam}).json()["total"] == 0


def test_updates_reindex(client: httpx.Client) -> None:
    """Index rows follow every write in the same transaction."""
    fam, fam2 = _family(), _family()
    created = client.post("/Patient", json=new_patient(name=[{"family": fam}])).json()
    client.put(f"/Patient/{created['id']}", json={**created, "name": [{"family": fam2}]})
    assert client.get("/Patient", params={"family": fam}).json()["total"] == 0
    assert client.get("/Patient", params={"family": fam2}).json()["total"] == 1


def test_invalid_search_value_is_400(client: httpx.Client) -> None:
    """search.html#errors: a value the parameter cannot take is 400 with an OperationOutcome."""
    r = client.get("/Patient", params={"birthdate": "not-a-date"})
    assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome"


def test_chained_and_reverse_chained_search_over_http(client: httpx.Client) -> None:
    """search.html#chaining and #has, end to end through the write path's index rows."""
    fam = _family()
    pid = client.post("/Patient", json=new_patient(name=[{"family": fam}])).json()["id"]
    code = uuid.uuid4().hex[:10]
    obs = {"resourceType": "Observation", "status": "final", "subject": {"reference": f"Patient/{pid}"},
           "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
           "valueQuantity": {"value": 120, "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}
    oid = client.post("/Observation", json=obs).json()["id"]
    chained = client.get("/Observation", params={"subject:Patient.family": fam}).json()
    assert [e["resource"]["id"] for e in chained["entry"]] == [oid]
    has = client.get("/Patient", params={"_has:Observation:subject:code": f"http://loinc.org|{code}"}).json()
    assert [e["resource"]["id"] for e in has["entry"]] == [pid]
    composite = client.get("/Observation", params={"code-value-quantity": f"http://loinc.org|{code}$gt100"}).json()
    assert composite["total"] == 1
    assert client.get("/Observation", params={"code-value-quantity": f"http://loinc.org|{code}$lt100"}).json()["total"] == 0
