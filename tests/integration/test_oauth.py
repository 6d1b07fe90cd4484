"""The built-in authorization server over real HTTP and PostgreSQL: SMART App Launch 2.x and
Backend Services, RFC 6749 / 7636 / 7523 / 7662 / 7009."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import psycopg
import pytest
from joserfc.jwk import ECKey, RSAKey

from tests.conftest import ServerProcess, issue_token, server_env
from tests.integration.smart_helpers import (
    PASSWORD,
    REDIRECT,
    add_backend_client,
    add_public_client,
    add_user,
    authorize_params,
    backend_token_request,
    client_assertion,
    code_from,
    decode,
    login_for_code,
    origin_of,
    pkce,
    server_keys,
)

APP_SCOPES = "openid fhirUser launch/patient offline_access patient/*.rs user/*.rs"


@pytest.fixture
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=origin_of(server.base), follow_redirects=False, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def app_client(database_url: str, server: ServerProcess) -> str:
    return add_public_client(database_url, APP_SCOPES)


@pytest.fixture(scope="module")
def doctor(database_url: str, server: ServerProcess) -> str:
    return add_user(database_url, role="doctor", fhir_user="Practitioner/123", facilities=["Organization/ward-a"])


def _tokens(http: httpx.Client, server: ServerProcess, client_id: str, user: str, scope: str = APP_SCOPES) -> dict:
    verifier, challenge = pkce()
    params = authorize_params(server.base, client_id, scope, challenge)
    code, _ = code_from(login_for_code(http, server.base, params, user, patient="pat-1"))
    r = http.post("/auth/token", data={"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT,
                                       "client_id": client_id, "code_verifier": verifier})
    assert r.status_code == 200, r.text
    return r.json()


# -- discovery ---------------------------------------------------------------------------------------

def test_smart_configuration_is_public_and_complete(http: httpx.Client) -> None:
    """SMART App Launch 2.x Conformance ("Using .well-known"): endpoints, PKCE S256, capabilities."""
    for path in ("/.well-known/smart-configuration", "/fhir/.well-known/smart-configuration"):
        r = http.get(path)
        assert r.status_code == 200
        doc = r.json()
        origin = str(http.base_url).rstrip("/")
        assert doc["authorization_endpoint"] == f"{origin}/auth/authorize"
        assert doc["token_endpoint"] == f"{origin}/auth/token"
        assert doc["code_challenge_methods_supported"] == ["S256"]
        assert "private_key_jwt" in doc["token_endpoint_auth_methods_supported"]
        assert set(doc["token_endpoint_auth_signing_alg_values_supported"]) == {"RS384", "ES384"}
        for cap in ("launch-standalone", "client-public", "client-confidential-asymmetric", "context-standalone-patient",
                    "permission-v1", "permission-v2", "sso-openid-connect"):
            assert cap in doc["capabilities"]
        assert {"authorization_code", "client_credentials", "refresh_token"} <= set(doc["grant_types_supported"])
    assert http.get("/.well-known/openid-configuration").json()["jwks_uri"].endswith("/auth/jwks")


def test_jwks_publishes_public_keys_only(http: httpx.Client) -> None:
    """RFC 7517: the server's keys, with no private part."""
    keys = http.get("/auth/jwks").json()["keys"]
    assert keys and all(k["kty"] == "EC" and "d" not in k and k["kid"] for k in keys)


# -- authorization code + PKCE -----------------------------------------------------------------------

def test_authorization_code_flow_with_pkce(http: httpx.Client, server: ServerProcess, app_client: str, doctor: str) -> None:
    """RFC 6749 §4.1 + RFC 7636 + SMART App Launch: login, consent, code, token with launch context and id_token."""
    verifier, challenge = pkce()
    params = authorize_params(server.base, app_client, APP_SCOPES, challenge)
    page = http.get("/auth/login", params=params)
    assert page.status_code == 200
    assert "launch/patient" in page.text and "patient/*.rs" in page.text  # the consent lists the scopes
    assert page.headers["x-frame-options"] == "DENY" and "frame-ancestors 'none'" in page.headers["content-security-policy"]
    code, query = code_from(login_for_code(http, server.base, params, doctor, patient="pat-1"))
    assert query["state"] == [params["state"]]
    r = http.post("/auth/token", data={"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT,
                                       "client_id": app_client, "code_verifier": verifier})
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    body = r.json()
    assert body["token_type"] == "Bearer" and body["patient"] == "pat-1" and body["refresh_token"]
    assert set(body["scope"].split()) == set(APP_SCOPES.split())
    keys = server_keys(http)
    claims = decode(body["access_token"], keys)
    origin = origin_of(server.base)
    assert claims["iss"] == origin and claims["aud"] == server.base and claims["sub"] == doctor
    assert claims["tenant"] == "default" and claims["role"] == "doctor" and claims["client_id"] == app_client
    assert claims["fhirUser"] == "Practitioner/123" and claims["patient"] == "pat-1"
    assert claims["facilities"] == ["Organization/ward-a"]
    assert claims["nbf"] <= claims["iat"] < claims["exp"] and claims["jti"]
    id_token = decode(body["id_token"], keys)
    assert id_token["aud"] == app_client and id_token["nonce"] == params["nonce"]
    assert id_token["fhirUser"] == f"{server.base}/Practitioner/123"
    # the token opens the FHIR API
    api = httpx.get(f"{server.base}/metadata", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert api.status_code == 200
    api = httpx.get(f"{server.base}/Patient?_count=1", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert api.status_code != 401


def test_wrong_code_verifier_is_refused(http: httpx.Client, server: ServerProcess, app_client: str, doctor: str) -> None:
    """RFC 7636 §4.6: a verifier that does not hash to the challenge is invalid_grant."""
    _, challenge = pkce()
    code, _ = code_from(login_for_code(http, server.base, authorize_params(server.base, app_client, APP_SCOPES, challenge),
                                       doctor, patient="pat-1"))
    other_verifier, _ = pkce()
    r = http.post("/auth/token", data={"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT,
                                       "client_id": app_client, "code_verifier": other_verifier})
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"


def test_authorization_without_pkce_or_with_plain_is_refused(http: httpx.Client, server: ServerProcess, app_client: str) -> None:
    """SMART App Launch 2.x: PKCE with S256 is required; the error goes to the registered redirect URI."""
    _, challenge = pkce()
    params = authorize_params(server.base, app_client, APP_SCOPES, challenge)
    for change in ({"code_challenge": ""}, {"code_challenge_method": "plain"}, {"code_challenge_method": ""}):
        r = http.get("/auth/authorize", params={**params, **change})
        assert r.status_code == 302
        assert r.headers["location"].startswith(REDIRECT) and "error=invalid_request" in r.headers["location"]


def test_wrong_aud_or_redirect_uri_is_refused(http: httpx.Client, server: ServerProcess, app_client: str) -> None:
    """SMART: aud must be this FHIR server; RFC 6749 §4.1.2.1: never redirect to an unregistered URI."""
    _, challenge = pkce()
    params = authorize_params(server.base, app_client, APP_SCOPES, challenge)
    r = http.get("/auth/authorize", params={**params, "aud": "https://evil.example/fhir"})
    assert r.status_code == 302 and "error=invalid_request" in r.headers["location"]
    r = http.get("/auth/authorize", params={**params, "redirect_uri": "https://evil.example/cb"})
    assert r.status_code == 400 and "location" not in r.headers and r.json()["error"] == "invalid_request"
    r = http.get("/auth/authorize", params={**params, "client_id": "no-such-client"})
    assert r.status_code == 400 and r.json()["error"] == "invalid_client"


def test_code_is_single_use_and_reuse_revokes_its_tokens(http: httpx.Client, server: ServerProcess, app_client: str,
                                                         doctor: str) -> None:
    """RFC 6749 §4.1.2: a code used twice is refused and what it issued is revoked."""
    verifier, challenge = pkce()
    code, _ = code_from(login_for_code(http, server.base, authorize_params(server.base, app_client, APP_SCOPES, challenge),
                                       doctor, patient="pat-1"))
    exchange = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT, "client_id": app_client,
                "code_verifier": verifier}
    first = http.post("/auth/token", data=exchange)
    assert first.status_code == 200
    again = http.post("/auth/token", data=exchange)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    r = http.post("/auth/token", data={"grant_type": "refresh_token", "refresh_token": first.json()["refresh_token"],
                                       "client_id": app_client})
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"


def test_refresh_token_rotates_and_reuse_ends_the_family(http: httpx.Client, server: ServerProcess, app_client: str,
                                                        doctor: str) -> None:
    """RFC 6749 §6 + RFC 9700 §4.14.2: each refresh returns a new refresh token; a used one is refused and
    revokes its successors."""
    first = _tokens(http, server, app_client, doctor)
    r = http.post("/auth/token", data={"grant_type": "refresh_token", "refresh_token": first["refresh_token"],
                                       "client_id": app_client})
    assert r.status_code == 200, r.text
    second = r.json()
    assert second["refresh_token"] != first["refresh_token"] and second["patient"] == "pat-1"
    assert decode(second["access_token"], server_keys(http))["patient"] == "pat-1"
    # narrower scope on refresh is allowed, wider is not (RFC 6749 §6)
    replay = http.post("/auth/token", data={"grant_type": "refresh_token", "refresh_token": first["refresh_token"],
                                            "client_id": app_client})
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    r = http.post("/auth/token", data={"grant_type": "refresh_token", "refresh_token": second["refresh_token"],
                                       "client_id": app_client})
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"  # the family was revoked by the replay


def test_revoked_refresh_token_is_refused(http: httpx.Client, server: ServerProcess, app_client: str, doctor: str) -> None:
    """RFC 7009 §2.1: a public client revokes its refresh token; refreshing with it then fails."""
    tokens = _tokens(http, server, app_client, doctor)
    r = http.post("/auth/revoke", data={"token": tokens["refresh_token"], "token_type_hint": "refresh_token",
                                        "client_id": app_client})
    assert r.status_code == 200
    r = http.post("/auth/token", data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"],
                                       "client_id": app_client})
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"


def test_login_refusals(http: httpx.Client, server: ServerProcess, app_client: str, doctor: str) -> None:
    """The login page: a wrong password re-shows the page (401), a missing CSRF token is 403, deny → access_denied."""
    _, challenge = pkce()
    params = authorize_params(server.base, app_client, APP_SCOPES, challenge)
    r = login_for_code(http, server.base, params, doctor, password="wrong password!!", patient="pat-1")
    assert r.status_code == 401 and "Wrong username or password" in r.text
    r = login_for_code(http, server.base, params, "nobody-at-all", patient="pat-1")
    assert r.status_code == 401
    r = login_for_code(http, server.base, params, doctor, patient="pat-1", action="deny")
    assert r.status_code == 302 and "error=access_denied" in r.headers["location"]
    with httpx.Client(base_url=origin_of(server.base), follow_redirects=False) as fresh:  # no CSRF cookie
        r = fresh.post("/auth/login", data={**params, "username": doctor, "password": PASSWORD, "action": "approve",
                                            "csrf_token": "0" * 64})
        assert r.status_code == 403


def test_disabled_user_cannot_log_in_or_refresh(http: httpx.Client, server: ServerProcess, database_url: str,
                                                app_client: str) -> None:
    """Disabling a user revokes their refresh tokens and refuses their login."""
    user = add_user(database_url)
    tokens = _tokens(http, server, app_client, user)
    from fhir_server.auth.oauth import users

    with psycopg.connect(database_url, autocommit=True) as conn:
        assert users.set_active(conn, "default", user, False)
    r = http.post("/auth/token", data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"],
                                       "client_id": app_client})
    assert r.status_code == 400
    _, challenge = pkce()
    r = login_for_code(http, server.base, authorize_params(server.base, app_client, APP_SCOPES, challenge), user,
                       patient="pat-1")
    assert r.status_code == 401


# -- SMART Backend Services: client credentials with private_key_jwt ---------------------------------

@pytest.mark.parametrize(("alg", "key"), [
    ("RS384", RSAKey.generate_key(2048, {"alg": "RS384"}, auto_kid=True)),
    ("ES384", ECKey.generate_key("P-384", {"alg": "ES384"}, auto_kid=True)),
])
def test_client_credentials_with_private_key_jwt(http: httpx.Client, server: ServerProcess, database_url: str,
                                                 alg: str, key: RSAKey | ECKey) -> None:
    """SMART Backend Services (RFC 7523 §2.2 client authentication): RS384 and ES384 assertions."""
    client_id = add_backend_client(database_url, key)
    token_url = f"{origin_of(server.base)}/auth/token"
    r = backend_token_request(http, client_assertion(key, client_id, token_url, alg))
    assert r.status_code == 200, r.text
    body = r.json()
    assert "refresh_token" not in body and body["scope"] == "system/*.rs"
    claims = decode(body["access_token"], server_keys(http))
    assert claims["sub"] == client_id and claims["role"] == "device" and claims["fhirUser"] == "Device/analyser-1"
    assert claims["client_id"] == client_id and claims["tenant"] == "default"
    r = backend_token_request(http, client_assertion(key, client_id, token_url, alg), scope="system/*.cruds")
    assert r.status_code == 400 and r.json()["error"] == "invalid_scope"  # not registered for it


def test_client_assertion_replay_wrong_aud_and_weak_alg_refused(http: httpx.Client, server: ServerProcess,
                                                                database_url: str) -> None:
    """RFC 7523 §3: jti used once, aud is the token endpoint, exp ≤ 5 min (SMART); RS256 is not accepted."""
    key = RSAKey.generate_key(2048, auto_kid=True)  # no "alg": it can sign RS256 too
    client_id = add_backend_client(database_url, key)
    token_url = f"{origin_of(server.base)}/auth/token"
    assertion = client_assertion(key, client_id, token_url, "RS384", jti="same-jti")
    assert backend_token_request(http, assertion).status_code == 200
    replay = backend_token_request(http, assertion)
    assert replay.status_code in (400, 401) and replay.json()["error"] == "invalid_client"
    for bad in (
        client_assertion(key, client_id, "https://other.example/token", "RS384"),
        client_assertion(key, client_id, token_url, "RS384", exp_in=3600),
        client_assertion(key, client_id, token_url, "RS256"),
        client_assertion(RSAKey.generate_key(2048, {"alg": "RS384"}, auto_kid=True), client_id, token_url, "RS384"),
    ):
        r = backend_token_request(http, bad)
        assert r.status_code in (400, 401) and r.json()["error"] == "invalid_client", r.text


# -- introspection and revocation --------------------------------------------------------------------

def test_introspection_active_and_inactive(http: httpx.Client, server: ServerProcess, database_url: str,
                                           app_client: str, doctor: str) -> None:
    """RFC 7662 §2.2: active with claims for a live token; {"active": false} for revoked or unknown ones."""
    key = ECKey.generate_key("P-384", {"alg": "ES384"}, auto_kid=True)
    resource_server = add_backend_client(database_url, key)
    token_url = f"{origin_of(server.base)}/auth/token"
    tokens = _tokens(http, server, app_client, doctor)

    def introspect(token: str) -> httpx.Response:
        return http.post("/auth/introspect", data={
            "token": token, "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": client_assertion(key, resource_server, token_url, "ES384"),
        })

    r = introspect(tokens["access_token"])
    assert r.status_code == 200
    body = r.json()
    assert body["active"] is True and body["sub"] == doctor and body["client_id"] == app_client
    assert body["patient"] == "pat-1" and body["tenant"] == "default"
    assert introspect(tokens["refresh_token"]).json()["active"] is True
    assert introspect("not-a-token").json() == {"active": False}
    # unauthenticated introspection is refused
    assert http.post("/auth/introspect", data={"token": tokens["access_token"]}).status_code in (400, 401)
    # revoke the access token: inactive, and the FHIR API refuses it (every worker within a poll interval)
    assert http.post("/auth/revoke", data={"token": tokens["access_token"], "client_id": app_client}).status_code == 200
    assert introspect(tokens["access_token"]).json() == {"active": False}
    deadline = time.monotonic() + 15  # each worker polls every 2 s; a loaded machine may be slower
    statuses: list[int] = []
    while time.monotonic() < deadline:
        time.sleep(1)
        statuses = [httpx.get(f"{server.base}/Patient?_count=1",
                              headers={"Authorization": f"Bearer {tokens['access_token']}"}).status_code
                    for _ in range(6)]  # spread over both workers
        if set(statuses) == {401}:
            break
    assert set(statuses) == {401}


def test_client_cannot_revoke_another_clients_token(http: httpx.Client, server: ServerProcess, database_url: str,
                                                    app_client: str, doctor: str) -> None:
    """RFC 7009 §2.1: the token must have been issued to the client asking."""
    tokens = _tokens(http, server, app_client, doctor)
    other = add_public_client(database_url, APP_SCOPES)
    r = http.post("/auth/revoke", data={"token": tokens["refresh_token"], "client_id": other})
    assert r.status_code == 400
    r = http.post("/auth/token", data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"],
                                       "client_id": app_client})
    assert r.status_code == 200


# -- management: admin API and command line ----------------------------------------------------------

def test_admin_api_manages_users_and_clients(server: ServerProcess, database_url: str) -> None:
    """/admin (role admin): add, list, disable users; add, list, remove clients; others get 403."""
    admin = {"Authorization": f"Bearer {issue_token(database_url, tenant='default', role='admin')}"}
    origin = origin_of(server.base)
    name = f"nurse-{time.time_ns()}"
    r = httpx.post(f"{origin}/admin/users", headers=admin, json={"username": name, "password": PASSWORD, "role": "nurse",
                                                                  "fhirUser": "Practitioner/9"})
    assert r.status_code == 201 and r.json()["role"] == "nurse"
    assert name in [u["username"] for u in httpx.get(f"{origin}/admin/users", headers=admin).json()]
    r = httpx.patch(f"{origin}/admin/users/{name}", headers=admin, json={"active": False})
    assert r.status_code == 200 and r.json()["active"] is False
    r = httpx.post(f"{origin}/admin/users", headers=admin, json={"username": name, "password": "short", "role": "nurse"})
    assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome"
    r = httpx.post(f"{origin}/admin/clients", headers=admin, json={
        "client_id": f"app-{name}", "type": "public", "redirect_uris": [REDIRECT], "scope": "openid patient/*.rs"})
    assert r.status_code == 201
    assert httpx.delete(f"{origin}/admin/clients/app-{name}", headers=admin).status_code == 204
    nurse = {"Authorization": f"Bearer {issue_token(database_url, tenant='default', role='nurse')}"}
    assert httpx.get(f"{origin}/admin/users", headers=nurse).status_code == 403
    assert httpx.get(f"{origin}/admin/users").status_code == 401


def test_cli_user_and_client_commands(database_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """fhir-server user add|list|disable|set-password, client add --jwks|list|remove, keys list|rotate."""
    env = server_env(DATABASE_URL=database_url)

    def cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "fhir_server.cli", *args], env=env, input=stdin,
                              capture_output=True, text=True, check=False)

    name = f"clerk-{time.time_ns()}"
    assert cli("user", "add", name, "--role", "billing-clerk", stdin=PASSWORD + "\n").returncode == 0
    assert cli("user", "add", name, "--role", "billing-clerk", stdin=PASSWORD + "\n").returncode == 2  # exists
    assert name in cli("user", "list").stdout
    assert cli("user", "set-password", name, stdin="another long password\n").returncode == 0
    assert cli("user", "disable", name).returncode == 0
    assert f"{name}\tbilling-clerk\t-\t*\tdisabled" in cli("user", "list").stdout
    jwks = tmp_path / "jwks.json"
    key = ECKey.generate_key("P-384", {"alg": "ES384"}, auto_kid=True)
    jwks.write_text(json.dumps({"keys": [key.as_dict(private=False)]}))
    r = cli("client", "add", f"svc-{name}", "--type", "confidential", "--jwks", str(jwks), "--scope", "system/*.rs",
            "--role", "device")
    assert r.returncode == 0, r.stderr
    assert f"svc-{name}" in cli("client", "list").stdout
    assert cli("client", "remove", f"svc-{name}").returncode == 0
    private = tmp_path / "private.json"
    private.write_text(json.dumps({"keys": [key.as_dict(private=True)]}))
    assert cli("client", "add", "leaky", "--type", "confidential", "--jwks", str(private), "--role", "device").returncode == 2
