"""Bearer tokens: short-lived JWTs (HS256) signed with the server's key.

This is the operator/script token of the foundation (``fhir-server token``); SMART on FHIR
(authorization code, client credentials, external OIDC via JWKS) builds on it later.
"""

from __future__ import annotations

import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any

import psycopg
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import OctKey

from fhir_server.errors import Unauthorized

ISSUER = "fhir-server"
ALGORITHM = "HS256"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling, as every layer sees it (set by the auth middleware in ``scope["state"]``).

    ``role`` is the role the permission matrix applies (``fhir_server.auth.permissions``);
    ``scope`` the granted OAuth/SMART scopes (space-separated); ``fhir_user`` the FHIR identity
    (``Practitioner/123``) recorded as the actor in AuditEvent and Provenance; ``patient`` the
    SMART launch patient a ``patient/`` scope confines the token to; ``facilities`` the
    Organization/Location ids a user is bound to (None: the whole tenant); ``client_id`` the
    OAuth client the token was issued to.
    """

    subject: str
    tenant: str
    role: str
    scope: str
    client_id: str | None = None
    fhir_user: str | None = None
    patient: str | None = None
    facilities: tuple[str, ...] | None = None


def load_or_create_secret(database_url: str) -> str:
    """The signing key, made once per database and shared by every process that uses it."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO server_secret (name, value) VALUES ('token-signing-key', %s) ON CONFLICT (name) DO NOTHING",
            (secrets.token_urlsafe(48),),
        )
        row = conn.execute("SELECT value FROM server_secret WHERE name = 'token-signing-key'").fetchone()
    assert row is not None
    return str(row[0])


def issue_token(secret: str, *, tenant: str, role: str, subject: str, ttl_seconds: int, scope: str = "system/*.*") -> str:
    now = int(time.time())
    claims = {
        "iss": ISSUER, "sub": subject, "tenant": tenant, "role": role, "scope": scope,
        "iat": now, "exp": now + ttl_seconds, "jti": uuid.uuid4().hex,
    }
    return jwt.encode({"alg": ALGORITHM}, claims, OctKey.import_key(secret))


class TokenVerifier:
    def __init__(self, secret: str) -> None:
        self._key = OctKey.import_key(secret)
        self._registry = jwt.JWTClaimsRegistry(
            iss={"essential": True, "value": ISSUER}, exp={"essential": True}, tenant={"essential": True}
        )

    def verify(self, token: str) -> Principal:
        try:
            decoded = jwt.decode(token, self._key, algorithms=[ALGORITHM])
            self._registry.validate(decoded.claims)
        except (JoseError, ValueError) as exc:
            raise Unauthorized(f"The bearer token is not valid: {type(exc).__name__}") from None
        claims: dict[str, Any] = decoded.claims
        return Principal(str(claims.get("sub")), str(claims["tenant"]), str(claims.get("role", "")), str(claims.get("scope", "")))
