"""The audit trail as FHIR AuditEvents (auditevent.html, IHE BALP): complete, searchable by
auditors only, append-only and tamper-evident (README "Audit trail").

Real server over HTTP, real PostgreSQL; the ``fhir-server audit`` command is run as a subprocess.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import errors as pg_errors

from tests.conftest import ServerProcess, issue_token, server_env
from tests.integration.test_crud import new_patient

Events = list[dict[str, Any]]


def _client(server: ServerProcess, token: str | None, **headers: str) -> httpx.Client:
    h = {"Accept": "application/fhir+json", **headers}
    if token:
        h["Authorization"] = f"Bearer {token}"
    return httpx.Client(base_url=server.base, headers=h, timeout=30)


@pytest.fixture(scope="module")
def auditor(server: ServerProcess, database_url: str) -> Iterator[httpx.Client]:
    with _client(server, issue_token(database_url, tenant="default", role="auditor", subject="auditor-1")) as c:
        yield c


def _search_all(auditor: httpx.Client, params: dict[str, str]) -> Events:
    """Every AuditEvent matching ``params``, following the next links."""
    events: Events = []
    r = auditor.get("/AuditEvent", params={**params, "_count": "200"})
    while True:
        assert r.status_code == 200, r.text
        bundle = r.json()
        events += [e["resource"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]
        nxt = next((link["url"] for link in bundle["link"] if link["relation"] == "next"), None)
        if nxt is None:
            return events
        r = auditor.get(nxt)


def _wait_for(auditor: httpx.Client, params: dict[str, str], done: Callable[[Events], bool], timeout: float = 30) -> Events:
    """Reads, searches and failures reach the table through the batching sink (every 200 ms)."""
    deadline = time.monotonic() + timeout
    while True:
        events = _search_all(auditor, params)
        if done(events) or time.monotonic() > deadline:
            return events
        time.sleep(0.2)


def _by_request(events: Events) -> dict[str, dict[str, Any]]:
    out = {}
    for e in events:
        for part in e.get("outcomeDesc", "").split("; "):
            if part.startswith("request "):
                out[part.removeprefix("request ")] = e
    return out


def _rid() -> str:
    return f"ae-{uuid.uuid4().hex[:12]}"


def _patient_entity(event: dict[str, Any]) -> str | None:
    for entity in event.get("entity", []):
        if entity.get("role", {}).get("code") == "1":
            assert entity["type"]["code"] == "1"  # Person
            return entity["what"]["reference"]
    return None


def _cli(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fhir_server.cli", *args], check=False, env=server_env(DATABASE_URL=database_url),
        capture_output=True, text=True, timeout=120,
    )


def test_every_request_of_a_session_has_its_audit_event(
    server: ServerProcess, database_url: str, auditor: httpx.Client
) -> None:
    """auditevent.html / BALP: a read, search, write, operation, refused access and token issue
    each leave an AuditEvent with subtype, action, outcome, agent and the patient entity."""
    started = datetime.now(UTC) - timedelta(seconds=1)
    subject = f"dr-{uuid.uuid4().hex[:8]}"
    token = issue_token(database_url, tenant="default", role="admin", subject=subject, **{"fhir-user": "Practitioner/pr-1"})
    expected: dict[str, tuple[str, str, str]] = {}  # request id -> (subtype, action, outcome)
    with _client(server, token, **{"X-Purpose-Of-Use": "TREAT"}) as c:
        def call(method: str, url: str, subtype: str, action: str, status: int, **kw: Any) -> httpx.Response:
            rid = _rid()
            r = c.request(method, url, headers={"X-Request-Id": rid}, **kw)
            assert r.status_code == status, r.text
            expected[rid] = (subtype, action, "0" if status < 400 else "4")
            return r

        pid = call("POST", "/Patient", "create", "C", 201, json=new_patient()).json()["id"]
        obs = {"resourceType": "Observation", "status": "final", "code": {"text": "pulse"},
               "subject": {"reference": f"Patient/{pid}"}}
        created = call("POST", "/Observation", "create", "C", 201, json=obs)
        oid = created.json()["id"]
        obs_create_rid = created.headers["x-request-id"]
        call("GET", f"/Observation/{oid}", "read", "R", 200)
        call("GET", "/Observation", "search-type", "E", 200, params={"subject": f"Patient/{pid}"})
        call("PUT", f"/Observation/{oid}", "update", "U", 200, json={**obs, "id": oid, "status": "amended"})
        call("GET", f"/Patient/{pid}/$everything", "operation", "E", 200)
        call("GET", "/Patient/no-such-patient", "read", "R", 404)
        call("DELETE", f"/Observation/{oid}", "delete", "D", 204)
    with _client(server, None) as anonymous:
        rid_anon = _rid()
        assert anonymous.get("/Patient", headers={"X-Request-Id": rid_anon}).status_code == 401
    with _client(server, issue_token(database_url, tenant="default", role="doctor", subject=subject)) as doctor:
        rid_refused = _rid()
        assert doctor.get("/AuditEvent", headers={"X-Request-Id": rid_refused}).status_code == 403

    mine = {"agent": subject, "date": f"ge{started.isoformat()}"}
    events = _wait_for(auditor, mine, lambda ev: set(expected) | {rid_refused} <= set(_by_request(ev)))
    found = _by_request(events)
    for rid, (subtype, action, outcome) in expected.items():
        assert rid in found, f"no AuditEvent for {expected[rid]}"
        e = found[rid]
        assert (e["subtype"][0]["code"], e["action"], e["outcome"]) == (subtype, action, outcome)
        assert e["type"]["code"] == "rest"
        user = e["agent"][0]
        assert user["requestor"] is True
        assert user["who"] == {"reference": "Practitioner/pr-1"}  # the FHIR identity, not the subject
        assert user["altId"] == subject and user["role"] == [{"text": "admin"}]
        assert user["network"]["address"] == "127.0.0.1"
        assert e["purposeOfEvent"][0]["coding"][0]["code"] == "TREAT"
        assert e["source"]["observer"]["display"] == "fhir-server"
    refused = found[rid_refused]
    assert (refused["outcome"], refused["subtype"][0]["code"]) == ("4", "search-type")
    assert refused["entity"][0]["what"] == {"type": "AuditEvent"}

    # the patient entity: a write of an Observation with a subject, its read, search, update, delete
    assert _patient_entity(found[obs_create_rid]) == f"Patient/{pid}"
    for rid, (subtype, _, _) in expected.items():
        if subtype in ("read", "search-type", "update", "delete", "operation", "create") and found[rid]["outcome"] == "0":
            assert _patient_entity(found[rid]) == f"Patient/{pid}", subtype
    create_entity = found[obs_create_rid]["entity"][0]
    assert create_entity["what"]["reference"] == f"Observation/{oid}/_history/1"
    assert create_entity["role"]["code"] == "4"

    # search by patient: every interaction that touched this patient's data, nothing else
    by_patient = _search_all(auditor, {"patient": f"Patient/{pid}"})
    assert {rid for rid, (_, _, outcome) in expected.items() if outcome == "0"} <= set(_by_request(by_patient))
    assert all(_patient_entity(e) == f"Patient/{pid}" for e in by_patient)
    # by outcome: the refusal and the 404 are failures, the creates are not
    failures = _by_request(_search_all(auditor, {**mine, "outcome": "4"}))
    assert rid_refused in failures and obs_create_rid not in failures
    # the anonymous 401 is recorded with agent "anonymous"
    anon = _wait_for(auditor, {"agent": "anonymous", "date": f"ge{started.isoformat()}"},
                     lambda ev: rid_anon in _by_request(ev))
    assert _by_request(anon)[rid_anon]["outcome"] == "4"
    # by date: nothing of this session before it started
    assert not set(expected) & set(_by_request(_search_all(auditor, {"agent": subject, "date": f"lt{started.isoformat()}"})))
    # by type and subtype: the token issued by the command line for this subject
    tokens = _search_all(auditor, {"agent": subject, "type": "110114", "subtype": "token"})
    assert len(tokens) == 2  # the admin and the doctor token
    assert tokens[0]["type"]["system"] == "http://dicom.nema.org/resources/ontology/DCM"


def test_audit_events_are_read_by_auditors_only(
    server: ServerProcess, database_url: str, auditor: httpx.Client, client: httpx.Client
) -> None:
    """A non-auditor gets 403 (no AuditEvent read, no search); the refusal is itself audited."""
    for role in ("doctor", "nurse", "admin"):
        subject = f"{role}-{uuid.uuid4().hex[:6]}"
        with _client(server, issue_token(database_url, tenant="default", role=role, subject=subject)) as c:
            r = c.get("/AuditEvent", params={"patient": "Patient/x"})
            assert r.status_code == 403, (role, r.text)
            assert r.json()["issue"][0]["code"] == "forbidden"
        refusals = _wait_for(auditor, {"agent": subject, "outcome": "4"}, lambda ev: len(ev) >= 1)
        assert refusals and refusals[0]["entity"][0]["what"] == {"type": "AuditEvent"}
    page = auditor.get("/AuditEvent", params={"_count": "1"}).json()
    event_id = page["entry"][0]["resource"]["id"]
    assert client.get(f"/AuditEvent/{event_id}").status_code == 403  # the admin's token


def test_audit_event_read_vread_paging_and_no_writes(auditor: httpx.Client, client: httpx.Client) -> None:
    """read and vread by id (one version), keyset paging newest first, every write refused (405)."""
    for _ in range(3):
        client.get("/Patient", params={"_count": "1"})
    first = auditor.get("/AuditEvent", params={"_count": "2"}).json()
    ids = [e["resource"]["id"] for e in first["entry"]]
    next_url = next(link["url"] for link in first["link"] if link["relation"] == "next")
    second = auditor.get(next_url).json()
    ids2 = [e["resource"]["id"] for e in second["entry"]]
    assert len(ids) == 2 and len(ids2) == 2 and not set(ids) & set(ids2)
    recorded = [e["resource"]["recorded"] for e in first["entry"] + second["entry"]]
    assert recorded == sorted(recorded, reverse=True)

    one = auditor.get(f"/AuditEvent/{ids[0]}")
    assert one.status_code == 200 and one.json() == first["entry"][0]["resource"]
    assert one.headers["etag"] == 'W/"1"'
    assert auditor.get(f"/AuditEvent/{ids[0]}/_history/1").json()["id"] == ids[0]
    assert auditor.get(f"/AuditEvent/{ids[0]}/_history/2").status_code == 404
    assert auditor.get("/AuditEvent/not-an-audit-id").status_code == 404

    event = one.json()
    # the admin passes the role matrix, and the audit trail still refuses every write
    for method, url, body in (("POST", "/AuditEvent", event), ("PUT", f"/AuditEvent/{ids[0]}", event),
                              ("DELETE", f"/AuditEvent/{ids[0]}", None), ("PATCH", f"/AuditEvent/{ids[0]}", [])):
        r = client.request(method, url, json=body)
        assert r.status_code == 405, (method, r.text)
        assert r.json()["issue"][0]["code"] == "not-supported"


def test_unknown_parameter_is_a_warning_and_bad_date_is_400(auditor: httpx.Client) -> None:
    """search.html#errors: unknown parameters are ignored with a warning (400 under handling=strict)."""
    r = auditor.get("/AuditEvent", params={"nonsense": "1", "_count": "1"})
    assert r.status_code == 200
    assert r.json()["entry"][-1]["search"]["mode"] == "outcome"
    strict = auditor.get("/AuditEvent", params={"nonsense": "1"}, headers={"Prefer": "handling=strict"})
    assert strict.status_code == 400
    assert auditor.get("/AuditEvent", params={"date": "yesterday"}).status_code == 400


# ---- append-only and tamper-evident ------------------------------------------------------------
_INSERT = (
    "INSERT INTO audit_event (tenant_id, recorded, action, interaction, outcome, status, agent, method, path, "
    "resource_type, resource_id) VALUES (%s, %s, 'R', 'read', '0', 200, %s, 'GET', '/fhir/Patient/1', 'Patient', %s) "
    "RETURNING id"
)


def _seed(db: psycopg.Connection, tenant: str, n: int) -> list[uuid.UUID]:
    base = datetime.now(UTC) - timedelta(minutes=5)
    return [db.execute(_INSERT, (tenant, base + timedelta(seconds=i), f"user-{i}", str(i))).fetchone()[0] for i in range(n)]


def test_update_delete_truncate_of_audit_rows_are_refused(db: psycopg.Connection) -> None:
    """The database itself refuses to change or remove audit rows (a trigger), seals too."""
    tenant = f"immutable-{uuid.uuid4().hex[:8]}"
    (audit_id,) = _seed(db, tenant, 1)
    with pytest.raises(pg_errors.InsufficientPrivilege, match="append-only"):
        db.execute("UPDATE audit_event SET agent = 'mallory' WHERE tenant_id = %s AND id = %s", (tenant, audit_id))
    with pytest.raises(pg_errors.InsufficientPrivilege, match="append-only"):
        db.execute("DELETE FROM audit_event WHERE tenant_id = %s", (tenant,))
    with pytest.raises(pg_errors.InsufficientPrivilege, match="append-only"):
        db.execute("TRUNCATE audit_event")
    assert db.execute("SELECT count(*) FROM audit_seal").fetchone()[0] > 0  # the server has sealed rows
    with pytest.raises(pg_errors.InsufficientPrivilege, match="append-only"):
        db.execute("UPDATE audit_seal SET hashes = '\\x00'")
    with pytest.raises(pg_errors.InsufficientPrivilege, match="append-only"):
        db.execute("DELETE FROM audit_seal")
    assert db.execute("SELECT agent FROM audit_event WHERE tenant_id = %s", (tenant,)).fetchone() == ("user-0",)


def test_audit_verify_finds_changed_removed_and_unsealed_rows(database_url: str, db: psycopg.Connection) -> None:
    """A row altered (trigger disabled by the superuser), a sealed row deleted, a back-dated row
    slipped in behind the chain, and a rewritten head are each reported; exit code 1."""
    tenant = f"tamper-{uuid.uuid4().hex[:8]}"
    ids = _seed(db, tenant, 6)
    sealed = _cli(database_url, "audit", "seal", "--tenant", tenant)
    assert sealed.returncode == 0, sealed.stderr
    clean = _cli(database_url, "audit", "verify", "--tenant", tenant)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "OK; 6 sealed rows checked" in clean.stdout
    head = _cli(database_url, "audit", "head", "--tenant", tenant).stdout
    assert f'"tenant": "{tenant}", "link": 6' in head

    with db.transaction():  # what a superuser (or a script with the owner's rights) can do behind the server's back
        db.execute("ALTER TABLE audit_event DISABLE TRIGGER audit_event_append_only")
        db.execute("UPDATE audit_event SET agent = 'someone-else' WHERE tenant_id = %s AND id = %s", (tenant, ids[1]))
        db.execute("DELETE FROM audit_event WHERE tenant_id = %s AND id = %s", (tenant, ids[3]))
        db.execute("ALTER TABLE audit_event ENABLE TRIGGER audit_event_append_only")
    # an INSERT is allowed, but a row claiming an old transaction id is never sealed: it shows as unsealed
    db.execute(
        "INSERT INTO audit_event (tenant_id, recorded, action, interaction, outcome, agent, method, path, txid) "
        "VALUES (%s, now() - interval '1 hour', 'R', 'read', '0', 'backdated', 'GET', '/fhir/Patient/9', '1')",
        (tenant,),
    )
    _cli(database_url, "audit", "seal", "--tenant", tenant)
    report = _cli(database_url, "audit", "verify", "--tenant", tenant, "--max-unsealed-age", "60")
    assert report.returncode == 1, report.stdout + report.stderr
    out = report.stdout
    assert f"changed: audit row {ids[1]}" in out and "link 2, seal seq 1)" in out
    assert f"removed: audit row {ids[3]}" in out
    assert "unsealed: 1 audit rows older than" in out
    assert f"{ids[0]}" not in out  # the first row is intact

    # the exported head still matches; a forged one does not
    exported = json.loads(head)
    seq, digest = exported["link"], exported["hash"]
    ok = _cli(database_url, "audit", "verify", "--tenant", tenant, "--expect", f"{seq}:{digest}", "--max-unsealed-age", "1e9")
    assert "head-mismatch" not in ok.stdout
    forged = _cli(database_url, "audit", "verify", "--tenant", tenant, "--expect", f"{seq}:{'00' * 32}")
    assert forged.returncode == 1 and "head-mismatch" in forged.stdout


def test_the_servers_chain_verifies(server: ServerProcess, client: httpx.Client, database_url: str) -> None:
    """The running server seals its own tenant's rows (writes and the sink's) into a chain that verifies."""
    for _ in range(5):
        pid = client.post("/Patient", json=new_patient()).json()["id"]
        client.get(f"/Patient/{pid}")
    time.sleep(1.5)  # the sealing pass runs every second in each worker
    report = _cli(database_url, "audit", "verify", "--tenant", "default", "--max-unsealed-age", "120")
    assert report.returncode == 0, report.stdout + report.stderr
    assert "OK" in report.stdout
