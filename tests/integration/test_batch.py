"""Batch Bundles over real HTTP against the real database.

Spec: https://hl7.org/fhir/R4/http.html#batch, https://hl7.org/fhir/R4/bundle.html#transaction
(batch-response), auditevent.html for the audit trail of bundle entries.
"""

from __future__ import annotations

import base64
import json
import uuid

import httpx
import psycopg

from tests.integration.audit_helpers import audit_rows
from tests.integration.test_transaction import bundle, entry, marker, patient, rows_with, urn


def test_batch_partial_failure_keeps_the_rest(client: httpx.Client, db: psycopg.Connection) -> None:
    """http.html#batch: entries are independent; a failing one gets its own status and
    response.outcome (naming it), the others still happen; the batch answers 200."""
    fam = marker()
    existing = client.post("/Patient", json=patient(fam)).json()
    r = client.post("", json=bundle([
        entry("POST", "Patient", patient(fam), urn()),
        entry("POST", "Patient", patient(fam, gender="robot"), urn()),
        entry("PUT", f"Patient/{existing['id']}", {**existing, "active": True}, ifMatch='W/"7"'),
        entry("GET", "Patient/no-such-patient"),
        entry("PUT", "NotAType/1", patient(fam)),
        entry("PUT", f"Patient/{existing['id']}", {**existing, "active": False}),
        {"resource": patient(fam)},
    ], "batch"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["type"] == "batch-response"
    got = body["entry"]
    assert [e["response"]["status"].split()[0] for e in got] == ["201", "400", "412", "404", "400", "200", "400"]
    expressions = [e["response"].get("outcome", {}).get("issue", [{}])[0].get("expression") for e in got]
    assert expressions[1] == ["Bundle.entry[1].resource.gender"]
    assert expressions[2] == ["Bundle.entry[2]"]
    assert expressions[4] == ["Bundle.entry[4].request.url"]
    assert expressions[6] == ["Bundle.entry[6].request"]
    assert rows_with(db, fam) == (2, 3)  # existing (v1, v2) and the created one


def test_batch_reads_searches_history(client: httpx.Client) -> None:
    """http.html#batch with GET entries: read, vread, search and history through the usual handlers."""
    fam = marker()
    p = client.post("/Patient", json=patient(fam)).json()
    r = client.post("", json=bundle([
        entry("GET", f"Patient/{p['id']}"),
        entry("GET", f"Patient/{p['id']}/_history/1"),
        entry("GET", f"Patient?family={fam}"),
        entry("GET", f"Patient/{p['id']}/_history"),
        entry("GET", f"Patient?family={fam}&_count=bad"),
    ], "batch"))
    assert r.status_code == 200, r.text
    got = r.json()["entry"]
    assert got[0]["resource"]["id"] == p["id"] and got[0]["response"]["etag"] == 'W/"1"'
    assert got[1]["resource"]["meta"]["versionId"] == "1"
    assert got[2]["resource"]["total"] == 1
    assert got[3]["resource"]["type"] == "history"
    assert got[4]["response"]["status"].startswith("400")


def test_batch_patch_entries(client: httpx.Client) -> None:
    """http.html#patch in a batch: Binary JSON Patch applied; FHIRPath Patch answered 501 for that entry."""
    p = client.post("/Patient", json=patient(marker())).json()
    data = base64.b64encode(json.dumps([{"op": "add", "path": "/active", "value": True}]).encode()).decode()
    r = client.post("", json=bundle([
        entry("PATCH", f"Patient/{p['id']}", {"resourceType": "Binary", "contentType": "application/json-patch+json", "data": data}),
        entry("PATCH", f"Patient/{p['id']}", {"resourceType": "Parameters", "parameter": []}),
    ], "batch"))
    got = r.json()["entry"]
    assert got[0]["response"]["status"] == "200 OK" and got[0]["resource"]["active"] is True
    assert got[1]["response"]["status"].startswith("501")


def _audit_rows(db: psycopg.Connection, request_id: str, n: int) -> list[tuple]:
    return audit_rows(db, request_id, "interaction, status, method, path, resource_type, resource_id", n=n,
                      order_by_id=True)


def test_bundle_entries_are_audited(client: httpx.Client, db: psycopg.Connection) -> None:
    """auditevent.html: every write inside a bundle leaves its row (with the entry's method and
    path); reads, searches and failed entries are audited too, as if they had come alone."""
    rid = f"audit-{uuid.uuid4().hex[:12]}"
    r = client.post("", json=bundle([
        entry("POST", "Patient", patient(marker()), urn()),
        entry("GET", "Patient?_count=1"),
        entry("GET", "Patient/no-such-one"),
    ], "batch"), headers={"X-Request-Id": rid})
    pid = r.json()["entry"][0]["resource"]["id"]
    rows = set(_audit_rows(db, rid, 4))
    assert ("create", 201, "POST", "/fhir/Patient", "Patient", pid) in rows
    assert ("search-type", 200, "GET", "/fhir/Patient", "Patient", None) in rows
    assert ("read", 404, "GET", "/fhir/Patient/no-such-one", "Patient", "no-such-one") in rows
    assert any(row[0] == "transaction" and row[2] == "POST" and row[3] in ("/fhir", "/fhir/") for row in rows)
