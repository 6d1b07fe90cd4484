"""Forged and misused bearer tokens are refused with 401 + OperationOutcome (RFC 8725 JWT BCP, RFC 6750 §3.1).

Tokens "of the server" are signed here with the server's real private key read from the database,
so each test proves the claim check itself, not just the signature."""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.server
import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest
from cryptography.hazmat.primitives import serialization
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from tests.conftest import ServerProcess, issue_token, server_env
from tests.integration.smart_helpers import origin_of


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.fixture(scope="module")
def server_key(database_url: str, server: ServerProcess) -> ECKey:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT private_jwk FROM oauth_signing_key WHERE retired_at IS NULL").fetchone()
    assert row is not None
    return ECKey.import_key(row[0])


def _claims(server: ServerProcess, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {"iss": origin_of(server.base), "aud": server.base, "sub": "attacker", "tenant": "default",
              "role": "admin", "scope": "system/*.*", "iat": now, "nbf": now, "exp": now + 600, "jti": uuid.uuid4().hex}
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def _sign(key: ECKey, claims: dict[str, Any], kid: str | None = None) -> str:
    return jwt.encode({"alg": "ES256", "kid": kid or key.kid}, claims, key, algorithms=["ES256"])


def _refused(server: ServerProcess, token: str) -> None:
    r = httpx.get(f"{server.base}/Patient?_count=1", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401, r.text
    assert r.json()["resourceType"] == "OperationOutcome" and r.json()["issue"][0]["code"] == "login"
    assert r.headers["www-authenticate"].startswith("Bearer")


def test_control_a_well_formed_token_is_accepted(server: ServerProcess, server_key: ECKey) -> None:
    """The baseline every attack below changes one thing of."""
    r = httpx.get(f"{server.base}/Patient?_count=1", headers={"Authorization": f"Bearer {_sign(server_key, _claims(server))}"})
    assert r.status_code == 200


def test_alg_none_is_refused(server: ServerProcess) -> None:
    """RFC 8725 §2.1/§3.1: an unsecured JWT (alg none) is never accepted."""
    for alg in ("none", "None", "NONE"):
        header = _b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
        _refused(server, f"{header}.{_b64(json.dumps(_claims(server)).encode())}.")


def test_hs256_signed_with_the_public_key_is_refused(server: ServerProcess, server_key: ECKey) -> None:
    """RFC 8725 §2.1 key confusion: HMAC with the server's public key (PEM, JWK JSON) as the secret."""
    public = server_key.as_dict(private=False)
    pem = server_key.public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    for secret in (pem, json.dumps(public).encode(), json.dumps(public, separators=(",", ":")).encode()):
        header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": server_key.kid}).encode())
        payload = _b64(json.dumps(_claims(server)).encode())
        sig = _b64(hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest())
        _refused(server, f"{header}.{payload}.{sig}")


def test_expired_token_is_refused(server: ServerProcess, server_key: ECKey) -> None:
    """RFC 7519 §4.1.4: exp in the past (beyond the 30 s leeway)."""
    now = int(time.time())
    _refused(server, _sign(server_key, _claims(server, iat=now - 7200, nbf=now - 7200, exp=now - 3600)))
    _refused(server, _sign(server_key, _claims(server, exp=None)))  # no exp at all


def test_not_yet_valid_token_is_refused(server: ServerProcess, server_key: ECKey) -> None:
    """RFC 7519 §4.1.5: nbf in the future."""
    now = int(time.time())
    _refused(server, _sign(server_key, _claims(server, nbf=now + 3600, exp=now + 7200)))


def test_wrong_issuer_is_refused(server: ServerProcess, server_key: ECKey) -> None:
    """RFC 7519 §4.1.1: signed by our key but claiming another issuer."""
    _refused(server, _sign(server_key, _claims(server, iss="https://evil.example")))
    _refused(server, _sign(server_key, _claims(server, iss=None)))


def test_wrong_audience_is_refused(server: ServerProcess, server_key: ECKey) -> None:
    """RFC 7519 §4.1.3: a token for another FHIR server is not accepted here."""
    _refused(server, _sign(server_key, _claims(server, aud="https://other-hospital.example/fhir")))
    _refused(server, _sign(server_key, _claims(server, aud=None)))


def test_tampered_signature_or_payload_is_refused(server: ServerProcess, server_key: ECKey) -> None:
    """RFC 7515 §5.2: any change to the signed bytes breaks the signature."""
    token = _sign(server_key, _claims(server, role="nurse"))
    header, payload, sig = token.split(".")
    flipped = sig[:-4] + ("AAAA" if sig[-4:] != "AAAA" else "BBBB")
    _refused(server, f"{header}.{payload}.{flipped}")
    elevated = _b64(json.dumps(_claims(server, role="admin")).encode())
    _refused(server, f"{header}.{elevated}.{sig}")


def test_unknown_kid_or_foreign_key_is_refused(server: ServerProcess, server_key: ECKey) -> None:
    """A key the server never published, with an unknown kid or pretending to be ours."""
    stranger = ECKey.generate_key("P-256", {"alg": "ES256"}, auto_kid=True)
    _refused(server, _sign(stranger, _claims(server)))
    _refused(server, _sign(stranger, _claims(server), kid=server_key.kid))


def test_another_tenants_token_is_refused_on_this_tenant(server: ServerProcess, database_url: str) -> None:
    """A valid token of tenant B used on tenant A's URL never reaches A's data (403 OperationOutcome from the
    tenant check in the bearer middleware; api.deps.tenant_of checks again)."""
    other = issue_token(database_url, tenant="other-hospital", role="admin")
    r = httpx.get(f"{server.base}/Patient?_count=1", headers={"Authorization": f"Bearer {other}"})
    assert r.status_code in (401, 403)
    assert r.json()["resourceType"] == "OperationOutcome"


def test_operator_token_from_the_cli_is_accepted(server: ServerProcess, database_url: str) -> None:
    """fhir-server token: signed with the server's ES256 key, iss/aud fhir-server."""
    token = issue_token(database_url, tenant="default", role="admin")
    assert jwt.decode(token, _jwks(server), algorithms=["ES256"]).claims["iss"] == "fhir-server"
    assert httpx.get(f"{server.base}/Patient?_count=1", headers={"Authorization": f"Bearer {token}"}).status_code == 200


def _jwks(server: ServerProcess) -> Any:
    from joserfc.jwk import KeySet

    return KeySet.import_key_set(httpx.get(f"{origin_of(server.base)}/auth/jwks").json())


# -- external OpenID Connect provider ----------------------------------------------------------------

class _JwksServer:
    """A tiny JWKS endpoint on 127.0.0.1 that counts its hits (the 'identity provider')."""

    def __init__(self) -> None:
        self.jwks: dict[str, Any] = {"keys": []}
        self.hits = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.hits += 1
                body = json.dumps(outer.jwks).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/jwks"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


IDP_URL = "https://idp.hospital.test/realms/a"
IDP_FILE = "https://login.hospital.test"


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory, database_url: str) -> Iterator[dict[str, Any]]:
    url_key = RSAKey.generate_key(2048, {"alg": "RS256"}, auto_kid=True)
    file_key = ECKey.generate_key("P-256", {"alg": "ES256"}, auto_kid=True)
    jwks_server = _JwksServer()
    jwks_server.jwks = {"keys": [url_key.as_dict(private=False)]}
    jwks_file = tmp_path_factory.mktemp("idp") / "jwks.json"
    jwks_file.write_text(json.dumps({"keys": [file_key.as_dict(private=False)]}))
    providers = [
        {"issuer": IDP_URL, "audience": "fhir-api", "jwks_url": jwks_server.url, "min_refresh_seconds": 5,
         "role_claim": "realm_role", "tenant_claim": "hospital"},
        {"issuer": IDP_FILE, "audience": "fhir-api", "jwks_file": str(jwks_file), "default_tenant": "default",
         "default_role": "doctor", "allowed_tenants": ["default"]},
    ]
    srv = ServerProcess(server_env(DATABASE_URL=database_url, FHIR_OIDC_PROVIDERS=json.dumps(providers)),
                        ["--workers", "1"])
    srv.start()
    try:
        yield {"server": srv, "url_key": url_key, "file_key": file_key, "jwks": jwks_server}
    finally:
        srv.stop()
        jwks_server.httpd.shutdown()


def _idp_token(key: RSAKey | ECKey, iss: str, alg: str, **claims: Any) -> str:
    now = int(time.time())
    body = {"iss": iss, "aud": "fhir-api", "sub": "u-42", "iat": now, "exp": now + 300, "scope": "user/*.cruds", **claims}
    return jwt.encode({"alg": alg, "kid": key.kid}, body, key, algorithms=[alg])


def _get(srv: ServerProcess, token: str) -> httpx.Response:
    return httpx.get(f"{srv.base}/Patient?_count=1", headers={"Authorization": f"Bearer {token}"})


def test_external_oidc_token_accepted_through_its_jwks(idp: dict[str, Any]) -> None:
    """OpenID Connect Core §3.1.3.7: iss, aud, exp and the signature by the provider's published key;
    claims mapped to tenant and role."""
    srv = idp["server"]
    assert _get(srv, _idp_token(idp["url_key"], IDP_URL, "RS256", hospital="default", realm_role="admin")).status_code == 200
    assert _get(srv, _idp_token(idp["file_key"], IDP_FILE, "ES256")).status_code != 401
    # wrong audience, expired, a tenant the provider may not speak for, a symmetric alg
    _refused(srv, _idp_token(idp["url_key"], IDP_URL, "RS256", hospital="default", realm_role="admin", aud="other"))
    _refused(srv, _idp_token(idp["url_key"], IDP_URL, "RS256", hospital="default", realm_role="admin",
                             exp=int(time.time()) - 600))
    _refused(srv, _idp_token(idp["file_key"], IDP_FILE, "ES256", tenant="other-hospital"))
    _refused(srv, _idp_token(idp["url_key"], IDP_URL, "RS256", realm_role="admin"))  # no tenant claim, no default
    # the provider's key does not make a token "ours", nor ours the provider's
    _refused(srv, _idp_token(idp["file_key"], IDP_URL, "ES256", hospital="default", realm_role="admin"))


def test_external_oidc_key_rotation_refreshes_jwks_with_a_rate_limit(idp: dict[str, Any]) -> None:
    """Key rotation at the provider: an unknown kid triggers one JWKS refresh; forged kids cannot make
    the server fetch more than once per min_refresh_seconds."""
    srv, jwks = idp["server"], idp["jwks"]
    new_key = RSAKey.generate_key(2048, {"alg": "RS256"}, auto_kid=True)
    forged = [_idp_token(ECKey.generate_key("P-256", {"alg": "ES256"}, auto_kid=True), IDP_URL, "ES256",
                         hospital="default", realm_role="admin") for _ in range(5)]
    time.sleep(5.2)  # past the refresh interval of the start-up fetch
    jwks.jwks = {"keys": [idp["url_key"].as_dict(private=False), new_key.as_dict(private=False)]}
    before = jwks.hits
    assert _get(srv, _idp_token(new_key, IDP_URL, "RS256", hospital="default", realm_role="admin")).status_code == 200
    assert jwks.hits == before + 1
    for token in forged:
        _refused(srv, token)
    assert jwks.hits == before + 1  # rate-limited: no fetch per forged kid
