"""Tenants (README "Tenants and facilities"): ``/fhir/{tenant}/…`` selects the tenant; two tenants
holding look-alike data (same ids, same identifiers) never see each other's, on any path."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import psycopg
import pytest

from tests.conftest import ServerProcess, issue_token, server_env
from tests.integration.test_bulk_export import ASYNC, _lines, _wait
from tests.integration.test_errors import assert_outcome

MRN = "http://hospital.example.org/mrn"
LOINC = "http://loinc.org"


def cli(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fhir_server.cli", *args],
        env=server_env(DATABASE_URL=database_url), capture_output=True, text=True, check=False,
    )


@dataclass
class Tenant:
    id: str
    marker: str  # the family name / text every resource of this tenant carries
    client: httpx.Client
    token: str


def _seed(t: Tenant, only: str, other_only: str) -> None:
    """The same ids and identifiers in both tenants; ``only`` exists in this tenant alone;
    a resource here references ``other_only`` (an id that exists only in the other tenant)."""
    c, m = t.client, t.marker
    src = {"source": f"http://{m.lower()}.example.org/feed"}
    puts = [
        {"resourceType": "Patient", "id": "p1", "meta": src, "name": [{"family": m}],
         "identifier": [{"system": MRN, "value": "MRN-1"}]},
        {"resourceType": "Patient", "id": only, "meta": src, "name": [{"family": m}],
         "identifier": [{"system": MRN, "value": f"MRN-{only}"}]},
        {"resourceType": "Organization", "id": "org1", "name": m},
        {"resourceType": "Observation", "id": "o1", "meta": src, "status": "final",
         "code": {"coding": [{"system": LOINC, "code": "1234-5"}], "text": m},
         "subject": {"reference": "Patient/p1"}, "performer": [{"reference": "Organization/org1"}],
         "identifier": [{"system": MRN, "value": "OBS-1"}]},
        {"resourceType": "Observation", "id": f"o-{only}", "status": "final",
         "code": {"coding": [{"system": LOINC, "code": "9999-9"}], "text": m},
         "subject": {"reference": f"Patient/{other_only}"}, "identifier": [{"system": MRN, "value": f"OBS-{only}"}]},
    ]
    for resource in puts:
        r = c.put(f"/{resource['resourceType']}/{resource['id']}", json=resource)
        assert r.status_code in (200, 201), r.text


@pytest.fixture(scope="module")
def tenants(server: ServerProcess, database_url: str, client: httpx.Client) -> Iterator[tuple[Tenant, Tenant]]:
    suffix = uuid.uuid4().hex[:6]
    made = []
    for name, marker in (("alpha", "Alpha"), ("beta", "Beta")):
        tid = f"{name}-{suffix}"
        out = cli(database_url, "tenant", "create", tid, "--name", f"{marker} Hospital")
        assert out.returncode == 0, out.stderr
        token = issue_token(database_url, tenant=tid, role="admin")
        c = httpx.Client(base_url=f"{server.base}/{tid}", timeout=30,
                         headers={"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"})
        made.append(Tenant(tid, marker, c, token))
    a, b = made
    _seed(a, "only-a", "only-b")
    _seed(b, "only-b", "only-a")
    yield a, b
    for t in made:
        t.client.close()


def _texts(bundle: dict) -> set[str]:
    """Every tenant marker found in a bundle's resources."""
    found = set()
    for e in bundle.get("entry", []):
        res = e["resource"]
        for name in res.get("name", []) if isinstance(res.get("name"), list) else []:
            found.add(name.get("family"))
        if isinstance(res.get("name"), str):
            found.add(res["name"])
        if isinstance(res.get("code"), dict) and res["code"].get("text"):
            found.add(res["code"]["text"])
    return found


def _ids(bundle: dict) -> set[str]:
    return {f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in bundle.get("entry", [])}


# ---- the URL and the token ----------------------------------------------------------------------
def test_unknown_tenant_is_404_outcome(server: ServerProcess, token: str) -> None:
    """An unknown tenant answers 404 with an OperationOutcome, its metadata too.
    http.html (RFC 9110 §15.5.5 404 Not Found) with operationoutcome.html (issue.code not-found)."""
    for path in ("/no-such-hospital/Patient", "/no-such-hospital/metadata"):
        r = httpx.get(server.base + path, headers={"Authorization": f"Bearer {token}"})
        assert_outcome(r, 404, "not-found")


def test_metadata_per_tenant_is_public(server: ServerProcess, tenants: tuple[Tenant, Tenant]) -> None:
    """capabilitystatement: /fhir/{tenant}/metadata is public and names the tenant's base."""
    a, _ = tenants
    r = httpx.get(f"{server.base}/{a.id}/metadata")
    assert r.status_code == 200
    assert r.json()["implementation"]["url"] == f"{server.base}/{a.id}"


def test_token_of_another_tenant_is_refused(server: ServerProcess, tenants: tuple[Tenant, Tenant], token: str) -> None:
    """A valid token for tenant A on /fhir/B/… is 403 (and the default tenant's on A's base).
    security.html; RFC 9110 §15.5.4 403 Forbidden."""
    a, b = tenants
    r = httpx.get(f"{server.base}/{b.id}/Patient/p1", headers={"Authorization": f"Bearer {a.token}"})
    assert_outcome(r, 403, "forbidden")
    r = httpx.get(f"{server.base}/{a.id}/Patient/p1", headers={"Authorization": f"Bearer {token}"})
    assert_outcome(r, 403, "forbidden")
    r = httpx.get(f"{server.base}/Patient/p1", headers={"Authorization": f"Bearer {a.token}"})
    assert_outcome(r, 403, "forbidden")


def test_links_carry_the_tenant(server: ServerProcess, tenants: tuple[Tenant, Tenant]) -> None:
    """Location, fullUrl and paging links are under the tenant's base.
    http.html#create (Location), bundle.html (Bundle.entry.fullUrl), search.html (paging links in Bundle.link)."""
    a, _ = tenants
    base = f"{server.base}/{a.id}"
    r = a.client.post("/Patient", json={"resourceType": "Patient", "name": [{"family": a.marker}]})
    assert r.status_code == 201 and r.headers["Location"].startswith(f"{base}/Patient/")
    bundle = a.client.get("/Patient", params={"_count": "1"}).json()
    assert bundle["entry"][0]["fullUrl"].startswith(f"{base}/Patient/")
    assert {link["relation"] for link in bundle["link"]} >= {"self", "next"}
    assert all(link["url"].startswith(f"{base}/Patient?") for link in bundle["link"])
    history = a.client.get("/Patient/p1/_history").json()
    assert history["link"][0]["url"].startswith(f"{base}/Patient/p1/_history")


# ---- isolation, path by path -----------------------------------------------------------------------
def test_read_and_vread_see_only_the_own_tenant(tenants: tuple[Tenant, Tenant]) -> None:
    """http.html#read/#vread: same id, each tenant its own resource; the other's alone is 404."""
    a, b = tenants
    assert a.client.get("/Patient/p1").json()["name"][0]["family"] == "Alpha"
    assert b.client.get("/Patient/p1").json()["name"][0]["family"] == "Beta"
    assert_outcome(a.client.get("/Patient/only-b"), 404, "not-found")
    assert_outcome(a.client.get("/Patient/only-b/_history/1"), 404, "not-found")
    assert a.client.get("/Patient/only-a/_history/1").status_code == 200


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("Patient?identifier=http://hospital.example.org/mrn|MRN-1", {"Patient/p1"}),
        ("Patient?identifier=http://hospital.example.org/mrn|MRN-only-b", set()),
        ("Patient?_id=only-b", set()),
        ("Patient?_id=p1,only-a,only-b", {"Patient/p1", "Patient/only-a"}),
        ("Patient?_source=http://beta.example.org/feed", set()),
        ("Patient?_source=http://alpha.example.org/feed", {"Patient/p1", "Patient/only-a"}),
        ("Observation?subject:Patient.family=Beta", set()),
        ("Observation?subject:Patient.family=Alpha", {"Observation/o1"}),
        ("Observation?performer:Organization.name=Beta", set()),
        # Beta's Observation o-only-b points at Patient/only-a: it must not count in Alpha
        ("Patient?_has:Observation:subject:identifier=OBS-only-b", set()),
        ("Patient?_has:Observation:subject:code=1234-5", {"Patient/p1"}),
        # Alpha's own o-only-a refers to Patient/only-b, which does not exist in Alpha (a dangling
        # reference of the tenant's own data matches; Beta's Patient/only-b is never joined)
        ("Observation?subject=Patient/only-b", {"Observation/o-only-a"}),
        ("Observation?subject:Patient.identifier=MRN-only-b", set()),
    ],
)
def test_search_sees_only_the_own_tenant(tenants: tuple[Tenant, Tenant], query: str, expected: set[str]) -> None:
    """search.html: _id, _source, identifiers, chains and _has match within the tenant only."""
    a, _ = tenants
    path, _, qs = query.partition("?")
    bundle = a.client.get(f"/{path}?{qs}").json()
    assert bundle["resourceType"] == "Bundle", bundle
    assert _ids(bundle) == expected
    assert _texts(bundle) <= {"Alpha"}


def test_include_and_revinclude_stay_in_the_tenant(tenants: tuple[Tenant, Tenant]) -> None:
    """search.html#include: included resources come from the same tenant."""
    a, b = tenants
    bundle = a.client.get("/Observation", params={"_id": "o1", "_include": "Observation:subject"}).json()
    assert _ids(bundle) == {"Observation/o1", "Patient/p1"} and _texts(bundle) == {"Alpha"}
    bundle = a.client.get("/Patient", params={"_id": "only-a", "_revinclude": "Observation:subject"}).json()
    assert _ids(bundle) == {"Patient/only-a"}  # Beta's o-only-b refers to Patient/only-a: not Alpha's
    bundle = a.client.get("/Patient", params={"_id": "p1", "_revinclude": "*"}).json()
    assert _texts(bundle) == {"Alpha"}
    bundle = b.client.get("/Observation", params={"_id": "o-only-b", "_include": "*"}).json()
    assert _ids(bundle) == {"Observation/o-only-b"}  # Patient/only-a is Alpha's


def test_history_stays_in_the_tenant(tenants: tuple[Tenant, Tenant]) -> None:
    """http.html#history at every level."""
    a, _ = tenants
    for path in ("/_history", "/Patient/_history", "/Patient/p1/_history"):
        bundle = a.client.get(path, params={"_count": "100"}).json()
        assert bundle["type"] == "history" and "Beta" not in _texts(bundle), path
    assert_outcome(a.client.get("/Patient/only-b/_history"), 404, "not-found")


def test_conditional_operations_never_match_the_other_tenant(tenants: tuple[Tenant, Tenant]) -> None:
    """http.html#ccreate/#cond-update/#cdelete: criteria match within the tenant."""
    a, b = tenants
    crit = f"identifier={MRN}|MRN-only-b"
    new = {"resourceType": "Patient", "name": [{"family": "Alpha"}], "identifier": [{"system": MRN, "value": "MRN-only-b"}]}
    r = a.client.post("/Patient", json=new, headers={"If-None-Exist": crit})
    assert r.status_code == 201  # nothing in Alpha matches: created
    created = r.json()["id"]
    r = a.client.delete(f"/Patient?{crit}")
    assert r.status_code in (200, 204)
    assert_outcome(a.client.get(f"/Patient/{created}"), 410, "deleted")
    assert b.client.get("/Patient/only-b").status_code == 200  # Beta's is untouched
    r = a.client.put(f"/Patient?identifier={MRN}|MRN-only-b", json=new)
    assert r.status_code == 201
    r = a.client.patch(f"/Observation?identifier={MRN}|OBS-only-b", content=b'[{"op":"replace","path":"/status","value":"amended"}]',
                       headers={"Content-Type": "application/json-patch+json"})
    assert_outcome(r, 404, "not-found")
    assert b.client.get("/Observation/o-only-b").json()["status"] == "final"


def test_transaction_conditional_reference_does_not_resolve_to_the_other_tenant(tenants: tuple[Tenant, Tenant]) -> None:
    """http.html#trules: a conditional reference matching only the other tenant's resource is 412."""
    a, _ = tenants
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [{
        "request": {"method": "POST", "url": "Observation"},
        "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "Alpha"},
                     "subject": {"reference": f"Patient?identifier={MRN}|MRN-only-b&family=Beta"}},
    }]}
    assert_outcome(a.client.post("", json=bundle), 412, "conflict")
    bundle["entry"][0]["resource"]["subject"]["reference"] = f"Patient?identifier={MRN}|MRN-only-a"
    r = a.client.post("", json=bundle)
    assert r.status_code == 200, r.text
    entry = r.json()["entry"][0]
    assert entry["fullUrl"].startswith(str(a.client.base_url).rstrip("/") + "/Observation/")
    assert entry["resource"]["subject"]["reference"] == "Patient/only-a"


def test_everything_stays_in_the_tenant(tenants: tuple[Tenant, Tenant]) -> None:
    """patient-operation-everything.html: the compartment of the tenant's own Patient/only-a, not
    Beta's Observation that points at the same id."""
    a, _ = tenants
    bundle = a.client.get("/Patient/only-a/$everything").json()
    assert "Observation/o-only-b" not in _ids(bundle) and "Patient/only-a" in _ids(bundle)
    bundle = a.client.get("/Patient/p1/$everything").json()
    assert _ids(bundle) >= {"Patient/p1", "Observation/o1", "Organization/org1"} and _texts(bundle) == {"Alpha"}
    assert_outcome(a.client.get("/Patient/only-b/$everything"), 404, "not-found")


def test_bulk_export_stays_in_the_tenant(tenants: tuple[Tenant, Tenant]) -> None:
    """export.html: a tenant's export has only its resources; the URLs carry the tenant."""
    a, _ = tenants
    r = a.client.get("/$export", params={"_type": "Patient,Observation,Organization"}, headers=ASYNC)
    assert r.status_code == 202, r.text
    status_url = r.headers["Content-Location"]
    assert status_url.startswith(str(a.client.base_url).rstrip("/") + "/$export-status")
    done = _wait(a.client, status_url)
    assert done.status_code == 200, done.text
    manifest = done.json()
    assert manifest["request"].startswith(str(a.client.base_url).rstrip("/") + "/$export")
    rows = _lines(a.client, manifest)
    ids = {f"{t}/{x['id']}" for t, xs in rows.items() for x in xs}
    assert "Patient/only-b" not in ids and {"Patient/p1", "Patient/only-a", "Observation/o1"} <= ids
    texts = {x.get("name") if isinstance(x.get("name"), str) else None for xs in rows.values() for x in xs}
    assert "Beta" not in texts


def test_audit_rows_carry_the_request_tenant(tenants: tuple[Tenant, Tenant], db: psycopg.Connection) -> None:
    """The audit trail records the tenant of the URL (reads through the sink, writes in their statement).
    auditevent.html (AuditEvent; IHE BALP)."""
    a, _ = tenants
    rid = f"tenant-audit-{uuid.uuid4().hex[:10]}"
    a.client.get("/Patient/p1", headers={"X-Request-Id": rid})
    deadline = time.monotonic() + 30
    rows: list[tuple] = []
    while time.monotonic() < deadline and not rows:
        rows = db.execute("SELECT tenant_id, path FROM audit_event WHERE request_id = %s", (rid,)).fetchall()
        time.sleep(0.2)
    assert rows == [(a.id, "/fhir/Patient/p1")]


# ---- administration ---------------------------------------------------------------------------------
def test_tenant_cli_create_and_list(database_url: str) -> None:
    """`fhir-server tenant create ID --name N` and `tenant list`; bad and taken ids refused.
    Spec: none, server-specific CLI (README "Tenants and facilities")."""
    tid = f"cli-{uuid.uuid4().hex[:6]}"
    out = cli(database_url, "tenant", "create", tid, "--name", "CLI Hospital")
    assert out.returncode == 0, out.stderr
    listed = cli(database_url, "tenant", "list")
    assert listed.returncode == 0
    assert any(line.split("\t")[0] == tid and line.endswith("CLI Hospital") for line in listed.stdout.splitlines())
    assert cli(database_url, "tenant", "create", tid, "--name", "again").returncode == 1
    for bad in ("Upper", "metadata", "9lives", "x" * 64):
        assert cli(database_url, "tenant", "create", bad, "--name", "bad").returncode == 1


def test_tenant_admin_api(server: ServerProcess, client: httpx.Client, tenants: tuple[Tenant, Tenant]) -> None:
    """[base]/$tenants: the default tenant's admin creates and lists; other callers get 403.
    operations.html (a system-level operation; $tenants itself is server-specific, README "Tenants and facilities")."""
    tid = f"api-{uuid.uuid4().hex[:6]}"
    body = {"resourceType": "Parameters", "parameter": [{"name": "id", "valueString": tid},
                                                         {"name": "name", "valueString": "API Hospital"}]}
    r = client.post("/$tenants", json=body)
    assert r.status_code == 201, r.text
    assert r.headers["Location"] == f"{server.base}/{tid}"
    assert_outcome(client.post("/$tenants", json=body), 409, "conflict")
    listed = client.get("/$tenants").json()
    ids = {next(p["valueId"] for p in t["part"] if p["name"] == "id") for t in listed["parameter"]}
    assert {tid, "default", tenants[0].id} <= ids
    assert_outcome(tenants[0].client.get("/$tenants"), 403, "forbidden")
    # the new tenant is served at once, empty
    token = issue_token(server_database_url(server), tenant=tid, role="admin")
    r = httpx.get(f"{server.base}/{tid}/Patient", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200 and r.json().get("total") == 0


def server_database_url(server: ServerProcess) -> str:
    return server.env["DATABASE_URL"]
