"""Roles × interactions × operations, intersected with SMART scopes (README "Roles and permissions",
fhir_server/auth/permissions.py, fhir_server/api/authorize.py), over real HTTP on a real PostgreSQL.

A refusal is 403 with an OperationOutcome (``forbidden``) naming what is missing; an allowed request
is anything else but a server error (the target may not exist: 404 is an allowed answer).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import psycopg
import pytest

from tests.conftest import ServerProcess, issue_token, server_env

ROLES = ("admin", "doctor", "nurse", "receptionist", "lab-technician", "radiologist", "pharmacist",
         "billing-clerk", "device", "auditor")


def _headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"}


@pytest.fixture(scope="module")
def tokens(database_url: str, server: ServerProcess) -> dict[str, str]:
    """One token per role (``fhir-server token --role R``), issued side by side."""
    def one(role: str) -> str:
        return issue_token(database_url, tenant="default", role=role, subject=f"{role}-{uuid.uuid4().hex[:6]}")

    with ThreadPoolExecutor(4) as pool:
        return dict(zip(ROLES, pool.map(one, ROLES), strict=True))


@pytest.fixture(scope="module")
def seed(client: httpx.Client) -> dict[str, str]:
    """A patient with an observation, a prescription, a condition and an encounter naming it."""
    tag = uuid.uuid4().hex[:10]
    pid = client.post("/Patient", json={"resourceType": "Patient", "name": [{"family": f"Perm{tag}"}]}).json()["id"]
    subject = {"reference": f"Patient/{pid}"}
    oid = client.post("/Observation", json={
        "resourceType": "Observation", "status": "final", "code": {"text": "pulse"}, "subject": subject,
    }).json()["id"]
    mid = client.post("/MedicationRequest", json={
        "resourceType": "MedicationRequest", "status": "active", "intent": "order", "subject": subject,
        "medicationCodeableConcept": {"text": "paracetamol"},
    }).json()["id"]
    cid = client.post("/Condition", json={"resourceType": "Condition", "subject": subject, "code": {"text": "fever"}}).json()["id"]
    eid = client.post("/Encounter", json={
        "resourceType": "Encounter", "status": "arrived", "class": {"code": "AMB"}, "subject": subject,
        "diagnosis": [{"condition": {"reference": f"Condition/{cid}"}}],
    }).json()["id"]
    client.post("/Observation", json={
        "resourceType": "Observation", "status": "final", "code": {"text": "temperature"}, "subject": subject,
        "encounter": {"reference": f"Encounter/{eid}"},
    }).raise_for_status()
    return {"patient": pid, "observation": oid, "medreq": mid, "condition": cid, "encounter": eid, "tag": tag}


def _observation(pid: str) -> dict[str, Any]:
    return {"resourceType": "Observation", "status": "preliminary", "code": {"text": "bp"}, "subject": {"reference": f"Patient/{pid}"}}


# case → (method, path template, body template, roles allowed)
CASES: dict[str, tuple[str, str, Any, set[str]]] = {
    "read Patient": ("GET", "/Patient/{patient}", None, set(ROLES) - {"auditor"}),
    "search Observation": ("GET", "/Observation?subject=Patient/{patient}", None,
                           {"admin", "doctor", "nurse", "lab-technician", "radiologist", "pharmacist", "device"}),
    "create Observation": ("POST", "/Observation", "observation",
                           {"admin", "doctor", "nurse", "lab-technician", "radiologist", "device"}),
    "delete Patient": ("DELETE", "/Patient/does-not-exist-{tag}", None, {"admin"}),
    "read MedicationRequest": ("GET", "/MedicationRequest/{medreq}", None, {"admin", "doctor", "nurse", "pharmacist"}),
    "history Patient instance": ("GET", "/Patient/{patient}/_history", None,
                                 {"admin", "doctor", "nurse", "receptionist", "lab-technician", "radiologist",
                                  "pharmacist", "billing-clerk"}),
    "vread Condition": ("GET", "/Condition/{condition}/_history/1", None, {"admin", "doctor", "nurse", "radiologist", "pharmacist"}),
    "create Appointment": ("POST", "/Appointment", "appointment", {"admin", "receptionist", "device"}),
    "update Coverage": ("PUT", "/Coverage/cov-{tag}", "coverage", {"admin", "receptionist", "billing-clerk"}),
    "create ChargeItem": ("POST", "/ChargeItem", "chargeitem", {"admin", "billing-clerk"}),
    "create MedicationDispense": ("POST", "/MedicationDispense", "dispense", {"admin", "pharmacist"}),
    "update ImagingStudy": ("PUT", "/ImagingStudy/img-{tag}", "imaging", {"admin", "radiologist", "device"}),
    "search AuditEvent": ("GET", "/AuditEvent?_count=1", None, {"auditor"}),  # admin: separation of duties (audit/access.py)
    "type history Encounter": ("GET", "/Encounter/_history?_count=1", None, set(ROLES) - {"device", "auditor"}),
    "system search Patient,Observation": ("GET", "/?_type=Patient,Observation&_count=1", None,
                                          {"admin", "doctor", "nurse", "lab-technician", "radiologist", "pharmacist", "device"}),
    "system history": ("GET", "/_history?_count=1", None, {"admin"}),
    "$everything Patient": ("GET", "/Patient/{patient}/$everything", None, set(ROLES) - {"auditor"}),
    "$meta Observation": ("GET", "/Observation/{observation}/$meta", None,
                          {"admin", "doctor", "nurse", "lab-technician", "radiologist", "pharmacist", "device"}),
    "$reindex-status": ("GET", "/$reindex-status?job=" + str(uuid.UUID(int=1)), None, {"admin"}),
    "$export Patient": ("GET", "/Patient/$export", None, {"admin"}),
    "$roles": ("GET", "/$roles?role=nurse", None, {"admin"}),
}


def _bodies(seed: dict[str, str]) -> dict[str, dict[str, Any]]:
    pid, tag = seed["patient"], seed["tag"]
    subject = {"reference": f"Patient/{pid}"}
    return {
        "observation": _observation(pid),
        "appointment": {"resourceType": "Appointment", "status": "proposed",
                        "participant": [{"status": "needs-action", "actor": subject}]},
        "coverage": {"resourceType": "Coverage", "id": f"cov-{tag}", "status": "active", "beneficiary": subject,
                     "payor": [subject]},
        "chargeitem": {"resourceType": "ChargeItem", "status": "billable", "code": {"text": "consultation"}, "subject": subject},
        "dispense": {"resourceType": "MedicationDispense", "status": "completed",
                     "medicationCodeableConcept": {"text": "paracetamol"}, "subject": subject},
        "imaging": {"resourceType": "ImagingStudy", "id": f"img-{tag}", "status": "available", "subject": subject},
    }


MATRIX = [(role, case) for case in CASES for role in ROLES]


@pytest.mark.parametrize(("role", "case"), MATRIX, ids=[f"{r}:{c}" for r, c in MATRIX])
def test_authorization_matrix(
    server: ServerProcess, tokens: dict[str, str], seed: dict[str, str], role: str, case: str
) -> None:
    """SMART App Launch scopes-and-launch-context.html intersected with the roles (README "Roles and permissions"); a
    refusal is RFC 9110 §15.5.4 403 with an OperationOutcome, issue.code forbidden (operationoutcome.html)."""
    method, template, body_key, allowed = CASES[case]
    path = template.format(**seed)
    body = _bodies(seed)[body_key] if body_key else None
    headers = _headers(tokens[role])
    if case.startswith("$export"):
        headers["Prefer"] = "respond-async"
    r = httpx.request(method, server.base + path, json=body, headers=headers, timeout=30)
    if role in allowed:
        assert r.status_code != 403 and r.status_code < 500, f"{role} {case}: {r.status_code} {r.text[:300]}"
    else:
        assert r.status_code == 403, f"{role} {case}: {r.status_code} {r.text[:300]}"
        issue = r.json()["issue"][0]
        assert issue["code"] == "forbidden"


def test_refusal_names_role_interaction_and_type_and_is_audited(
    server: ServerProcess, tokens: dict[str, str], db: psycopg.Connection
) -> None:
    """operationoutcome.html (issue.code forbidden, diagnostics naming what is missing); auditevent.html: the refusal is
    audited (outcome 4)."""
    rid = f"perm-{uuid.uuid4().hex[:12]}"
    r = httpx.delete(f"{server.base}/Patient/x1", headers={**_headers(tokens["doctor"]), "X-Request-Id": rid})
    assert r.status_code == 403
    assert "doctor may not delete Patient" in r.json()["issue"][0]["diagnostics"]
    r = httpx.post(f"{server.base}/$reindex", headers=_headers(tokens["nurse"]))
    assert r.status_code == 403 and "nurse may not invoke $reindex at system level" in r.text
    deadline = time.monotonic() + 15
    rows: list[tuple[Any, ...]] = []
    while not rows and time.monotonic() < deadline:
        rows = db.execute("SELECT status, outcome FROM audit_event WHERE request_id = %s", (rid,)).fetchall()
        time.sleep(0.1)
    assert rows == [(403, "4")]


# ---- SMART scopes ∩ role --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def scoped(database_url: str, server: ServerProcess) -> Any:
    made: dict[tuple[str, str], str] = {}

    def token(role: str, scope: str) -> dict[str, str]:
        if (role, scope) not in made:
            made[(role, scope)] = issue_token(database_url, tenant="default", role=role, subject=f"app-{role}", scope=scope)
        return _headers(made[(role, scope)])

    return token


def test_patient_scope_v2_reads_but_cannot_create(server: ServerProcess, scoped: Any, seed: dict[str, str]) -> None:
    """SMART App Launch v2 scopes-and-launch-context.html (patient/Observation.rs: read and search, no create)."""
    h = scoped("doctor", "openid fhirUser launch/patient patient/Observation.rs")
    assert httpx.get(f"{server.base}/Observation", params={"subject": f"Patient/{seed['patient']}"}, headers=h).status_code == 200
    r = httpx.post(f"{server.base}/Observation", json=_observation(seed["patient"]), headers=h)
    assert r.status_code == 403
    assert "scopes" in r.json()["issue"][0]["diagnostics"] and "create Observation" in r.text
    assert httpx.get(f"{server.base}/Condition/{seed['condition']}", headers=h).status_code == 403


def test_user_wildcard_cruds_does_not_widen_the_role(server: ServerProcess, scoped: Any, seed: dict[str, str]) -> None:
    """SMART App Launch scopes-and-launch-context.html (user/*.cruds): scopes narrow the role, never widen it."""
    h = scoped("nurse", "user/*.cruds")
    r = httpx.delete(f"{server.base}/Patient/{seed['patient']}", headers=h)
    assert r.status_code == 403 and "nurse may not delete Patient" in r.text
    assert httpx.post(f"{server.base}/Observation", json=_observation(seed["patient"]), headers=h).status_code == 201


def test_v1_scopes(server: ServerProcess, scoped: Any, seed: dict[str, str]) -> None:
    """SMART App Launch scopes-and-launch-context.html, SMART v1 scope syntax (.read / .write); openid fhirUser alone
    grants no data."""
    read_only = scoped("doctor", "user/Observation.read")
    assert httpx.get(f"{server.base}/Observation/{seed['observation']}", headers=read_only).status_code == 200
    assert httpx.post(f"{server.base}/Observation", json=_observation(seed["patient"]), headers=read_only).status_code == 403
    both = scoped("doctor", "user/*.read user/*.write")
    assert httpx.post(f"{server.base}/Observation", json=_observation(seed["patient"]), headers=both).status_code == 201
    nothing = scoped("admin", "openid fhirUser")
    assert httpx.get(f"{server.base}/Patient/{seed['patient']}", headers=nothing).status_code == 403


def test_system_read_scope_is_read_only_even_for_admin(server: ServerProcess, scoped: Any, seed: dict[str, str]) -> None:
    """SMART App Launch scopes-and-launch-context.html / backend-services.html (system/*.read): reads only, even for an
    admin."""
    h = scoped("admin", "system/*.read")
    assert httpx.get(f"{server.base}/Patient/{seed['patient']}", headers=h).status_code == 200
    assert httpx.delete(f"{server.base}/Patient/nope-{seed['tag']}", headers=h).status_code == 403
    assert httpx.post(f"{server.base}/$reindex", headers=h).status_code == 403  # state-changing: needs u


# ---- bundles --------------------------------------------------------------------------------------
def _bundle(kind: str, seed: dict[str, str], marker: str) -> dict[str, Any]:
    obs = _observation(seed["patient"])
    obs["identifier"] = [{"system": "urn:test:perm", "value": marker}]
    return {"resourceType": "Bundle", "type": kind, "entry": [
        {"resource": obs, "request": {"method": "POST", "url": "Observation"}},
        {"request": {"method": "DELETE", "url": f"Patient/{seed['patient']}"}},
        {"request": {"method": "GET", "url": f"MedicationRequest/{seed['medreq']}"}},
    ]}


def test_transaction_with_a_forbidden_entry_fails_whole_naming_it(
    server: ServerProcess, tokens: dict[str, str], seed: dict[str, str], client: httpx.Client
) -> None:
    """http.html#transaction: all or nothing; one forbidden entry fails the whole Bundle, named in
    OperationOutcome.issue.expression."""
    marker = uuid.uuid4().hex
    r = httpx.post(server.base, json=_bundle("transaction", seed, marker), headers=_headers(tokens["lab-technician"]))
    assert r.status_code == 403, r.text
    issue = r.json()["issue"][0]
    assert issue["expression"][0].startswith("Bundle.entry[1]")
    assert "lab-technician may not delete Patient" in issue["diagnostics"]
    assert client.get("/Observation", params={"identifier": f"urn:test:perm|{marker}"}).json().get("total") == 0


def test_batch_refuses_only_the_forbidden_entries(
    server: ServerProcess, tokens: dict[str, str], seed: dict[str, str]
) -> None:
    """http.html#batch: entries are independent; the forbidden ones answer 403 with Bundle.entry.response.outcome."""
    r = httpx.post(server.base, json=_bundle("batch", seed, uuid.uuid4().hex), headers=_headers(tokens["lab-technician"]))
    assert r.status_code == 200, r.text
    statuses = [e["response"]["status"].split()[0] for e in r.json()["entry"]]
    assert statuses == ["201", "403", "403"]  # lab technicians read no prescriptions
    outcome = r.json()["entry"][1]["response"]["outcome"]
    assert outcome["issue"][0]["code"] == "forbidden"


# ---- includes and $everything ---------------------------------------------------------------------
def test_includes_of_types_the_caller_may_not_read_are_dropped(
    server: ServerProcess, tokens: dict[str, str], seed: dict[str, str], client: httpx.Client
) -> None:
    """search.html#include / #revinclude: included resources of types the caller may not read are left out."""
    params = [("_id", seed["encounter"]), ("_include", "Encounter:diagnosis"), ("_include", "Encounter:subject"),
              ("_revinclude", "Observation:encounter")]
    full = {e["resource"]["resourceType"] for e in client.get("/Encounter", params=params).json()["entry"]}
    assert full == {"Encounter", "Condition", "Patient", "Observation"}
    r = httpx.get(f"{server.base}/Encounter", params=params, headers=_headers(tokens["receptionist"]))
    assert r.status_code == 200
    assert {e["resource"]["resourceType"] for e in r.json()["entry"]} == {"Encounter", "Patient"}


def test_everything_returns_only_readable_types(
    server: ServerProcess, tokens: dict[str, str], seed: dict[str, str]
) -> None:
    """patient-operation-everything.html: only the types the caller may read are returned."""
    r = httpx.get(f"{server.base}/Patient/{seed['patient']}/$everything", headers=_headers(tokens["billing-clerk"]))
    assert r.status_code == 200
    types = {e["resource"]["resourceType"] for e in r.json()["entry"]}
    assert "Patient" in types and "Encounter" in types
    assert not types & {"Observation", "Condition", "MedicationRequest"}


# ---- per-tenant overrides: CLI and admin API, seen by every worker on the next request -----------
def _role_cli(database_url: str, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "fhir_server.cli", "role", *args], env=server_env(DATABASE_URL=database_url),
        capture_output=True, text=True, check=False,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def _statuses(url: str, headers: dict[str, str], n: int = 12) -> set[int]:
    """``n`` requests, each on a new connection (so both worker processes answer some)."""
    return {httpx.get(url, headers=headers).status_code for _ in range(n)}


@pytest.fixture
def reset_roles(client: httpx.Client) -> Iterator[None]:
    yield
    for role in ("receptionist", "billing-clerk"):
        client.post("/$role-reset", data={"role": role}).raise_for_status()


def test_cli_override_takes_effect_on_the_next_request_in_every_worker(
    server: ServerProcess, tokens: dict[str, str], seed: dict[str, str], database_url: str, reset_roles: None
) -> None:
    """Spec: none, server-specific role administration (README "Roles and permissions"): a CLI override applies on the
    next request in every worker."""
    assert os.environ.get("FHIR_WORKERS", "2") != "1"
    h = _headers(tokens["receptionist"])
    obs_url = f"{server.base}/Observation/{seed['observation']}"
    pat_url = f"{server.base}/Patient/{seed['patient']}"
    assert _statuses(obs_url, h) == {403}
    shown = _role_cli(database_url, "grant", "receptionist", "Observation", "-i", "read,search")
    assert '"Observation"' in shown
    assert _statuses(obs_url, h) == {200}
    _role_cli(database_url, "revoke", "receptionist", "Patient", "-i", "read")
    assert _statuses(pat_url, h) == {403}
    assert _statuses(obs_url, h) == {200}
    _role_cli(database_url, "reset", "receptionist")
    assert _statuses(obs_url, h) == {403}
    assert _statuses(pat_url, h) == {200}


def test_admin_api_grants_and_resets(
    server: ServerProcess, tokens: dict[str, str], seed: dict[str, str], client: httpx.Client, reset_roles: None
) -> None:
    """operations.html (system-level operations; $role-grant, $role-reset, $roles are server-specific, README "Roles and
    permissions"); only an admin administers roles, others get 403."""
    h = _headers(tokens["billing-clerk"])
    url = f"{server.base}/Observation?subject=Patient/{seed['patient']}"
    assert _statuses(url, h, 4) == {403}
    r = client.post("/$role-grant", data={"role": "billing-clerk", "type": "Observation", "interaction": "search"})
    assert r.status_code == 200, r.text
    (billing,) = r.json()["roles"]
    assert "search" in billing["interactions"]["Observation"]
    assert _statuses(url, h) == {200}
    assert httpx.post(f"{server.base}/$role-grant", data={"role": "billing-clerk", "type": "*", "interaction": "delete"},
                      headers=h).status_code == 403  # only admin administers roles
    assert client.post("/$role-grant", data={"role": "billing-clerk", "type": "Unicorn", "interaction": "read"}).status_code == 400
    assert client.post("/$role-reset", data={"role": "billing-clerk"}).status_code == 200
    assert _statuses(url, h) == {403}
    shown = client.get("/$roles").json()
    assert {r["role"] for r in shown["roles"]} >= set(ROLES)


# ---- the actor: a user's FHIR identity in the audit trail ------------------------------------------
def test_fhir_user_is_the_recorded_actor_of_reads_and_writes(
    server: ServerProcess, database_url: str, seed: dict[str, str], db: psycopg.Connection
) -> None:
    """SMART App Launch scopes-and-launch-context.html (fhirUser); auditevent.html (AuditEvent.agent.who): the user's
    FHIR identity is the recorded actor."""
    practitioner = f"Practitioner/dr-{seed['tag']}"
    token = issue_token(database_url, tenant="default", role="doctor", subject="dr-login", **{"fhir-user": practitioner})
    rid_read, rid_write = f"perm-{uuid.uuid4().hex[:12]}", f"perm-{uuid.uuid4().hex[:12]}"
    h = _headers(token)
    assert httpx.get(f"{server.base}/Patient/{seed['patient']}", headers={**h, "X-Request-Id": rid_read}).status_code == 200
    r = httpx.post(f"{server.base}/Observation", json=_observation(seed["patient"]), headers={**h, "X-Request-Id": rid_write})
    assert r.status_code == 201
    deadline = time.monotonic() + 15
    rows: list[tuple[Any, ...]] = []
    while len(rows) < 2 and time.monotonic() < deadline:
        rows = db.execute(
            "SELECT request_id, agent, fhir_user, role FROM audit_event WHERE request_id = ANY(%s) ORDER BY interaction",
            ([rid_read, rid_write],),
        ).fetchall()
        time.sleep(0.1)
    assert sorted(rows) == sorted([(rid_read, "dr-login", practitioner, "doctor"), (rid_write, "dr-login", practitioner, "doctor")])
