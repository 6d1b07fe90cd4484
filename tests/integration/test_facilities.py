"""Facility scoping and SMART patient context (README "Tenants and facilities",
fhir_server/auth/visibility.py): a bound user sees its facilities' resources and tenant-wide ones;
a patient-context token its patient's compartment. What may not be seen answers like what does
not exist (404, left out of searches); writes outside the caller's reach are 403."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.conftest import ServerProcess, issue_token, server_env
from tests.integration.test_bulk_export import ASYNC, _lines, _wait
from tests.integration.test_errors import assert_outcome

FACILITY = "https://fhir-server.example.org/fhir/CodeSystem/facility"
LOINC = "http://loinc.org"


def token(database_url: str, tenant: str, *, facilities: list[str] = (), patient: str | None = None) -> str:  # type: ignore[assignment]
    args = [sys.executable, "-m", "fhir_server.cli", "token", "--tenant", tenant, "--role", "admin"]
    for f in facilities:
        args += ["--facility", f]
    if patient:
        args += ["--patient", patient]
    out = subprocess.run(args, env=server_env(DATABASE_URL=database_url), capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


def _client(server: ServerProcess, tenant: str, bearer: str) -> httpx.Client:
    return httpx.Client(base_url=f"{server.base}/{tenant}", timeout=30,
                        headers={"Authorization": f"Bearer {bearer}", "Accept": "application/fhir+json"})


def label(*codes: str) -> dict:
    return {"security": [{"system": FACILITY, "code": c} for c in codes]}


def obs(oid: str | None, patient: str, meta: dict | None = None, code: str = "1234-5") -> dict:
    resource = {"resourceType": "Observation", "status": "final",
                "code": {"coding": [{"system": LOINC, "code": code}]}, "subject": {"reference": f"Patient/{patient}"}}
    if oid is not None:
        resource["id"] = oid
    if meta:
        resource["meta"] = meta
    return resource


@dataclass
class World:
    tenant: str
    admin: httpx.Client
    ward_a: httpx.Client  # bound to Organization/ward-a
    patient_ctx: httpx.Client  # confined to Patient/pat


@pytest.fixture(scope="module")
def world(server: ServerProcess, database_url: str, client: httpx.Client) -> Iterator[World]:
    tenant = f"fac-{uuid.uuid4().hex[:6]}"
    r = client.post("/$tenants", json={"resourceType": "Parameters", "parameter": [
        {"name": "id", "valueString": tenant}, {"name": "name", "valueString": "Facility test"}]})
    assert r.status_code == 201, r.text
    admin = _client(server, tenant, issue_token(database_url, tenant=tenant, role="admin"))
    for resource in [
        {"resourceType": "Organization", "id": "ward-a", "name": "Ward A"},
        {"resourceType": "Organization", "id": "ward-b", "name": "Ward B"},
        {"resourceType": "Patient", "id": "pat", "name": [{"family": "Central"}]},  # registered centrally
        {"resourceType": "Patient", "id": "pat-b", "meta": label("ward-b"), "name": [{"family": "WardB"}]},
        {"resourceType": "Patient", "id": "other", "name": [{"family": "Other"}]},
        obs("obs-a", "pat", label("ward-a")),
        obs("obs-b", "pat", label("ward-b")),
        obs("obs-ab", "pat", label("ward-a", "ward-b")),
        obs("obs-shared", "pat"),
        obs("obs-other", "other", code="9999-9"),
    ]:
        r = admin.put(f"/{resource['resourceType']}/{resource['id']}", json=resource)
        assert r.status_code in (200, 201), r.text
    w = World(
        tenant, admin,
        _client(server, tenant, token(database_url, tenant, facilities=["ward-a"])),
        _client(server, tenant, token(database_url, tenant, patient="pat")),
    )
    yield w
    for c in (w.admin, w.ward_a, w.patient_ctx):
        c.close()


def _ids(bundle: dict, mode: str | None = None) -> set[str]:
    assert bundle["resourceType"] == "Bundle", bundle
    return {
        f"{e['resource']['resourceType']}/{e['resource']['id']}"
        for e in bundle.get("entry", [])
        if mode is None or e.get("search", {}).get("mode") == mode
    }


# ---- facility scoping -------------------------------------------------------------------------------
def test_bound_user_reads_own_and_tenant_wide_not_other_facility(world: World) -> None:
    """Another facility's resource answers exactly like a missing one: 404 not-found.
    http.html#read; security.html, Access Denied Response Handling."""
    c = world.ward_a
    for path in ("/Observation/obs-a", "/Observation/obs-ab", "/Observation/obs-shared", "/Patient/pat"):
        assert c.get(path).status_code == 200, path
    for path in ("/Observation/obs-b", "/Observation/obs-b/_history/1", "/Observation/obs-b/_history",
                 "/Patient/pat-b", "/Observation/obs-b/$meta", "/Observation/obs-b/$validate"):
        missing = c.get(path.replace("obs-b", "no-such-obs").replace("pat-b", "no-such-pat"))
        hidden = c.get(path)
        assert_outcome(hidden, 404, "not-found")
        assert hidden.status_code == missing.status_code, path


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("Observation?subject=Patient/pat", {"obs-a", "obs-ab", "obs-shared"}),
        ("Observation?_id=obs-b", set()),
        ("Observation?_id=obs-a,obs-b", {"obs-a"}),
        ("Observation?_security=" + FACILITY + "|ward-b", {"obs-ab"}),
        ("Observation?subject:Patient.family=WardB", set()),
        ("Patient?_has:Observation:subject:_id=obs-b", set()),
        ("Patient?_has:Observation:subject:_id=obs-a", {"pat"}),
    ],
)
def test_bound_user_search_omits_other_facility(world: World, query: str, expected: set[str]) -> None:
    """search.html: a search silently returns only what the caller may see (ids, chains, _has)."""
    path, _, qs = query.partition("?")
    bundle = world.ward_a.get(f"/{path}?{qs}").json()
    assert {i.split("/")[1] for i in _ids(bundle)} == expected
    assert bundle["total"] == len(expected)


def test_bound_user_includes_and_history_omit_other_facility(world: World) -> None:
    """search.html#include / #revinclude, http.html#history, patient-operation-everything.html, resource-operation-
    meta.html: only what the caller may see (security.html, Access Denied Response Handling)."""
    c = world.ward_a
    bundle = c.get("/Patient", params={"_id": "pat", "_revinclude": "Observation:subject"}).json()
    assert _ids(bundle) == {"Patient/pat", "Observation/obs-a", "Observation/obs-ab", "Observation/obs-shared"}
    bundle = c.get("/Observation", params={"_id": "obs-a", "_include": "*"}).json()
    assert "Organization/ward-b" not in _ids(bundle)
    history = c.get("/Observation/_history", params={"_count": "100"}).json()
    assert "Observation/obs-b" not in _ids(history) and "Observation/obs-a" in _ids(history)
    everything = c.get("/Patient/pat/$everything").json()
    assert "Observation/obs-b" not in _ids(everything) and "Observation/obs-a" in _ids(everything)
    meta = c.get("/Observation/$meta").json()["parameter"][0]["valueMeta"]
    assert {s["code"] for s in meta.get("security", [])} == {"ward-a", "ward-b"}  # obs-ab carries both


def test_bound_user_writes_are_labelled_and_kept_to_its_facilities(world: World) -> None:
    """A create gets the user's facility label; labelling another facility is 403; another
    facility's resource cannot be updated, patched or deleted (404, as if missing).
    security-labels.html (meta.security), http.html#update / #patch / #delete; security.html, Access Denied Response
    Handling."""
    c = world.ward_a
    r = c.post("/Observation", json=obs(None, "pat"))
    assert r.status_code == 201, r.text
    assert r.json()["meta"]["security"] == [{"system": FACILITY, "code": "ward-a"}]
    assert_outcome(c.post("/Observation", json=obs(None, "pat", label("ward-b"))), 403, "forbidden")
    assert_outcome(c.put("/Observation/obs-a", json=obs("obs-a", "pat", label("ward-b"))), 403, "forbidden")
    assert_outcome(c.put("/Observation/obs-b", json=obs("obs-b", "pat", label("ward-a"))), 404, "not-found")
    patch = b'[{"op":"replace","path":"/status","value":"amended"}]'
    r = c.patch("/Observation/obs-b", content=patch, headers={"Content-Type": "application/json-patch+json"})
    assert_outcome(r, 404, "not-found")
    assert_outcome(c.delete("/Observation/obs-b"), 404, "not-found")
    # an update without a label keeps the facility labels of the version it replaces
    r = c.put("/Observation/obs-a", json=obs("obs-a", "pat"))
    assert r.status_code == 200 and r.json()["meta"]["security"] == [{"system": FACILITY, "code": "ward-a"}]
    # a tenant-wide resource stays tenant-wide when a bound user updates it
    r = c.put("/Observation/obs-shared", json=obs("obs-shared", "pat"))
    assert r.status_code == 200 and "security" not in r.json()["meta"]
    # $meta-delete of the facility label keeps it
    body = {"resourceType": "Parameters", "parameter": [{"name": "meta", "valueMeta": label("ward-a")}]}
    r = c.post("/Observation/obs-a/$meta-delete", json=body)
    assert r.status_code == 200 and r.json()["parameter"][0]["valueMeta"]["security"][0]["code"] == "ward-a"
    assert world.admin.get("/Observation/obs-b").json()["status"] == "final"


def test_bound_user_conditional_and_transaction_do_not_match_other_facility(world: World) -> None:
    """http.html#cdelete: conditional criteria match only visible resources; http.html#trules: a conditional reference
    matching nothing visible is 412."""
    c = world.ward_a
    r = c.delete("/Observation", params={"_id": "obs-b"})
    assert r.status_code in (200, 204)
    assert world.admin.get("/Observation/obs-b").status_code == 200
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [{
        "request": {"method": "POST", "url": "Observation"},
        "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "t"},
                     "subject": {"reference": "Patient?family=WardB"}},
    }]}
    assert_outcome(c.post("", json=bundle), 412, "conflict")


def test_bound_user_bulk_export_has_only_visible(world: World) -> None:
    """Bulk Data Access IG export.html#response---complete-status: the files hold only what the caller may read."""
    c = world.ward_a
    r = c.get("/$export", params={"_type": "Observation"}, headers=ASYNC)
    assert r.status_code == 202, r.text
    done = _wait(c, r.headers["Content-Location"])
    assert done.status_code == 200, done.text
    ids = {x["id"] for x in _lines(c, done.json()).get("Observation", [])}
    assert "obs-b" not in ids and {"obs-a", "obs-ab", "obs-shared"} <= ids


# ---- SMART patient context ------------------------------------------------------------------------
def test_patient_context_sees_only_its_compartment(world: World) -> None:
    """SMART App Launch scopes-and-launch-context.html (launch/patient, patient/ scopes): only the Patient's compartment
    (compartmentdefinition-patient.html); the rest answers 404 (security.html, Access Denied Response Handling)."""
    c = world.patient_ctx
    assert c.get("/Patient/pat").status_code == 200
    assert c.get("/Observation/obs-b").status_code == 200  # facility labels do not narrow this token
    for path in ("/Patient/other", "/Observation/obs-other", "/Organization/ward-a", "/Patient/other/$everything"):
        assert_outcome(c.get(path), 404, "not-found")
    assert _ids(c.get("/Patient").json()) == {"Patient/pat"}
    assert "Observation/obs-other" not in _ids(c.get("/Observation").json())
    assert _ids(c.get("/Observation", params={"code": "9999-9"}).json()) == set()
    everything = _ids(c.get("/Patient/pat/$everything").json())
    assert "Observation/obs-a" in everything and not any(i.startswith("Organization/") for i in everything)


def test_patient_context_writes_only_into_its_compartment(world: World) -> None:
    """SMART App Launch scopes-and-launch-context.html (patient/ scopes): writes only into the Patient's compartment
    (compartmentdefinition-patient.html); others are 403."""
    c = world.patient_ctx
    r = c.post("/Observation", json=obs(None, "pat"))
    assert r.status_code == 201, r.text
    assert_outcome(c.post("/Observation", json=obs(None, "other")), 403, "forbidden")
    assert_outcome(c.post("/Organization", json={"resourceType": "Organization", "name": "x"}), 403, "forbidden")
