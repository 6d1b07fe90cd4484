"""Rate limits and CORS (issue 5 "CORS and rate limits"; RFC 6585 §4 429 Too Many Requests,
RFC 9110 §10.2.3 Retry-After; Fetch standard CORS protocol)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import ServerProcess, issue_token, server_env
from tests.integration.test_errors import assert_outcome

LIMITS = "read=4/minute;search=3/minute;write=2/minute;bulk=1/minute;auth=3/minute"
ORIGIN = "https://opd.hospital.example"


@pytest.fixture(scope="module")
def limited(database_url: str) -> Iterator[ServerProcess]:
    env = server_env(DATABASE_URL=database_url, FHIR_RATE_LIMITS=LIMITS, FHIR_CORS_ORIGINS=ORIGIN)
    srv = ServerProcess(env, ["--workers", "2"])
    srv.start()
    yield srv
    srv.stop()


def _client(srv: ServerProcess, token: str) -> httpx.Client:
    return httpx.Client(base_url=srv.base, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def test_429_with_retry_after_per_user_shared_by_workers(limited: ServerProcess, database_url: str) -> None:
    """A user's reads beyond the limit are 429 with Retry-After and an OperationOutcome, whichever
    worker process answers (the counters are in PostgreSQL); another user has its own budget.
    RFC 6585 §4 429 Too Many Requests, RFC 9110 §10.2.3 Retry-After, operationoutcome.html."""
    token = issue_token(database_url, tenant="default", role="admin", subject="rl-reader")
    with _client(limited, token) as c:
        # fresh connections spread the requests over both workers
        statuses = [httpx.get(f"{limited.base}/Patient/x", headers=c.headers).status_code for _ in range(4)]
        assert statuses == [404] * 4
        r = c.get("/Patient/x")
        body = assert_outcome(r, 429, "throttled")
        assert 1 <= int(r.headers["retry-after"]) <= 60
        assert "read" in body["issue"][0]["diagnostics"]
        # another class still has its budget
        assert c.get("/Patient", params={"_count": "1"}).status_code == 200
    other = issue_token(database_url, tenant="default", role="admin", subject="rl-other")
    with _client(limited, other) as c:
        assert c.get("/Patient/x").status_code == 404


def test_write_limit_refuses_without_writing(limited: ServerProcess, database_url: str, db) -> None:  # type: ignore[no-untyped-def]
    """RFC 6585 §4 429 Too Many Requests: a refused write has no effect."""
    token = issue_token(database_url, tenant="default", role="admin", subject="rl-writer")
    with _client(limited, token) as c:
        for _ in range(2):
            assert c.post("/Patient", json={"resourceType": "Patient", "name": [{"family": "RateLimited"}]}).status_code == 201
        before = db.execute("SELECT count(*) FROM resource WHERE content @> '{\"name\": [{\"family\": \"RateLimited\"}]}'").fetchone()[0]
        assert_outcome(c.post("/Patient", json={"resourceType": "Patient", "name": [{"family": "RateLimited"}]}), 429)
        after = db.execute("SELECT count(*) FROM resource WHERE content @> '{\"name\": [{\"family\": \"RateLimited\"}]}'").fetchone()[0]
        assert after == before


def test_unauthenticated_requests_are_limited_by_ip(limited: ServerProcess) -> None:
    """Public paths count against the caller's IP (the fixture's start-up polls of /metadata
    have spent some of the budget already). RFC 6585 §4 429 Too Many Requests."""
    statuses = [httpx.get(f"{limited.base}/metadata").status_code for _ in range(6)]
    first = statuses.index(429)
    assert 1 <= first <= 4 and set(statuses[:first]) == {200} and set(statuses[first:]) == {429}


def test_cors_preflight_and_exposed_headers(limited: ServerProcess, database_url: str) -> None:
    """Fetch standard, CORS protocol: a preflight from a configured origin is answered (and may be
    cached); responses expose ETag, Location, Content-Location, Last-Modified; other origins get
    no CORS headers."""
    r = httpx.options(f"{limited.base}/Patient", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type, if-match",
    })
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in r.headers["access-control-allow-methods"]
    assert int(r.headers["access-control-max-age"]) > 0
    token = issue_token(database_url, tenant="default", role="admin", subject="rl-cors")
    r = httpx.post(f"{limited.base}/Patient", json={"resourceType": "Patient"},
                   headers={"Origin": ORIGIN, "Authorization": f"Bearer {token}"})
    assert r.status_code == 201
    exposed = {h.strip().lower() for h in r.headers["access-control-expose-headers"].split(",")}
    assert {"etag", "location", "content-location", "last-modified"} <= exposed
    assert "access-control-allow-credentials" not in r.headers
    r = httpx.options(f"{limited.base}/Patient", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"})
    assert r.headers.get("access-control-allow-origin") is None


def test_wildcard_with_credentials_is_refused(database_url: str) -> None:
    """Never a wildcard origin together with credentials: the server refuses to start.
    Fetch standard, CORS protocol and credentials: a ``*`` Access-Control-Allow-Origin fails the CORS check of a
    credentialed request."""
    env = server_env(DATABASE_URL=database_url, FHIR_CORS_ORIGINS="*", FHIR_CORS_ALLOW_CREDENTIALS="true")
    srv = ServerProcess(env, ["--workers", "1"])
    with pytest.raises(RuntimeError):
        srv.start(timeout=30)
    assert "cannot be used with FHIR_CORS_ALLOW_CREDENTIALS" in srv.logs()


def test_classify() -> None:
    """Spec: none, server-specific request classes for the limits (README "CORS and rate limits")."""
    from fhir_server.ratelimit.middleware import classify, parse_limits

    assert classify("GET", "/fhir/Patient/1") == "read"
    assert classify("GET", "/fhir/Patient") == "search"
    assert classify("POST", "/fhir/Patient/_search") == "search"
    assert classify("POST", "/fhir/Patient") == "write"
    assert classify("POST", "/fhir") == "write"
    assert classify("GET", "/fhir/$export") == "bulk"
    assert classify("GET", "/fhir/Patient/1/$everything") == "read"
    assert classify("POST", "/auth/token") == "auth"
    with pytest.raises(ValueError):
        parse_limits("reads=1/minute")
