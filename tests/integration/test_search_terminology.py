"""Token modifiers that need terminology, over HTTP with a real PostgreSQL (R4 search.html#token,
search.html#modifiers): ``:in``, ``:not-in`` (value sets), ``:below``, ``:above`` (is-a)."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import psycopg

from tests.integration.searchdb import insert_indexed
from tests.integration.test_crud import new_patient

OBS_CAT_VS = "http://hl7.org/fhir/ValueSet/observation-category"
OBS_CAT = "http://terminology.hl7.org/CodeSystem/observation-category"
CLINICAL_VS = "http://hl7.org/fhir/ValueSet/condition-clinical"
CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
ROLE_CODE = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"
GENDER = "http://hl7.org/fhir/administrative-gender"


def _uid() -> str:
    return uuid.uuid4().hex[:10]


def _create(client: httpx.Client, resource: dict[str, Any]) -> str:
    r = client.post(f"/{resource['resourceType']}", json=resource)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _ids(client: httpx.Client, path: str, params: dict[str, str]) -> set[str]:
    r = client.get(path, params={**params, "_count": "100"})
    assert r.status_code == 200, r.text
    return {e["resource"]["id"] for e in r.json().get("entry", []) if e["search"]["mode"] == "match"}


def _patient(client: httpx.Client, **changes: Any) -> str:
    return _create(client, new_patient(**changes))


def _observation(
    client: httpx.Client, pid: str, category: list[dict[str, Any]] | None = None, code: dict[str, Any] | None = None
) -> str:
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "code": code or {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": f"Patient/{pid}"},
    }
    if category is not None:
        obs["category"] = category
    return _create(client, obs)


def _condition(client: httpx.Client, pid: str, status: str) -> str:
    return _create(
        client,
        {
            "resourceType": "Condition",
            "clinicalStatus": {"coding": [{"system": CLINICAL, "code": status}]},
            "verificationStatus": {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}
                ]
            },
            "code": {"text": "headache"},
            "subject": {"reference": f"Patient/{pid}"},
        },
    )


def _issue(r: httpx.Response) -> dict[str, Any]:
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["resourceType"] == "OperationOutcome"
    return dict(body["issue"][0])


# -- packaged value sets ---------------------------------------------------------------------------
def test_in_and_not_in_with_a_core_value_set(client: httpx.Client) -> None:
    """search.html#token :in: "the search parameter value is a URI for a value set, and the search
    parameter tests whether the coding is in the specified value set"; :not-in the opposite (a resource
    without the element is not in it)."""
    pid = _patient(client)
    vital = _observation(client, pid, [{"coding": [{"system": OBS_CAT, "code": "vital-signs"}]}])
    lab = _observation(client, pid, [{"coding": [{"system": OBS_CAT, "code": "laboratory"}]}])
    elsewhere = _observation(client, pid, [{"coding": [{"system": "http://example.org/cat", "code": "vital-signs"}]}])
    none = _observation(client, pid)
    q = {"subject": f"Patient/{pid}"}
    assert _ids(client, "/Observation", {**q, "category:in": OBS_CAT_VS}) == {vital, lab}
    assert _ids(client, "/Observation", {**q, "category:not-in": OBS_CAT_VS}) == {elsewhere, none}
    assert _ids(client, "/Observation", {**q, "category:in": OBS_CAT_VS + "|4.0.1"}) == {vital, lab}


def test_in_with_condition_clinical_status(client: httpx.Client) -> None:
    """search.html#token :in on Condition.clinicalStatus (ValueSet/condition-clinical)."""
    pid = _patient(client)
    ids = {s: _condition(client, pid, s) for s in ("active", "relapse", "resolved")}
    q = {"subject": f"Patient/{pid}"}
    assert _ids(client, "/Condition", {**q, "clinical-status:in": CLINICAL_VS}) == set(ids.values())
    assert _ids(client, "/Condition", {**q, "clinical-status:not-in": CLINICAL_VS}) == set()


def test_below_and_above_on_condition_clinical(client: httpx.Client) -> None:
    """search.html#token :below / :above: "the search parameter is a concept with the form
    [system]|[code], and the search parameter tests whether the coding in a resource subsumes / is
    subsumed by the specified search code" (condition-clinical: recurrence, relapse are-a active)."""
    pid = _patient(client)
    ids = {s: _condition(client, pid, s) for s in ("active", "recurrence", "relapse", "resolved")}
    q = {"subject": f"Patient/{pid}"}
    below = _ids(client, "/Condition", {**q, "clinical-status:below": f"{CLINICAL}|active"})
    assert below == {ids["active"], ids["recurrence"], ids["relapse"]}
    above = _ids(client, "/Condition", {**q, "clinical-status:above": f"{CLINICAL}|relapse"})
    assert above == {ids["active"], ids["relapse"]}


def test_below_on_v3_act_code(client: httpx.Client) -> None:
    """search.html#token :below on a hierarchical v3 code system (v3-ActCode, Encounter.class):
    AMB and IMP are-a _ActEncounterCode, comma-separated values OR."""
    pid = _patient(client)

    def encounter(code: str, system: str = ACT_CODE) -> str:
        return _create(
            client,
            {
                "resourceType": "Encounter",
                "status": "finished",
                "class": {"system": system, "code": code},
                "subject": {"reference": f"Patient/{pid}"},
            },
        )

    amb, imp, other = encounter("AMB"), encounter("IMP"), encounter("AMB", "http://example.org/class")
    q = {"subject": f"Patient/{pid}"}
    assert _ids(client, "/Encounter", {**q, "class:below": f"{ACT_CODE}|_ActEncounterCode"}) == {amb, imp}
    assert _ids(client, "/Encounter", {**q, "class:below": f"{ACT_CODE}|AMB"}) == {amb}
    assert _ids(client, "/Encounter", {**q, "class:below": f"{ACT_CODE}|AMB,{ACT_CODE}|IMP"}) == {amb, imp}
    assert _ids(client, "/Encounter", {**q, "class:above": f"{ACT_CODE}|AMB"}) == {amb}
    assert other not in _ids(
        client, "/Encounter", {**q, "class:in": "http://terminology.hl7.org/ValueSet/v3-ActEncounterCode"}
    )


def test_below_and_above_on_v3_role_code(client: httpx.Client) -> None:
    """search.html#token :below / :above on v3-RoleCode (RelatedPerson.relationship): a mother (MTH)
    is a parent (PRN) is a family member (FAMMEMB); a sister (SIS) is not a parent."""
    pid = _patient(client)

    def related(code: str) -> str:
        return _create(
            client,
            {
                "resourceType": "RelatedPerson",
                "patient": {"reference": f"Patient/{pid}"},
                "relationship": [{"coding": [{"system": ROLE_CODE, "code": code}]}],
            },
        )

    mth, sis, prn = related("MTH"), related("SIS"), related("PRN")
    q = {"patient": f"Patient/{pid}"}
    assert _ids(client, "/RelatedPerson", {**q, "relationship:below": f"{ROLE_CODE}|PRN"}) == {mth, prn}
    assert _ids(client, "/RelatedPerson", {**q, "relationship:below": f"{ROLE_CODE}|FAMMEMB"}) == {mth, sis, prn}
    assert _ids(client, "/RelatedPerson", {**q, "relationship:above": f"{ROLE_CODE}|MTH"}) == {mth, prn}


# -- what the server cannot do ----------------------------------------------------------------------
def test_value_set_needing_loinc_is_a_400_naming_parameter_and_value_set(client: httpx.Client) -> None:
    """search.html#token :in "where terminology allows; otherwise" an OperationOutcome:
    ValueSet/observation-codes is all of LOINC, which this server does not have."""
    issue = _issue(client.get("/Observation", params={"code:in": "http://hl7.org/fhir/ValueSet/observation-codes"}))
    assert issue["code"] == "not-supported"
    assert (
        "code:in" in issue["diagnostics"] and "http://hl7.org/fhir/ValueSet/observation-codes" in issue["diagnostics"]
    )
    assert "http://loinc.org" in issue["diagnostics"]


def test_below_in_unknown_hierarchy_is_a_400(client: httpx.Client) -> None:
    """search.html#token :below: the server knows no hierarchy for LOINC, and a bare code has no system."""
    issue = _issue(client.get("/Observation", params={"code:below": "http://loinc.org|8867-4"}))
    assert issue["code"] == "not-supported" and "hierarchy" in issue["diagnostics"]
    assert "code:below" in issue["diagnostics"]
    assert _issue(client.get("/Encounter", params={"class:above": "AMB"}))["code"] == "invalid"
    issue = _issue(client.get("/Encounter", params={"class:below": f"{ACT_CODE}|NOT-A-CODE"}))
    assert issue["code"] == "code-invalid"


def test_unknown_value_set_is_a_400(client: httpx.Client) -> None:
    issue = _issue(client.get("/Patient", params={"gender:in": f"http://example.org/fhir/ValueSet/{_uid()}"}))
    assert issue["code"] == "not-found" and "gender:in" in issue["diagnostics"]


def test_uri_below_and_above_still_work(client: httpx.Client) -> None:
    """search.html#uri :below / :above on uri parameters are unchanged (ValueSet?url:below=)."""
    base = f"http://example.org/fhir/{_uid()}"
    vid = _create(client, {"resourceType": "ValueSet", "url": f"{base}/ValueSet/x", "status": "active"})
    assert _ids(client, "/ValueSet", {"url:below": base}) == {vid}
    assert _ids(client, "/ValueSet", {"url:above": f"{base}/ValueSet/x/more"}) == {vid}


# -- stored ValueSets and CodeSystems -----------------------------------------------------------------
def test_in_with_a_stored_value_set_by_id_url_and_version(client: httpx.Client, db: psycopg.Connection) -> None:
    """search.html#token :in: the value set may be a stored one, named by canonical URL (with |version)
    or by a relative reference ValueSet/[id]."""
    url = f"http://example.org/fhir/ValueSet/not-male-{_uid()}"
    vid = _create(
        client,
        {
            "resourceType": "ValueSet",
            "url": url,
            "version": "1.0",
            "status": "active",
            "compose": {"include": [{"system": GENDER, "concept": [{"code": "female"}, {"code": "other"}]}]},
        },
    )
    fam = f"Fam{_uid()}"
    female = _patient(client, name=[{"family": fam}], gender="female")
    male = _patient(client, name=[{"family": fam}], gender="male")
    nogender = _create(client, {k: v for k, v in new_patient(name=[{"family": fam}]).items() if k != "gender"})
    for ref in (f"ValueSet/{vid}", url, f"{url}|1.0"):
        assert _ids(client, "/Patient", {"family": fam, "gender:in": ref}) == {female}, ref
    assert _ids(client, "/Patient", {"family": fam, "gender:not-in": f"ValueSet/{vid}"}) == {male, nogender}
    assert _issue(client.get("/Patient", params={"gender:in": f"{url}|2.0"}))["code"] == "not-found"
    # POST _search takes the same path
    r = client.post("/Patient/_search", data={"family": fam, "gender:in": url})
    assert {e["resource"]["id"] for e in r.json()["entry"]} == {female}
    row = db.execute("SELECT tenant_id FROM resource WHERE resource_type = 'ValueSet' AND id = %s", (vid,)).fetchone()
    assert row == ("default",)
    # a deleted value set is gone for searches too
    assert client.delete(f"/ValueSet/{vid}").status_code in (200, 204)
    assert _issue(client.get("/Patient", params={"gender:in": f"ValueSet/{vid}"}))["code"] == "not-found"


def test_stored_code_system_gives_in_below_and_above(client: httpx.Client) -> None:
    """A stored CodeSystem with nested concepts (hierarchyMeaning is-a) serves :below / :above, and a
    stored ValueSet's is-a filter over it is expanded for :in."""
    system = f"http://example.org/fhir/CodeSystem/ayur-{_uid()}"
    _create(
        client,
        {
            "resourceType": "CodeSystem",
            "url": system,
            "status": "active",
            "content": "complete",
            "hierarchyMeaning": "is-a",
            "concept": [
                {"code": "dosha", "concept": [{"code": "vata"}, {"code": "pitta"}, {"code": "kapha"}]},
                {"code": "dhatu", "concept": [{"code": "rasa"}]},
            ],
        },
    )
    vs_url = f"http://example.org/fhir/ValueSet/doshas-{_uid()}"
    _create(
        client,
        {
            "resourceType": "ValueSet",
            "url": vs_url,
            "status": "active",
            "compose": {
                "include": [
                    {"system": system, "filter": [{"property": "concept", "op": "descendent-of", "value": "dosha"}]}
                ]
            },
        },
    )
    pid = _patient(client)
    obs = {
        c: _observation(client, pid, code={"coding": [{"system": system, "code": c}]})
        for c in ("dosha", "vata", "rasa")
    }
    q = {"subject": f"Patient/{pid}"}
    assert _ids(client, "/Observation", {**q, "code:below": f"{system}|dosha"}) == {obs["dosha"], obs["vata"]}
    assert _ids(client, "/Observation", {**q, "code:above": f"{system}|vata"}) == {obs["dosha"], obs["vata"]}
    assert _ids(client, "/Observation", {**q, "code:in": vs_url}) == {obs["vata"]}
    assert _ids(client, "/Observation", {**q, "code:not-in": vs_url}) == {obs["dosha"], obs["rasa"]}


def test_conditional_create_criteria_may_use_in(client: httpx.Client) -> None:
    """http.html#ccreate: If-None-Exist criteria are search parameters, :in included."""
    fam = f"Fam{_uid()}"
    first = _patient(client, name=[{"family": fam}], gender="female")
    cond = f"family={fam}&gender:in={GENDER.replace('administrative-gender', 'ValueSet/administrative-gender')}"
    r = client.post("/Patient", json=new_patient(name=[{"family": fam}]), headers={"If-None-Exist": cond})
    assert r.status_code == 200 and r.json()["id"] == first


def test_stored_value_sets_are_tenant_scoped(client: httpx.Client, db: psycopg.Connection) -> None:
    """A ValueSet stored by another tenant is neither found by id nor by URL (multi-tenancy: every
    lookup carries the tenant)."""
    db.execute("INSERT INTO tenant (id, name) VALUES ('other', 'Other tenant') ON CONFLICT DO NOTHING")
    vid, url = f"vs-{_uid()}", f"http://example.org/fhir/ValueSet/other-{_uid()}"
    insert_indexed(
        db,
        "other",
        {
            "resourceType": "ValueSet",
            "id": vid,
            "url": url,
            "status": "active",
            "compose": {"include": [{"system": GENDER, "concept": [{"code": "female"}]}]},
        },
    )
    row = db.execute("SELECT tenant_id FROM resource WHERE resource_type = 'ValueSet' AND id = %s", (vid,)).fetchone()
    assert row == ("other",)
    row = db.execute(
        "SELECT count(*) FROM idx_uri WHERE tenant_id = 'other' AND param = 'url' AND value = %s", (url,)
    ).fetchone()
    assert row == (1,)
    assert _issue(client.get("/Patient", params={"gender:in": f"ValueSet/{vid}"}))["code"] == "not-found"
    assert _issue(client.get("/Patient", params={"gender:in": url}))["code"] == "not-found"
