"""Every error is an OperationOutcome with the right status (http.html, operationoutcome.html)."""

from __future__ import annotations

import httpx
import psycopg

from tests.integration.test_crud import new_patient


def assert_outcome(r: httpx.Response, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/fhir+json")
    body = r.json()
    assert body["resourceType"] == "OperationOutcome"
    if code:
        assert body["issue"][0]["code"] == code
    assert "Traceback" not in r.text
    return body


def count_rows(db: psycopg.Connection) -> int:
    return db.execute("SELECT count(*) FROM resource_history").fetchone()[0]


def test_malformed_json_is_400_and_writes_nothing(client: httpx.Client, db: psycopg.Connection) -> None:
    """http.html#create: a body that is not JSON is 400."""
    before = count_rows(db)
    assert_outcome(client.post("/Patient", content=b'{"resourceType": "Patient",', headers={"Content-Type": "application/fhir+json"}), 400)
    assert count_rows(db) == before


def test_unknown_resource_type_is_404(client: httpx.Client) -> None:
    """http.html#general: an unknown type in the URL is 404 not-found."""
    assert_outcome(client.get("/Unicorn/1"), 404, "not-found")
    assert_outcome(client.post("/Unicorn", json={"resourceType": "Unicorn"}), 404, "not-found")
    assert_outcome(client.get("/Unicorn"), 404, "not-found")


def test_unknown_path_is_404_outcome(client: httpx.Client) -> None:
    """The framework's own 404 is an OperationOutcome too."""
    assert_outcome(client.get("/Patient/1/_history/1/extra/segments"), 404)


def test_body_type_mismatch_is_400(client: httpx.Client) -> None:
    """http.html#create: the body's resourceType must match the URL."""
    assert_outcome(client.post("/Observation", json=new_patient()), 400)


def test_method_not_allowed_is_405(client: httpx.Client) -> None:
    """http.html: an interaction the endpoint does not have is 405."""
    assert_outcome(client.delete("/Patient/some-id/_history"), 405)
    assert_outcome(client.post("/Patient/some-id", json=new_patient()), 405)


def test_unsupported_media_type_is_415(client: httpx.Client) -> None:
    """http.html#mime-type."""
    assert_outcome(client.post("/Patient", content=b"name=x", headers={"Content-Type": "text/plain"}), 415)


def test_body_over_limit_is_413(client: httpx.Client, db: psycopg.Connection) -> None:
    """A body over the configured limit (FHIR_MAX_BODY_BYTES) is refused with 413."""
    before = count_rows(db)
    big = new_patient(name=[{"family": "x" * 250_000}])
    assert_outcome(client.post("/Patient", json=big), 413, "too-costly")
    assert count_rows(db) == before


def test_bad_if_match_header_is_400(client: httpx.Client) -> None:
    """http.html#concurrency: If-Match must carry a version ETag (W/"n"); anything else is 400."""
    pid = client.post("/Patient", json=new_patient()).json()["id"]
    assert_outcome(client.put(f"/Patient/{pid}", json={**new_patient(), "id": pid}, headers={"If-Match": "garbage"}), 400)


def test_request_id_is_echoed_in_header(client: httpx.Client) -> None:
    """Errors carry the request id (header X-Request-Id) so the log line can be found."""
    r = client.get("/Patient/missing", headers={"X-Request-Id": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    assert r.json()["id"] == "abc-123"


def test_bad_count_is_400(client: httpx.Client) -> None:
    """search.html#count: _count must be a number."""
    assert_outcome(client.get("/Patient?_count=lots"), 400)
