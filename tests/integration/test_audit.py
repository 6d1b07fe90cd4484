"""Every read and write leaves an audit row (AuditEvent: action, outcome, agent, entity; IHE BALP).

Successful writes record theirs in the write's own statement; reads, searches and failures
through the batching sink (written within a fraction of a second).
"""

from __future__ import annotations

import uuid

import httpx
import psycopg

from tests.conftest import ServerProcess
from tests.integration.audit_helpers import audit_rows
from tests.integration.test_crud import new_patient


def _audit_rows(db: psycopg.Connection, request_id: str, timeout: float = 30.0) -> list[tuple]:
    return audit_rows(db, request_id, "action, interaction, outcome, status, agent, resource_type, resource_id, "
                      "version_id, path", timeout=timeout)


def _rid() -> str:
    return f"audit-{uuid.uuid4().hex[:12]}"


def test_create_is_audited_in_the_same_statement(client: httpx.Client, db: psycopg.Connection) -> None:
    """auditevent.html (action C, outcome 0, agent, entity): the row commits with the create."""
    rid = _rid()
    r = client.post("/Patient", json=new_patient(), headers={"X-Request-Id": rid})
    pid = r.json()["id"]
    # no waiting: the row is committed with the resource
    rows = _audit_rows(db, rid, timeout=0)
    assert rows == [("C", "create", "0", 201, "operator", "Patient", pid, 1, "/fhir/Patient")]


def test_update_and_delete_are_audited(client: httpx.Client, db: psycopg.Connection) -> None:
    """auditevent.html: action U for update, D for delete, in the write's own statement."""
    created = client.post("/Patient", json=new_patient()).json()
    rid_u, rid_d = _rid(), _rid()
    client.put(f"/Patient/{created['id']}", json=created, headers={"X-Request-Id": rid_u})
    client.delete(f"/Patient/{created['id']}", headers={"X-Request-Id": rid_d})
    assert _audit_rows(db, rid_u, timeout=0)[0][:4] == ("U", "update", "0", 200)
    assert _audit_rows(db, rid_d, timeout=0)[0][:4] == ("D", "delete", "0", 204)


def test_read_and_search_are_audited(client: httpx.Client, db: psycopg.Connection) -> None:
    """auditevent.html: action R for read, E for search; the query string is not kept."""
    pid = client.post("/Patient", json=new_patient()).json()["id"]
    rid_r, rid_s = _rid(), _rid()
    client.get(f"/Patient/{pid}", headers={"X-Request-Id": rid_r})
    client.get("/Patient", params={"gender": "female"}, headers={"X-Request-Id": rid_s})
    read = _audit_rows(db, rid_r)
    assert read and read[0][:7] == ("R", "read", "0", 200, "operator", "Patient", pid)
    search = _audit_rows(db, rid_s)
    assert search and search[0][:2] == ("E", "search-type")
    assert search[0][8] == "/fhir/Patient"  # the query string (patient data) is not kept


def test_failures_are_audited(server: ServerProcess, client: httpx.Client, db: psycopg.Connection) -> None:
    """auditevent.html: failures have outcome 4 (404, 400) and refused requests (401) are audited too."""
    rid_missing, rid_bad, rid_anon = _rid(), _rid(), _rid()
    client.get("/Patient/no-such-patient", headers={"X-Request-Id": rid_missing})
    client.post("/Patient", json=new_patient(gender="robot"), headers={"X-Request-Id": rid_bad})
    httpx.get(f"{server.base}/Patient", headers={"X-Request-Id": rid_anon})
    assert _audit_rows(db, rid_missing)[0][:4] == ("R", "read", "4", 404)
    assert _audit_rows(db, rid_bad)[0][:4] == ("C", "create", "4", 400)
    assert _audit_rows(db, rid_anon)[0][2:5] == ("4", 401, "anonymous")
