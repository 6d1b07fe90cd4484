"""The authorization server: authlib's grants and endpoints over our tables.

authlib's server side is synchronous, so every OAuth request runs in a worker thread on one
connection of a small psycopg (sync) pool (``OAuthRuntime.run``); its callbacks reach that
connection through ``db()``.

- Authorization code (RFC 6749 §4.1) with PKCE (RFC 7636), ``S256`` only, required of every client
  (SMART App Launch 2.x); codes are single use: consumed atomically when looked up, and a second
  use revokes what the first one issued (RFC 6749 §4.1.2, refresh tokens of that grant).
- Refresh tokens (RFC 6749 §6) rotate on every use; presenting a used one revokes the whole
  family (RFC 9700 §4.14.2). Issued only for ``offline_access``/``online_access``.
- Client credentials (RFC 6749 §4.4) for SMART Backend Services, clients authenticated with
  ``private_key_jwt`` (RFC 7523 §2.2, RS384/ES384, ``jti`` used once, ``exp`` at most 5 min ahead).
- Introspection (RFC 7662) and revocation (RFC 7009).
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import psycopg
from authlib.oauth2.rfc6749 import AuthorizationServer, OAuth2Request
from authlib.oauth2.rfc6749.errors import InvalidClientError, InvalidRequestError, InvalidScopeError
from authlib.oauth2.rfc6749.grants import AuthorizationCodeGrant, ClientCredentialsGrant, RefreshTokenGrant
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from authlib.oauth2.rfc7523.client import ASSERTION_TYPE
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from joserfc import jwt
from joserfc.errors import JoseError

from fhir_server.auth.oauth import clients as client_store
from fhir_server.auth.oauth import users as user_store
from fhir_server.auth.oauth.clients import CLIENT_ASSERTION_ALGORITHMS, Client
from fhir_server.auth.oauth.users import User
from fhir_server.auth.tokens import LEEWAY, sign_claims
from fhir_server.errors import Unauthorized

if TYPE_CHECKING:
    from fhir_server.auth.oauth.runtime import OAuthRuntime

__all__ = ["Grantee", "OAuthRequest", "SmartAuthorizationServer", "db"]

CODE_TTL = timedelta(seconds=120)
ASSERTION_MAX_AHEAD = 300  # SMART Backend Services: exp no more than five minutes in the future
REFRESH_SCOPES = frozenset({"offline_access", "online_access"})

_local = threading.local()


def db() -> psycopg.Connection[Any]:
    """The connection of the OAuth request this thread is serving."""
    conn: psycopg.Connection[Any] | None = getattr(_local, "conn", None)
    assert conn is not None, "OAuth callbacks run inside OAuthRuntime.run"
    return conn


def bind_connection(conn: psycopg.Connection[Any] | None) -> None:
    _local.conn = conn


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


class OAuthRequest(OAuth2Request):  # type: ignore[misc]
    """An authlib request from Starlette's, with where the server is seen from (issuer, FHIR base)."""

    def __init__(self, method: str, uri: str, headers: Any, params: list[tuple[str, str]], *,
                 issuer: str, fhir_base: str, token_url: str) -> None:
        super().__init__(method, uri, headers=headers)
        first: dict[str, str] = {}
        lists: defaultdict[str, list[str]] = defaultdict(list)
        for key, value in params:
            first.setdefault(key, value)
            lists[key].append(value)
        self._params = first
        self.payload = _Payload(first, lists)
        self.issuer = issuer
        self.fhir_base = fhir_base
        self.token_url = token_url

    @property
    def args(self) -> dict[str, str]:
        return self._params

    @property
    def form(self) -> dict[str, str]:
        return self._params


class _Payload:
    def __init__(self, data: dict[str, str], datalist: defaultdict[str, list[str]]) -> None:
        self.data = data
        self.datalist = datalist

    def __getattr__(self, name: str) -> Any:  # client_id, response_type, grant_type, redirect_uri, scope, state
        if name in ("client_id", "grant_type", "redirect_uri", "scope", "state"):
            return self.data.get(name)
        if name == "response_type":
            rt = self.data.get("response_type")
            return " ".join(sorted(rt.split())) if rt and " " in rt else rt
        raise AttributeError(name)


@dataclass(frozen=True, slots=True)
class Grantee:
    """The user an authorization is for, with its SMART launch context."""

    user: User
    patient: str | None = None
    aud: str | None = None
    nonce: str | None = None
    grant_id: uuid.UUID | None = None
    auth_time: int | None = None
    refresh_expires_at: datetime | None = None

    def get_user_id(self) -> str:
        return self.user.username


# -- tokens --------------------------------------------------------------------------------------

def accepted_audiences(request: OAuthRequest, tenant: str) -> set[str]:
    return {request.fhir_base, f"{request.fhir_base}/{tenant}"}


def issue_tokens(
    rt: OAuthRuntime, request: OAuthRequest, grant_type: str, client: Client, grantee: Grantee | None,
    scope: str | None, include_refresh_token: bool,
) -> dict[str, Any]:
    now = int(time.time())
    ttl = rt.settings.token_ttl_seconds
    if grant_type == "client_credentials":
        allowed = client.get_allowed_scope(scope)
        if not scope or not allowed:
            raise InvalidScopeError("scope: ask for scopes this client is registered for")
        scope = allowed
        subject, tenant, role, fhir_user = client.client_id, client.tenant, client.role or "", client.fhir_user
        patient, facilities, aud = None, None, request.fhir_base
    else:
        assert grantee is not None
        user = grantee.user
        subject, tenant, role, fhir_user = user.username, user.tenant, user.role, user.fhir_user
        patient, facilities, aud = grantee.patient, user.facilities, grantee.aud or request.fhir_base
    scope = scope or ""
    scopes = set(scope.split())
    claims: dict[str, Any] = {
        "iss": request.issuer, "aud": aud, "sub": subject, "iat": now, "nbf": now, "exp": now + ttl,
        "jti": uuid.uuid4().hex, "tenant": tenant, "role": role, "scope": scope, "client_id": client.client_id,
    }
    if fhir_user:
        claims["fhirUser"] = fhir_user
    if patient:
        claims["patient"] = patient
    if facilities is not None:
        claims["facilities"] = list(facilities)
    token: dict[str, Any] = {
        "access_token": sign_claims(rt.keys, claims, typ="at+jwt"), "token_type": "Bearer", "expires_in": ttl,
        "scope": scope,
    }
    if patient:
        token["patient"] = patient  # SMART App Launch: launch context in the token response
    if grantee is not None and "openid" in scopes:
        id_claims: dict[str, Any] = {
            "iss": request.issuer, "sub": subject, "aud": client.client_id, "iat": now, "exp": now + ttl,
            "auth_time": grantee.auth_time or now,
        }
        if grantee.nonce:
            id_claims["nonce"] = grantee.nonce
        if "fhirUser" in scopes and fhir_user:
            id_claims["fhirUser"] = f"{request.fhir_base}/{fhir_user}"
        token["id_token"] = sign_claims(rt.keys, id_claims)
    if (
        grantee is not None and include_refresh_token and scopes & REFRESH_SCOPES
        and client.check_grant_type("refresh_token")
    ):
        value = secrets.token_urlsafe(32)
        expires = grantee.refresh_expires_at or datetime.now(UTC) + timedelta(seconds=rt.settings.refresh_token_ttl_seconds)
        db().execute(
            "INSERT INTO oauth_refresh_token (token_hash, grant_id, tenant_id, client_id, username, scope, aud, "
            "launch_patient, expires_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (digest(value), grantee.grant_id or uuid.uuid4(), tenant, client.client_id, subject, scope, aud,
             patient, expires),
        )
        token["refresh_token"] = value
    return token


class _Issuing:
    """Grants issue tokens through ``issue_tokens`` (they need the request's launch context)."""

    request: OAuthRequest
    server: SmartAuthorizationServer
    GRANT_TYPE: str

    def generate_token(self, user: Grantee | None = None, scope: str | None = None, grant_type: str | None = None,
                       expires_in: int | None = None, include_refresh_token: bool = True) -> dict[str, Any]:
        return issue_tokens(self.server.runtime, self.request, grant_type or self.GRANT_TYPE, self.request.client,
                            user, scope, include_refresh_token)


def _active_user(tenant: str, username: str) -> User | None:
    user = user_store.get_user(db(), tenant, username)
    return user if user is not None and user.active else None


# -- authorization code + PKCE -------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class StoredCode:
    grant_id: uuid.UUID
    tenant: str
    client_id: str
    username: str
    redirect_uri: str | None
    scope: str
    aud: str | None
    code_challenge: str
    code_challenge_method: str
    nonce: str | None
    launch_patient: str | None
    auth_time: datetime

    def get_redirect_uri(self) -> str | None:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope


class PkceS256(CodeChallenge):  # type: ignore[misc]
    """PKCE required of every client, with ``S256`` only (SMART App Launch 2.x; RFC 9700 §2.1.1)."""

    SUPPORTED_CODE_CHALLENGE_METHOD = ("S256",)
    DEFAULT_CODE_CHALLENGE_METHOD = "S256"

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if not data.get("code_challenge"):
            raise InvalidRequestError("PKCE is required: send code_challenge with code_challenge_method=S256")
        if data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("code_challenge_method must be S256")
        super().validate_code_challenge(grant, redirect_uri)


class SmartAuthorizationCode(_Issuing, AuthorizationCodeGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = ("none", "private_key_jwt")

    def validate_authorization_request(self) -> str:
        redirect_uri: str = super().validate_authorization_request()
        if not self.request.payload.redirect_uri:
            raise InvalidRequestError("redirect_uri is required", redirect_uri=redirect_uri)
        aud = self.request.payload.data.get("aud")
        if aud not in accepted_audiences(self.request, self.request.client.tenant):
            # SMART App Launch: aud names the FHIR server the token is for; refuse any other
            raise InvalidRequestError("aud: the FHIR base URL of this server", redirect_uri=redirect_uri)
        return redirect_uri

    def save_authorization_code(self, code: str, request: OAuthRequest) -> None:
        grantee: Grantee = request.user
        data = request.payload.data
        db().execute(
            "INSERT INTO oauth_code (code_hash, grant_id, tenant_id, client_id, username, redirect_uri, scope, aud, "
            "code_challenge, code_challenge_method, nonce, launch_patient, auth_time, expires_at) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, to_timestamp(%s), now() + %s)",
            (digest(code), uuid.uuid4(), grantee.user.tenant, request.client.client_id, grantee.user.username,
             request.payload.redirect_uri, request.scope or "", data.get("aud"), data["code_challenge"],
             data["code_challenge_method"], data.get("nonce"), grantee.patient, grantee.auth_time or time.time(),
             CODE_TTL),
        )

    def query_authorization_code(self, code: str, client: Client) -> StoredCode | None:
        conn = db()
        row = conn.execute(
            "UPDATE oauth_code SET used_at = now() WHERE code_hash = %s AND used_at IS NULL "
            "RETURNING grant_id, tenant_id, client_id, username, redirect_uri, scope, aud, code_challenge, "
            "code_challenge_method, nonce, launch_patient, auth_time, expires_at > now()",
            (digest(code),),
        ).fetchone()
        if row is None:
            used = conn.execute("SELECT grant_id FROM oauth_code WHERE code_hash = %s", (digest(code),)).fetchone()
            if used is not None:  # a second use: revoke what the first one obtained
                conn.execute(
                    "UPDATE oauth_refresh_token SET revoked_at = now() WHERE grant_id = %s AND revoked_at IS NULL",
                    (used[0],),
                )
            return None
        stored = StoredCode(*row[:12])
        if not row[12] or stored.client_id != client.client_id:
            return None
        return stored

    def delete_authorization_code(self, authorization_code: StoredCode) -> None:
        pass  # consumed (used_at) when it was looked up

    def authenticate_user(self, authorization_code: StoredCode) -> Grantee | None:
        user = _active_user(authorization_code.tenant, authorization_code.username)
        if user is None:
            return None
        return Grantee(user, authorization_code.launch_patient, authorization_code.aud, authorization_code.nonce,
                       authorization_code.grant_id, int(authorization_code.auth_time.timestamp()))


# -- refresh tokens ------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class StoredRefresh:
    grant_id: uuid.UUID
    tenant: str
    client_id: str
    username: str
    scope: str
    aud: str | None
    launch_patient: str | None
    issued_at: datetime
    expires_at: datetime
    used: bool = False
    revoked: bool = False

    def check_client(self, client: Client) -> bool:
        return bool(client.client_id == self.client_id)

    def get_scope(self) -> str:
        return self.scope

    def is_expired(self) -> bool:
        return self.expires_at <= datetime.now(UTC)

    def is_revoked(self) -> bool:
        return self.revoked or self.used

    def introspection(self) -> dict[str, Any]:
        return {"active": True, "token_type": "refresh_token", "scope": self.scope, "client_id": self.client_id,
                "sub": self.username, "username": self.username, "exp": int(self.expires_at.timestamp()),
                "iat": int(self.issued_at.timestamp()), "tenant": self.tenant}

    def revoke(self) -> None:
        db().execute("UPDATE oauth_refresh_token SET revoked_at = now() WHERE grant_id = %s AND revoked_at IS NULL",
                     (self.grant_id,))


_REFRESH_COLUMNS = "grant_id, tenant_id, client_id, username, scope, aud, launch_patient, issued_at, expires_at"


class SmartRefreshToken(_Issuing, RefreshTokenGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = ("none", "private_key_jwt")
    INCLUDE_NEW_REFRESH_TOKEN = True  # rotation

    def authenticate_refresh_token(self, refresh_token: str) -> StoredRefresh | None:
        conn = db()
        client_id = self.request.client.client_id
        row = conn.execute(
            "UPDATE oauth_refresh_token SET used_at = now() WHERE token_hash = %s AND client_id = %s "
            "AND used_at IS NULL AND revoked_at IS NULL AND expires_at > now() "
            f"RETURNING {_REFRESH_COLUMNS}",
            (digest(refresh_token), client_id),
        ).fetchone()
        if row is not None:
            return StoredRefresh(*row)
        reused = conn.execute(
            "SELECT grant_id FROM oauth_refresh_token WHERE token_hash = %s AND used_at IS NOT NULL", (digest(refresh_token),)
        ).fetchone()
        if reused is not None:  # a rotated token came back: someone holds a copy; end the whole family
            conn.execute("UPDATE oauth_refresh_token SET revoked_at = now() WHERE grant_id = %s AND revoked_at IS NULL",
                         (reused[0],))
        return None

    def authenticate_user(self, refresh_token: StoredRefresh) -> Grantee | None:
        user = _active_user(refresh_token.tenant, refresh_token.username)
        if user is None:
            return None
        # the new token keeps the family and its absolute expiry: rotation does not extend a login
        return Grantee(user, refresh_token.launch_patient, refresh_token.aud, None, refresh_token.grant_id, None,
                       refresh_token.expires_at)

    def revoke_old_credential(self, refresh_token: StoredRefresh) -> None:
        pass  # marked used when it was looked up


class SmartClientCredentials(_Issuing, ClientCredentialsGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = ("private_key_jwt",)


# -- private_key_jwt -----------------------------------------------------------------------------

class PrivateKeyJwt(JWTBearerClientAssertion):  # type: ignore[misc]
    """RFC 7523 §2.2 client authentication, as SMART Backend Services profile it."""

    CLIENT_AUTH_METHOD = "private_key_jwt"

    def __init__(self) -> None:
        super().__init__(validate_jti=True, leeway=LEEWAY)

    def __call__(self, query_client: Any, request: OAuthRequest) -> Client | None:
        data = request.form
        assertion = data.get("client_assertion")
        if data.get("client_assertion_type") != ASSERTION_TYPE or not assertion:
            return None
        headers, claims = self.extract_assertion(assertion)
        if headers.get("alg") not in CLIENT_ASSERTION_ALGORITHMS:
            raise InvalidClientError(description="client_assertion must be signed with RS384 or ES384")
        sub = claims.get("sub")
        if not isinstance(sub, str) or (data.get("client_id") and data["client_id"] != sub):
            raise InvalidClientError(description="client_assertion: sub must be the client_id")
        client: Client | None = query_client(sub)
        if client is None or client.token_endpoint_auth_method != self.CLIENT_AUTH_METHOD:
            raise InvalidClientError(description="Unknown client or not a private_key_jwt client")
        try:
            decoded = jwt.decode(assertion, client.public_keys(), algorithms=list(CLIENT_ASSERTION_ALGORITHMS))
            jwt.JWTClaimsRegistry(
                leeway=self.leeway,
                iss={"essential": True, "value": sub},
                sub={"essential": True, "value": sub},
                aud={"essential": True, "value": request.token_url},
                exp={"essential": True},
                jti={"essential": True},
            ).validate(decoded.claims)
        except (JoseError, ValueError):
            raise InvalidClientError(description="client_assertion is not valid (signature, iss, sub, aud or exp)") from None
        exp = decoded.claims["exp"]
        if not isinstance(exp, int | float) or exp > time.time() + ASSERTION_MAX_AHEAD + self.leeway:
            raise InvalidClientError(description="client_assertion: exp at most five minutes ahead")
        if not self.validate_jti(decoded.claims, decoded.claims["jti"]):
            raise InvalidClientError(description="client_assertion: jti used before")
        request.client = client
        return client

    def validate_jti(self, claims: dict[str, Any], jti: str) -> bool:
        row = db().execute(
            "INSERT INTO oauth_assertion_jti (client_id, jti, expires_at) VALUES (%s, %s, to_timestamp(%s)) "
            "ON CONFLICT DO NOTHING RETURNING 1",
            (claims["sub"], jti, float(claims["exp"]) + self.leeway),
        ).fetchone()
        return row is not None


# -- introspection and revocation ----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class AccessTokenInfo:
    claims: dict[str, Any]
    revoked: bool

    @property
    def tenant(self) -> str:
        return str(self.claims["tenant"])

    def check_client(self, client: Client) -> bool:
        return bool(self.claims.get("client_id") == client.client_id)

    def is_expired(self) -> bool:
        return float(self.claims.get("exp", 0)) <= time.time()

    def is_revoked(self) -> bool:
        return self.revoked

    def introspection(self) -> dict[str, Any]:
        keep = ("scope", "client_id", "sub", "exp", "iat", "nbf", "iss", "aud", "jti", "tenant", "role",
                "fhirUser", "patient", "facilities")
        return {"active": True, "token_type": "Bearer", **{k: self.claims[k] for k in keep if k in self.claims}}

    def revoke(self) -> None:
        db().execute(
            "INSERT INTO oauth_revoked_jti (jti, expires_at) VALUES (%s, to_timestamp(%s)) ON CONFLICT DO NOTHING",
            (self.claims["jti"], float(self.claims["exp"])),
        )


def find_token(rt: OAuthRuntime, request: OAuthRequest, value: str, hint: str | None) -> Any:
    """The access token (a JWT of ours) or refresh token this string is, or None."""
    if hint != "refresh_token" and value.count(".") == 2:
        try:
            claims = rt.verifier.verify_own(value, origin=request.issuer, check_time=False, check_audience=False)
        except Unauthorized:
            claims = None
        if claims is not None:
            return AccessTokenInfo(claims, claims["jti"] in rt.verifier.revoked)
    row = db().execute(
        f"SELECT {_REFRESH_COLUMNS}, used_at IS NOT NULL, revoked_at IS NOT NULL FROM oauth_refresh_token "
        "WHERE token_hash = %s",
        (digest(value),),
    ).fetchone()
    return StoredRefresh(*row) if row else None


class SmartIntrospection(IntrospectionEndpoint):  # type: ignore[misc]
    """RFC 7662 for resource servers: a confidential client of the tenant, authenticated with
    ``private_key_jwt``, may introspect that tenant's tokens."""

    CLIENT_AUTH_METHODS = ("private_key_jwt",)

    def query_token(self, token_string: str, token_type_hint: str | None) -> Any:
        return find_token(self.server.runtime, self._request, token_string, token_type_hint)

    def authenticate_token(self, request: OAuthRequest, client: Client) -> Any:
        self._request = request
        return super().authenticate_token(request, client)

    def check_permission(self, token: Any, client: Client, request: OAuthRequest) -> bool:
        return bool(token.tenant == client.tenant)

    def introspect_token(self, token: Any) -> dict[str, Any]:
        return token.introspection()  # type: ignore[no-any-return]


class SmartRevocation(RevocationEndpoint):  # type: ignore[misc]
    """RFC 7009: a client revokes its own tokens (public clients identify with ``client_id``)."""

    CLIENT_AUTH_METHODS = ("none", "private_key_jwt")

    def authenticate_token(self, request: OAuthRequest, client: Client) -> Any:
        self._request = request
        return super().authenticate_token(request, client)

    def query_token(self, token_string: str, token_type_hint: str | None) -> Any:
        return find_token(self.server.runtime, self._request, token_string, token_type_hint)

    def revoke_token(self, token: Any, request: OAuthRequest) -> None:
        token.revoke()
        if isinstance(token, AccessTokenInfo):  # this process stops accepting it at once, the others within a poll
            self.server.runtime.verifier.revoked.add(token.claims["jti"])


# -- the server ----------------------------------------------------------------------------------

class SmartAuthorizationServer(AuthorizationServer):  # type: ignore[misc]
    def __init__(self, runtime: OAuthRuntime) -> None:
        super().__init__()
        self.runtime = runtime
        self.register_grant(SmartAuthorizationCode, [PkceS256(required=True)])
        self.register_grant(SmartRefreshToken)
        self.register_grant(SmartClientCredentials)
        self.register_client_auth_method(PrivateKeyJwt.CLIENT_AUTH_METHOD, PrivateKeyJwt())
        self.register_endpoint(SmartIntrospection)
        self.register_endpoint(SmartRevocation)

    def query_client(self, client_id: str) -> Client | None:
        client = client_store.get_client(db(), client_id)
        return client if client is not None and client.active else None

    def save_token(self, token: dict[str, Any], request: OAuthRequest) -> None:
        pass  # access tokens are self-contained JWTs; refresh tokens were stored when made

    def validate_requested_scope(self, scope: str | None) -> None:
        pass  # each client's registered scopes decide (Client.get_allowed_scope)

    def create_oauth2_request(self, request: Any) -> OAuthRequest:
        assert isinstance(request, OAuthRequest)
        return request

    def handle_response(self, status: int, body: Any, headers: Any) -> tuple[int, Any, list[tuple[str, str]]]:
        return status, body, list(headers or [])

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        pass
