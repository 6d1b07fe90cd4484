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


def test_401_outcome_follows_negotiated_xml(server: ServerProcess) -> None:
    """http.html#mime-type: an error is answered in the negotiated format, also when the
    authentication middleware refuses the request: Accept or _format XML gives an XML
    OperationOutcome with the 401, still with WWW-Authenticate."""
    from lxml import etree

    for kwargs in ({"headers": {"Accept": "application/fhir+xml"}}, {"params": {"_format": "xml"}}):
        r = httpx.get(f"{server.base}/Patient", **kwargs)  # type: ignore[arg-type]
        assert r.status_code == 401
        assert r.headers["content-type"].startswith("application/fhir+xml")
        assert r.headers["www-authenticate"].startswith("Bearer")
        root = etree.fromstring(r.content)
        assert root.tag == "{http://hl7.org/fhir}OperationOutcome"
        assert root.find("{http://hl7.org/fhir}issue/{http://hl7.org/fhir}code").get("value") == "login"
    r = httpx.get(f"{server.base}/Patient", headers={"Accept": "text/html"})  # not negotiable: still FHIR JSON
    assert r.status_code == 401
    assert r.json()["resourceType"] == "OperationOutcome"
