"""Helpers for the SMART on FHIR tests: users/clients in the real database, PKCE, the login form, JWTs."""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import time
import uuid
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import psycopg
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, RSAKey

from fhir_server.auth.oauth import clients, users

PASSWORD = "correct horse battery staple"
REDIRECT = "http://127.0.0.1:9/callback"  # never contacted: redirects are read, not followed


def origin_of(server_base: str) -> str:
    parts = urlsplit(server_base)
    return f"{parts.scheme}://{parts.netloc}"


def add_user(database_url: str, *, role: str = "doctor", fhir_user: str | None = "Practitioner/123",
             facilities: list[str] | None = None, tenant: str = "default") -> str:
    name = f"user-{uuid.uuid4().hex[:8]}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        users.add_user(conn, tenant=tenant, username=name, password=PASSWORD, role=role, fhir_user=fhir_user,
                       facilities=facilities)
    return name


def add_public_client(database_url: str, scope: str, tenant: str = "default") -> str:
    client_id = f"app-{uuid.uuid4().hex[:8]}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        clients.add_client(conn, tenant=tenant, client_id=client_id, client_type="public", name="Test app",
                           redirect_uris=[REDIRECT], scope=scope)
    return client_id


def add_backend_client(database_url: str, key: RSAKey | ECKey, scope: str = "system/*.rs",
                       tenant: str = "default") -> str:
    client_id = f"svc-{uuid.uuid4().hex[:8]}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        clients.add_client(conn, tenant=tenant, client_id=client_id, client_type="confidential", name="Lab analyser",
                           jwks={"keys": [key.as_dict(private=False)]}, scope=scope, role="device",
                           fhir_user="Device/analyser-1")
    return client_id


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def authorize_params(server_base: str, client_id: str, scope: str, challenge: str, **extra: str) -> dict[str, str]:
    params = {
        "response_type": "code", "client_id": client_id, "redirect_uri": REDIRECT, "scope": scope,
        "state": secrets.token_urlsafe(8), "aud": server_base, "code_challenge": challenge,
        "code_challenge_method": "S256", "nonce": "n-" + secrets.token_hex(4),
    }
    params.update(extra)
    return params


def hidden_fields(html: str) -> dict[str, str]:
    import html as htmllib

    return {m[0]: htmllib.unescape(m[1]) for m in re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', html)}


def login_for_code(http: httpx.Client, server_base: str, params: dict[str, str], username: str,
                   password: str = PASSWORD, patient: str | None = None, action: str = "approve") -> httpx.Response:
    """Authorize → login page → POST credentials and consent; returns the final response (a redirect)."""
    r = http.get("/auth/authorize", params=params)
    assert r.status_code == 302, r.text
    assert r.headers["location"].startswith("/auth/login?")
    page = http.get(r.headers["location"])
    assert page.status_code == 200, page.text
    form = hidden_fields(page.text)
    form.update({"username": username, "password": password, "action": action})
    if patient is not None:
        form["patient"] = patient
    return http.post("/auth/login", data=form)


def code_from(response: httpx.Response) -> tuple[str, dict[str, list[str]]]:
    assert response.status_code == 302, response.text
    location = response.headers["location"]
    assert location.startswith(REDIRECT)
    query = parse_qs(urlsplit(location).query)
    return query["code"][0], query


def server_keys(http: httpx.Client) -> KeySet:
    return KeySet.import_key_set(http.get("/auth/jwks").json())


def decode(token: str, keys: KeySet) -> dict[str, Any]:
    return jwt.decode(token, keys, algorithms=["ES256"]).claims


def client_assertion(key: RSAKey | ECKey, client_id: str, aud: str, alg: str, *, jti: str | None = None,
                     exp_in: int = 240) -> str:
    now = int(time.time())
    claims = {"iss": client_id, "sub": client_id, "aud": aud, "exp": now + exp_in, "iat": now,
              "jti": jti or uuid.uuid4().hex}
    return jwt.encode({"alg": alg, "kid": key.kid, "typ": "JWT"}, claims, key, algorithms=[alg])


def backend_token_request(http: httpx.Client, assertion: str, scope: str = "system/*.rs") -> httpx.Response:
    return http.post("/auth/token", data={
        "grant_type": "client_credentials", "scope": scope,
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": assertion,
    })
