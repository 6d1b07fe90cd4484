"""OAuth clients (apps and backend services), one row per ``client_id``, each bound to one tenant.

Two kinds, as SMART App Launch 2.x names them:

- ``public`` (``client-public``): a browser or native app; authorization code + PKCE, no secret
  (``token_endpoint_auth_method = none``).
- ``confidential`` (``client-confidential-asymmetric``): authenticates at the token endpoint with a
  JWT signed by its own key (``private_key_jwt``, RS384 or ES384); its public keys are registered
  inline (``jwks``). SMART Backend Services use these with ``client_credentials``.

There are no client secrets: symmetric client authentication is not offered.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import psycopg
from authlib.oauth2.rfc6749 import ClientMixin
from joserfc.jwk import KeySet
from psycopg.types.json import Jsonb

__all__ = ["CLIENT_ASSERTION_ALGORITHMS", "Client", "add_client", "get_client", "list_clients", "remove_client"]

CLIENT_ASSERTION_ALGORITHMS = ("RS384", "ES384")  # SMART Backend Services (authorization, "Protocol details")
CLIENT_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


@dataclass(frozen=True, slots=True)
class Client(ClientMixin):  # type: ignore[misc]
    client_id: str
    tenant: str
    name: str
    client_type: str
    token_endpoint_auth_method: str
    grant_types: tuple[str, ...]
    redirect_uris: tuple[str, ...]
    allowed_scopes: str
    jwks: dict[str, Any] | None = None
    jwks_uri: str | None = None
    role: str | None = None
    fhir_user: str | None = None
    active: bool = True
    _allowed: frozenset[str] = field(default=frozenset(), compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_allowed", frozenset(self.allowed_scopes.split()))

    # -- authlib ClientMixin --
    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str | None:
        return self.redirect_uris[0] if len(self.redirect_uris) == 1 else None

    def get_allowed_scope(self, scope: str | None) -> str | None:
        """The requested scopes this client may have (RFC 6749 §3.3); None if none of them."""
        if not scope:
            return ""
        granted = [s for s in dict.fromkeys(scope.split()) if s in self._allowed]
        return " ".join(granted) if granted else None

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.redirect_uris  # exact match only (RFC 9700 §4.1.3)

    def check_client_secret(self, client_secret: str) -> bool:
        return False

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return self.active and method == self.token_endpoint_auth_method

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code" and "authorization_code" in self.grant_types

    def check_grant_type(self, grant_type: str) -> bool:
        return self.active and grant_type in self.grant_types

    # -- ours --
    def public_keys(self) -> KeySet:
        return KeySet.import_key_set(self.jwks or {"keys": []})

    def to_json(self) -> dict[str, Any]:
        return {
            "client_id": self.client_id, "tenant": self.tenant, "name": self.name, "client_type": self.client_type,
            "token_endpoint_auth_method": self.token_endpoint_auth_method, "grant_types": list(self.grant_types),
            "redirect_uris": list(self.redirect_uris), "scope": self.allowed_scopes, "jwks": self.jwks,
            "jwks_uri": self.jwks_uri, "role": self.role, "fhirUser": self.fhir_user, "active": self.active,
        }


_COLUMNS = (
    "client_id, tenant_id, name, client_type, token_endpoint_auth_method, grant_types, redirect_uris, "
    "allowed_scopes, jwks, jwks_uri, role, fhir_user, active"
)


def _client(row: Any) -> Client:
    return Client(row[0], row[1], row[2], row[3], row[4], tuple(row[5]), tuple(row[6]), row[7], row[8], row[9],
                  row[10], row[11], row[12])


def _check_jwks(jwks: dict[str, Any]) -> None:
    """Public keys only, of a kind that can verify RS384/ES384 (SMART Backend Services)."""
    keys = jwks.get("keys") if isinstance(jwks, dict) else None
    if not isinstance(keys, list) or not keys:
        raise ValueError("jwks: a JSON Web Key Set with at least one key")
    for key in keys:
        if not isinstance(key, dict) or key.get("kty") not in ("RSA", "EC"):
            raise ValueError("jwks: RSA or EC public keys")
        if "d" in key:
            raise ValueError("jwks: holds a private key; register only the public part")
    KeySet.import_key_set(jwks)  # raises on a malformed key


def _check_redirect_uri(uri: str) -> None:
    parts = urlsplit(uri)
    if parts.fragment or not parts.netloc and parts.scheme in ("http", "https"):
        raise ValueError(f"redirect URI {uri!r}: absolute, without a fragment")
    if parts.scheme == "http" and parts.hostname not in ("localhost", "127.0.0.1", "::1"):
        raise ValueError(f"redirect URI {uri!r}: https (http only for loopback, RFC 8252 §7.3)")
    if not parts.scheme:
        raise ValueError(f"redirect URI {uri!r}: absolute")


def add_client(
    conn: psycopg.Connection[Any], *, tenant: str, client_id: str, client_type: str, name: str = "",
    redirect_uris: list[str] | None = None, scope: str = "", jwks: dict[str, Any] | None = None,
    grant_types: list[str] | None = None, role: str | None = None, fhir_user: str | None = None,
) -> Client:
    if not CLIENT_ID.match(client_id):
        raise ValueError("client_id: 1-128 characters of letters, digits, '.', '_', ':', '-'")
    if client_type not in ("public", "confidential"):
        raise ValueError("client type: public or confidential")
    redirect_uris = redirect_uris or []
    for uri in redirect_uris:
        _check_redirect_uri(uri)
    if client_type == "public":
        method = "none"
        grant_types = grant_types or ["authorization_code", "refresh_token"]
        if "client_credentials" in grant_types:
            raise ValueError("a public client cannot use client_credentials")
        if jwks:
            raise ValueError("a public client has no keys")
    else:
        method = "private_key_jwt"
        if not jwks:
            raise ValueError("a confidential client needs its public keys (jwks)")
        _check_jwks(jwks)
        grant_types = grant_types or (["authorization_code", "refresh_token"] if redirect_uris else ["client_credentials"])
    for g in grant_types:
        if g not in ("authorization_code", "refresh_token", "client_credentials"):
            raise ValueError(f"grant type {g!r} is not offered")
    if "authorization_code" in grant_types and not redirect_uris:
        raise ValueError("authorization_code needs at least one redirect URI")
    if "client_credentials" in grant_types and not role:
        raise ValueError("a client_credentials client needs the role its tokens carry")
    row = conn.execute(
        f"INSERT INTO oauth_client ({_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, NULL, %s, %s, true) "
        f"ON CONFLICT DO NOTHING RETURNING {_COLUMNS}",
        (client_id, tenant, name, client_type, method, grant_types, redirect_uris, " ".join(scope.split()),
         Jsonb(jwks) if jwks else None, role, fhir_user),
    ).fetchone()
    if row is None:
        raise ValueError(f"client {client_id!r} exists already")
    return _client(row)


def get_client(conn: psycopg.Connection[Any], client_id: str) -> Client | None:
    row = conn.execute(f"SELECT {_COLUMNS} FROM oauth_client WHERE client_id = %s", (client_id,)).fetchone()
    return _client(row) if row else None


def list_clients(conn: psycopg.Connection[Any], tenant: str) -> list[Client]:
    rows = conn.execute(f"SELECT {_COLUMNS} FROM oauth_client WHERE tenant_id = %s ORDER BY client_id", (tenant,)).fetchall()
    return [_client(r) for r in rows]


def remove_client(conn: psycopg.Connection[Any], tenant: str, client_id: str) -> bool:
    """Deletes the client and revokes its refresh tokens; its access tokens end at their ``exp``."""
    with conn.transaction():
        cur = conn.execute("DELETE FROM oauth_client WHERE tenant_id = %s AND client_id = %s", (tenant, client_id))
        conn.execute(
            "UPDATE oauth_refresh_token SET revoked_at = now() WHERE client_id = %s AND revoked_at IS NULL", (client_id,)
        )
        conn.execute("DELETE FROM oauth_code WHERE client_id = %s", (client_id,))
    return cur.rowcount == 1
