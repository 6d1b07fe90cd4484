"""Bearer tokens: JWTs signed by the server's ES256 key, or by a configured OpenID Connect provider.

Three kinds of token reach ``TokenVerifier`` and all become a ``Principal``:

- access tokens of the built-in authorization server (``fhir_server.auth.oauth``, SMART on FHIR);
- operator tokens printed by ``fhir-server token`` (same key; ``iss``/``aud`` ``fhir-server``
  unless ``FHIR_AUTH_ISSUER``/``FHIR_BASE_URL`` are set);
- tokens of an external OpenID Connect provider (``FHIR_OIDC_PROVIDERS``), checked against its
  JWKS (``fhir_server.auth.oauth.external``).

The algorithm is never taken from the token: the server's keys verify ES256 only, a provider's
keys only the asymmetric algorithms configured for it, so ``alg: none`` and HS256-signed-with-the-
public-key (key confusion) fail before any key is used.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.util import to_bytes

from fhir_server.errors import Unauthorized

if TYPE_CHECKING:
    from fhir_server.auth.oauth.external import ExternalProvider
    from fhir_server.auth.oauth.keys import ServerKeys

__all__ = ["OPERATOR_AUDIENCE", "OPERATOR_ISSUER", "Principal", "TokenVerifier", "issue_token", "sign_claims"]

OPERATOR_ISSUER = "fhir-server"
OPERATOR_AUDIENCE = "fhir-server"
ALGORITHM = "ES256"
LEEWAY = 30  # seconds of clock skew tolerated on exp / nbf / iat


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


def sign_claims(keys: ServerKeys, claims: dict[str, Any], *, typ: str = "JWT") -> str:
    header = {"alg": ALGORITHM, "kid": keys.signing.kid, "typ": typ}
    return jwt.encode(header, claims, keys.signing, algorithms=[ALGORITHM])


def issue_token(
    keys: ServerKeys, *, tenant: str, role: str, subject: str, ttl_seconds: int, scope: str = "system/*.*",
    issuer: str = OPERATOR_ISSUER, audience: str = OPERATOR_AUDIENCE,
    facilities: list[str] | None = None, patient: str | None = None, fhir_user: str | None = None,
) -> str:
    """An operator/script token (``fhir-server token``), signed with the server's current key.
    ``facilities`` binds it to those Organization/Location ids, ``patient`` confines it to that
    patient's compartment (claims ``facilities``, ``patient``: fhir_server.auth.visibility)."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": issuer, "aud": audience, "sub": subject, "tenant": tenant, "role": role, "scope": scope,
        "iat": now, "nbf": now, "exp": now + ttl_seconds, "jti": uuid.uuid4().hex,
    }
    if facilities is not None:
        claims["facilities"] = list(facilities)
    if patient is not None:
        claims["patient"] = patient
    if fhir_user is not None:
        claims["fhirUser"] = fhir_user
    return sign_claims(keys, claims)


class UnknownExternalKey(Exception):
    """A provider's token names a key not in its cached JWKS: refresh (rate-limited) and retry."""

    def __init__(self, provider: ExternalProvider) -> None:
        self.provider = provider


def _unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    import orjson

    try:
        obj = jws.extract_compact(to_bytes(token))
        claims = orjson.loads(obj.payload)
    except (JoseError, ValueError, TypeError):
        raise Unauthorized("The bearer token is not valid: not a signed JWT") from None
    if not isinstance(claims, dict):
        raise Unauthorized("The bearer token is not valid: not a signed JWT")
    return obj.headers(), claims


def _audiences(claims: dict[str, Any]) -> set[str]:
    aud = claims.get("aud")
    if isinstance(aud, str):
        return {aud}
    if isinstance(aud, list) and all(isinstance(a, str) for a in aud):
        return set(aud)
    return set()


def check_times(claims: dict[str, Any], now: float | None = None) -> None:
    now = time.time() if now is None else now
    try:
        jwt.JWTClaimsRegistry(
            now=int(now), leeway=LEEWAY, exp={"essential": True}, iat={"essential": True}
        ).validate(claims)
    except JoseError as exc:
        raise Unauthorized(f"The bearer token is not valid: {exc.error}") from None


class TokenVerifier:
    """Verifies bearer tokens. ``keys`` and ``revoked`` are replaced in place by the OAuth runtime
    when keys rotate or tokens are revoked (``fhir_server.auth.oauth.runtime``)."""

    def __init__(
        self, keys: ServerKeys, *, issuer: str | None = None, base_url: str | None = None,
        external: Iterable[ExternalProvider] = (),
    ) -> None:
        self.keys = keys
        self.issuer = issuer  # FHIR_AUTH_ISSUER: the one issuer of the server's own tokens
        self.base_url = base_url.rstrip("/") if base_url else None  # FHIR_BASE_URL
        self.revoked: set[str] = set()  # jti of access tokens revoked before their exp
        self.external = {p.issuer: p for p in external}

    # -- what a request accepts --
    def origin(self, scheme: str, host: str | None) -> str:
        """Where clients see the server: FHIR_BASE_URL's origin, else the request's scheme and Host."""
        if self.base_url:
            parts = urlsplit(self.base_url)
            return f"{parts.scheme}://{parts.netloc}"
        return f"{scheme}://{host or 'localhost'}"

    def origin_of(self, scope: dict[str, Any]) -> str:
        host = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"host"), None)
        return self.origin(str(scope.get("scheme", "http")), host)

    def own_issuers(self, origin: str | None) -> set[str]:
        if self.issuer:
            return {self.issuer, OPERATOR_ISSUER}
        return {OPERATOR_ISSUER} | ({origin} if origin else set())

    def own_audiences(self, origin: str | None, tenant: str) -> set[str]:
        bases = {self.base_url} if self.base_url else ({f"{origin}/fhir"} if origin else set())
        return {OPERATOR_AUDIENCE} | bases | {f"{b}/{tenant}" for b in bases}

    # -- verification --
    def verify(self, token: str, *, origin: str | None = None) -> Principal:
        """The Principal of a valid token, else ``Unauthorized`` (401)."""
        header, unverified = _unverified(token)
        iss = unverified.get("iss")
        provider = self.external.get(iss) if isinstance(iss, str) else None
        if provider is not None:
            claims = provider.verify(token, header)
            return provider.principal(claims)
        claims = self.verify_own(token, header, origin=origin)
        if claims["jti"] in self.revoked:
            raise Unauthorized("The bearer token is not valid: revoked")
        facilities = claims.get("facilities")
        return Principal(
            str(claims["sub"]), str(claims["tenant"]), str(claims.get("role", "")), str(claims.get("scope", "")),
            client_id=claims.get("client_id"), fhir_user=claims.get("fhirUser"), patient=claims.get("patient"),
            facilities=tuple(facilities) if isinstance(facilities, list) else None,
        )

    async def authenticate(self, token: str, *, origin: str | None = None) -> Principal:
        """``verify``, refreshing an external provider's JWKS once when it names an unknown key."""
        try:
            return self.verify(token, origin=origin)
        except UnknownExternalKey as exc:
            if not await exc.provider.refresh():
                raise Unauthorized("The bearer token is not valid: unknown signing key") from None
        try:
            return self.verify(token, origin=origin)
        except UnknownExternalKey:
            raise Unauthorized("The bearer token is not valid: unknown signing key") from None

    def verify_own(
        self, token: str, header: dict[str, Any] | None = None, *, origin: str | None = None, check_time: bool = True,
        check_audience: bool = True,
    ) -> dict[str, Any]:
        """The claims of a token signed by one of the server's keys (signature, issuer, audience, time)."""
        if header is None:
            header, _ = _unverified(token)
        if header.get("alg") != ALGORITHM:
            raise Unauthorized("The bearer token is not valid: algorithm not accepted")
        kid = header.get("kid")
        if not isinstance(kid, str) or not any(k.kid == kid for k in self.keys.verify.keys):
            raise Unauthorized("The bearer token is not valid: unknown signing key")
        try:
            decoded = jwt.decode(token, self.keys.verify, algorithms=[ALGORITHM])
        except (JoseError, ValueError):
            raise Unauthorized("The bearer token is not valid: bad signature") from None
        claims: dict[str, Any] = decoded.claims
        for name in ("sub", "tenant", "jti"):
            if not isinstance(claims.get(name), str) or not claims[name]:
                raise Unauthorized(f"The bearer token is not valid: no '{name}' claim")
        if claims.get("iss") not in self.own_issuers(origin):
            raise Unauthorized("The bearer token is not valid: wrong issuer")
        if check_audience and not _audiences(claims) & self.own_audiences(origin, claims["tenant"]):
            raise Unauthorized("The bearer token is not valid: wrong audience")
        if check_time:
            check_times(claims)
        return claims
