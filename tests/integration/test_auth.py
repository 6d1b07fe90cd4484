"""Secure by default: every FHIR path but /metadata needs a bearer token unless dev mode is on."""

from __future__ import annotations

import httpx

from tests.conftest import ServerProcess, server_env


def test_no_token_is_401_outcome(server: ServerProcess) -> None:
    """security.html / http.html: without a token a FHIR path answers 401 with an OperationOutcome and WWW-Authenticate."""
    r = httpx.get(f"{server.base}/Patient")
    assert r.status_code == 401
    assert r.json()["resourceType"] == "OperationOutcome"
    assert r.headers["www-authenticate"].startswith("Bearer")


def test_bad_token_is_401(server: ServerProcess) -> None:
    """security.html: a token that does not verify is 401."""
    r = httpx.get(f"{server.base}/Patient", headers={"Authorization": "Bearer not.a.jwt"})
    assert r.status_code == 401


def test_metadata_is_public(server: ServerProcess) -> None:
    """http.html#capabilities: the CapabilityStatement is readable without a token."""
    assert httpx.get(f"{server.base}/metadata").status_code == 200


def test_dev_mode_turns_auth_off(database_url: str) -> None:
    """Development mode (--dev) is the only way to run without authentication."""
    srv = ServerProcess(server_env(DATABASE_URL=database_url), ["--dev"])
    srv.start()
    try:
        assert httpx.get(f"{srv.base}/Patient?_count=1").status_code == 200
    finally:
        srv.stop()
