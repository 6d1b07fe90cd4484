"""Search result parameters over HTTP (https://hl7.org/fhir/R4/search.html#return): _sort, keyset
paging, _total, _count, _include/_revinclude, system search and the self link."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import psycopg

TAG_SYSTEM = "http://example.org/test-run"


def _tag() -> str:
    return uuid.uuid4().hex[:12]


def _post(client: httpx.Client, resource: dict[str, Any], tag: str) -> str:
    resource = {**resource, "meta": {"tag": [{"system": TAG_SYSTEM, "code": tag}]}}
    r = client.post(f"/{resource['resourceType']}", json=resource)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _patient(client: httpx.Client, tag: str, **fields: Any) -> str:
    return _post(client, {"resourceType": "Patient", **fields}, tag)


def _ids(bundle: dict[str, Any], mode: str = "match") -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == mode]


def _link(bundle: dict[str, Any], relation: str) -> str | None:
    return next((lk["url"] for lk in bundle["link"] if lk["relation"] == relation), None)


def _query(url: str) -> list[tuple[str, str]]:
    return parse_qsl(urlsplit(url).query)


def _search(client: httpx.Client, path: str, params: list[tuple[str, str]] | dict[str, str], **headers: str) -> dict[str, Any]:
    r = client.get(path, params=params, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


# -- _sort ------------------------------------------------------------------------------------

def test_sort_string_lowest_ascending_highest_descending_missing_last(client: httpx.Client) -> None:
    """search.html#sort: several values sort by the lowest (asc) / highest (desc); no value sorts last."""
    tag = _tag()
    a = _patient(client, tag, name=[{"family": "Bravo"}, {"family": "Zulu"}])  # lowest B, highest Z
    b = _patient(client, tag, name=[{"family": "Charlie"}])
    c = _patient(client, tag, name=[{"family": "alpha"}])  # normalised: case-insensitive
    none = _patient(client, tag, gender="male")
    tagq = ("_tag", f"{TAG_SYSTEM}|{tag}")
    assert _ids(_search(client, "/Patient", [tagq, ("_sort", "family")])) == [c, a, b, none]
    assert _ids(_search(client, "/Patient", [tagq, ("_sort", "-family")])) == [a, b, c, none]


def test_sort_several_keys_date_and_id_tiebreak(client: httpx.Client) -> None:
    """search.html#sort: several comma-separated keys, '-' descending, ties broken by id."""
    tag = _tag()
    ids = {
        "x1": _patient(client, tag, birthDate="1980-01-01", gender="male"),
        "x2": _patient(client, tag, birthDate="1980-01-01", gender="female"),
        "y": _patient(client, tag, birthDate="1990-05-05", gender="male"),
        "z": _patient(client, tag, gender="female"),
    }
    tagq = ("_tag", f"{TAG_SYSTEM}|{tag}")
    got = _ids(_search(client, "/Patient", [tagq, ("_sort", "-birthdate,gender")]))
    assert got == [ids["y"], ids["x2"], ids["x1"], ids["z"]]
    got = _ids(_search(client, "/Patient", [tagq, ("_sort", "birthdate,-_id")]))
    assert got == [*sorted([ids["x1"], ids["x2"]], reverse=True), ids["y"], ids["z"]]
    # no other key: id ascending is the stable order
    assert _ids(_search(client, "/Patient", [tagq, ("_sort", "_id")])) == sorted(ids.values())


def test_sort_quantity_reference_token_and_last_updated(client: httpx.Client) -> None:
    """search.html#sort: quantity (value), reference (Type/id), token (code) and _lastUpdated keys."""
    tag = _tag()
    p1, p2 = _patient(client, tag), _patient(client, tag)
    first, second = sorted([p1, p2])

    def obs(value: float, subject: str, code: str) -> str:
        return _post(client, {"resourceType": "Observation", "status": "final", "subject": {"reference": f"Patient/{subject}"},
                              "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
                              "valueQuantity": {"value": value, "unit": "mmHg"}}, tag)

    o1, o2, o3 = obs(120, second, "b"), obs(80.5, first, "c"), obs(95, second, "a")
    tagq = ("_tag", f"{TAG_SYSTEM}|{tag}")
    assert _ids(_search(client, "/Observation", [tagq, ("_sort", "value-quantity")])) == [o2, o3, o1]
    assert _ids(_search(client, "/Observation", [tagq, ("_sort", "-value-quantity")])) == [o1, o3, o2]
    assert _ids(_search(client, "/Observation", [tagq, ("_sort", "code")])) == [o3, o1, o2]
    assert _ids(_search(client, "/Observation", [tagq, ("_sort", "subject,-value-quantity")])) == [o2, o1, o3]
    assert _ids(_search(client, "/Observation", [tagq, ("_sort", "-_lastUpdated")])) == [o3, o2, o1]
    assert _ids(_search(client, "/Observation", [tagq, ("_sort", "_lastUpdated")])) == [o1, o2, o3]


def test_sort_unknown_parameter_warns_or_strict_400(client: httpx.Client) -> None:
    """search.html#sort and #errors: an unknown sort key is ignored with a warning; strict → 400."""
    tag = _tag()
    _patient(client, tag)
    b = _search(client, "/Patient", [("_tag", f"{TAG_SYSTEM}|{tag}"), ("_sort", "shoe-size,-_id")])
    outcome = [e["resource"] for e in b["entry"] if e["search"]["mode"] == "outcome"]
    assert outcome and "shoe-size" in outcome[0]["issue"][0]["diagnostics"]
    assert ("_sort", "-_id") in _query(_link(b, "self") or "")
    r = client.get("/Patient", params={"_sort": "shoe-size"}, headers={"Prefer": "handling=strict"})
    assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome"


# -- paging -----------------------------------------------------------------------------------

def _walk(client: httpx.Client, url: str, between: Any = None, relation: str = "next") -> list[list[str]]:
    pages = []
    next_url: str | None = url
    while next_url:
        b = client.get(next_url).json()
        pages.append(_ids(b))
        if between is not None:
            between(len(pages))
        next_url = _link(b, relation)
        assert len(pages) < 50
    return pages


def _walk_while_changing(client: httpx.Client, sort: str | None) -> None:
    tag = _tag()
    stable = [_patient(client, tag, name=[{"family": f"F{i % 4}"}], birthDate=f"19{50 + i % 3}-01-01") for i in range(10)]
    doomed = [_patient(client, tag, name=[{"family": "F2"}], birthDate="1951-01-01") for _ in range(4)]

    def churn(page_no: int) -> None:
        if page_no <= len(doomed):
            client.delete(f"/Patient/{doomed[page_no - 1]}")
            _patient(client, tag, name=[{"family": "F1"}], birthDate="1951-01-01")
            _patient(client, tag, name=[{"family": "A0"}], birthDate="1999-01-01")

    params = f"_tag={TAG_SYSTEM}|{tag}&_count=3" + (f"&_sort={sort}" if sort else "")
    seen = [i for page in _walk(client, f"/Patient?{params}", churn) for i in page]
    assert len(seen) == len(set(seen)), f"repeated with _sort={sort}"
    assert set(stable) <= set(seen), f"lost with _sort={sort}"


def test_paging_stays_correct_while_data_changes(client: httpx.Client) -> None:
    """http.html#paging / search.html#count: keyset pages over the sort keys; resources created
    and deleted between pages cause no repetition and no loss of those that existed throughout."""
    for sort in (None, "family", "-birthdate", "-family,_lastUpdated"):
        _walk_while_changing(client, sort)


def test_next_previous_first_links(client: httpx.Client) -> None:
    """http.html#paging: first, next and previous links; walking back gives the same pages."""
    tag = _tag()
    for i in range(6):
        _patient(client, tag, name=[{"family": f"N{i}"}])
    for _ in range(2):  # no value: last, ordered by id, in both directions
        _patient(client, tag)
    b = _search(client, "/Patient", {"_tag": f"{TAG_SYSTEM}|{tag}", "_count": "3", "_sort": "family"})
    assert _link(b, "previous") is None and _link(b, "first") and _link(b, "next")
    forward = _walk(client, _link(b, "first") or "")
    assert [len(p) for p in forward] == [3, 3, 2]
    last = client.get(_link(client.get(_link(b, "next") or "").json(), "next") or "").json()
    backward = _walk(client, _link(last, "self") or "", relation="previous")
    assert backward == list(reversed(forward))
    assert client.get("/Patient", params={"_page": "not-a-token"}).status_code == 400
    # a token of another sort order is refused, not misread
    tok = dict(_query(_link(b, "next") or ""))["_page"]
    assert client.get("/Patient", params={"_page": tok, "_sort": "family,birthdate"}).status_code == 400


def test_total_modes_and_count_cap(client: httpx.Client) -> None:
    """search.html#total (_total=none|estimate|accurate) and #count (capped at max_page_size)."""
    tag = _tag()
    for _ in range(3):
        _patient(client, tag)
    tagq = ("_tag", f"{TAG_SYSTEM}|{tag}")
    assert _search(client, "/Patient", [tagq])["total"] == 3
    assert _search(client, "/Patient", [tagq, ("_total", "accurate")])["total"] == 3
    assert "total" not in _search(client, "/Patient", [tagq, ("_total", "none")])
    est = _search(client, "/Patient", [tagq, ("_total", "estimate")])
    assert isinstance(est["total"], int) and est["total"] >= 0
    b = _search(client, "/Patient", [tagq, ("_count", "100000")])
    assert ("_count", "1000") in _query(_link(b, "self") or "") and len(_ids(b)) == 3
    assert client.get("/Patient", params={"_count": "x"}).status_code == 400


def test_self_link_shows_only_what_was_applied(client: httpx.Client) -> None:
    """search.html#return / #errors: the self link lists the parameters used, not ignored ones."""
    tag = _tag()
    _patient(client, tag)
    b = _search(client, "/Patient", [("_tag", f"{TAG_SYSTEM}|{tag}"), ("shoe-size", "9"), ("_contained", "true"),
                                     ("_sort", "-_lastUpdated"), ("_count", "5"), ("gender", "")])
    q = _query(_link(b, "self") or "")
    assert [k for k, _ in q] == ["_tag", "_sort", "_count"]
    r = client.post("/Patient/_search", data={"_tag": f"{TAG_SYSTEM}|{tag}", "_count": "1"})
    assert ("_count", "1") in _query(_link(r.json(), "self") or "")  # POST body params too


# -- _include / _revinclude --------------------------------------------------------------------

def _clinic(client: httpx.Client, tag: str) -> dict[str, str]:
    org = _post(client, {"resourceType": "Organization", "name": "Clinic"}, tag)
    gp = _post(client, {"resourceType": "Practitioner", "name": [{"family": "Gp"}]}, tag)
    p1 = _patient(client, tag, managingOrganization={"reference": f"Organization/{org}"},
                  generalPractitioner=[{"reference": f"Practitioner/{gp}"}])
    p2 = _patient(client, tag, managingOrganization={"reference": f"Organization/{org}"})
    o1 = _post(client, {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                        "subject": {"reference": f"Patient/{p1}"}, "performer": [{"reference": f"Practitioner/{gp}"}]}, tag)
    return {"org": org, "gp": gp, "p1": p1, "p2": p2, "o1": o1}


def test_include_and_target_type(client: httpx.Client) -> None:
    """search.html#include: _include=Type:param[:Target], each included resource once, mode include."""
    tag = _tag()
    c = _clinic(client, tag)
    tagq = ("_tag", f"{TAG_SYSTEM}|{tag}")
    b = _search(client, "/Patient", [tagq, ("_include", "Patient:organization")])
    assert sorted(_ids(b)) == sorted([c["p1"], c["p2"]]) and _ids(b, "include") == [c["org"]]
    assert b["total"] == 2
    b = _search(client, "/Patient", [tagq, ("_include", "Patient:general-practitioner:Practitioner"),
                                     ("_include", "Patient:organization")])
    assert sorted(_ids(b, "include")) == sorted([c["gp"], c["org"]])
    b = _search(client, "/Patient", [tagq, ("_include", "Patient:general-practitioner:PractitionerRole")])
    assert _ids(b, "include") == []
    b = _search(client, "/Patient", [tagq, ("_include", "*")])
    assert sorted(_ids(b, "include")) == sorted([c["gp"], c["org"]])


def test_revinclude_iterate_and_deleted(client: httpx.Client) -> None:
    """search.html#revinclude and :iterate; deleted resources are never included."""
    tag = _tag()
    c = _clinic(client, tag)
    tagq = ("_tag", f"{TAG_SYSTEM}|{tag}")
    b = _search(client, "/Patient", [tagq, ("_id", c["p1"]), ("_revinclude", "Observation:subject")])
    assert _ids(b) == [c["p1"]] and _ids(b, "include") == [c["o1"]]
    # Organization <- Patient (revinclude) <- Observation (revinclude:iterate) -> Practitioner (include:iterate)
    b = _search(client, "/Organization", [tagq, ("_revinclude", "Patient:organization"),
                                          ("_revinclude:iterate", "Observation:subject"),
                                          ("_include:iterate", "Observation:performer")])
    assert _ids(b) == [c["org"]]
    assert sorted(_ids(b, "include")) == sorted([c["p1"], c["p2"], c["o1"], c["gp"]])
    # without :iterate the second hop does not happen
    b = _search(client, "/Organization", [tagq, ("_revinclude", "Patient:organization"),
                                          ("_revinclude", "Observation:subject")])
    assert sorted(_ids(b, "include")) == sorted([c["p1"], c["p2"]])
    # _revinclude=*: everything that references a match, through any reference parameter
    b = _search(client, "/Practitioner", [tagq, ("_revinclude", "*")])
    assert _ids(b) == [c["gp"]] and sorted(_ids(b, "include")) == sorted([c["p1"], c["o1"]])
    client.delete(f"/Organization/{c['org']}")
    b = _search(client, "/Patient", [tagq, ("_include", "Patient:organization")])
    assert _ids(b, "include") == []


def test_include_invalid_is_warning(client: httpx.Client) -> None:
    """search.html#include: an _include naming no reference parameter of the searched type is ignored."""
    b = _search(client, "/Patient", [("_include", "Patient:family"), ("_include", "Observation:subject"), ("_count", "1")])
    outcome = [e["resource"] for e in b.get("entry", []) if e["search"]["mode"] == "outcome"]
    assert len(outcome[0]["issue"]) == 2
    assert "_include" not in [k for k, _ in _query(_link(b, "self") or "")]
    r = client.get("/Patient", params={"_include": "Patient:family"}, headers={"Prefer": "handling=strict"})
    assert r.status_code == 400


def test_include_cap_warns(client: httpx.Client, database_url: str) -> None:
    """search.html#include: the number of included resources per page is capped, with a warning."""
    from fhir_server.search.include import load_includes, parse_includes
    from fhir_server.storage.repository import StoredVersion

    tag = _tag()
    org = _post(client, {"resourceType": "Organization", "name": "Big"}, tag)
    pats = [_patient(client, tag, managingOrganization={"reference": f"Organization/{org}"}) for _ in range(3)]
    specs, warnings = parse_includes([("_revinclude", "Patient:organization")], ["Organization"])
    assert not warnings
    match = StoredVersion("Organization", org, 1, None, False, "{}")  # type: ignore[arg-type]

    async def run(cap: int) -> tuple[list[StoredVersion], Any]:
        async with await psycopg.AsyncConnection.connect(database_url) as conn:
            return await load_includes(conn, "default", [match], specs, cap)

    included, issue = asyncio.run(run(2))
    assert len(included) == 2 and issue is not None and issue.severity == "warning"
    included, issue = asyncio.run(run(3))
    assert sorted(v.id for v in included) == sorted(pats) and issue is None
    # another tenant sees nothing
    async def other() -> list[StoredVersion]:
        async with await psycopg.AsyncConnection.connect(database_url) as conn:
            return (await load_includes(conn, "elsewhere", [match], specs))[0]
    assert asyncio.run(other()) == []


# -- system search ----------------------------------------------------------------------------

def test_system_search_with_type_and_common_parameters(client: httpx.Client) -> None:
    """search.html#all / http.html#search: GET [base]?_type=A,B with parameters common to the types."""
    tag = _tag()
    pid = _patient(client, tag)
    oid = _post(client, {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}, tag)
    _post(client, {"resourceType": "Organization", "name": "Other"}, tag)
    b = _search(client, "/", [("_type", "Patient,Observation"), ("_tag", f"{TAG_SYSTEM}|{tag}"),
                              ("_lastUpdated", "ge2000-01-01"), ("_sort", "_lastUpdated")])
    assert _ids(b) == [pid, oid] and b["total"] == 2
    assert {e["resource"]["resourceType"] for e in b["entry"]} == {"Patient", "Observation"}
    # 'gender' is not common to Patient and Observation: ignored, reported, dropped from self
    b = _search(client, "/", [("_type", "Patient,Observation"), ("_tag", f"{TAG_SYSTEM}|{tag}"), ("gender", "male")])
    assert b["total"] == 2 and "gender" not in dict(_query(_link(b, "self") or ""))
    r = client.get("/", params={"_type": "Patient,Observation", "gender": "male"}, headers={"Prefer": "handling=strict"})
    assert r.status_code == 400
    assert client.get("/", params={"_type": "Nonsense"}).status_code == 400


def test_system_search_without_type(client: httpx.Client) -> None:
    """search.html#all: without _type only _id, _lastUpdated, _tag, _profile, _security, _source."""
    tag = _tag()
    ids = {_patient(client, tag), _post(client, {"resourceType": "Organization", "name": "O"}, tag)}
    b = _search(client, "/", [("_tag", f"{TAG_SYSTEM}|{tag}"), ("_count", "1")])
    assert b["total"] == 2 and len(_ids(b)) == 1
    seen = [i for page in _walk(client, _link(b, "self") or "") for i in page]
    assert set(seen) == ids and len(seen) == 2
    b = _search(client, "/", [("_tag", f"{TAG_SYSTEM}|{tag}"), ("name", "O")])
    assert b["total"] == 2 and any(e["search"]["mode"] == "outcome" for e in b["entry"])
