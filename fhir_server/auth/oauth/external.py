"""Tokens of an external OpenID Connect provider (Keycloak, Entra ID, …), verified with its JWKS.

Configured in ``FHIR_OIDC_PROVIDERS`` (a JSON list of ``OidcProviderSettings``). The JWKS comes
from a file or a URL (https, or http on loopback only), is loaded at start and cached; a token
naming an unknown ``kid`` (the provider rotated its keys) triggers one refresh, at most one per
``min_refresh_seconds`` per provider, so a flood of forged ``kid``s cannot turn the server into a
request cannon against the provider. Claims map to the ``Principal`` through configurable names.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from pydantic import BaseModel, Field, field_validator, model_validator

from fhir_server.auth.tokens import LEEWAY, Principal, UnknownExternalKey
from fhir_server.errors import Unauthorized

__all__ = ["ExternalProvider", "OidcProviderSettings"]

log = logging.getLogger("fhir_server.auth.external")

ASYMMETRIC = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"})
_MAX_JWKS_BYTES = 1 << 20


class OidcProviderSettings(BaseModel):
    issuer: str  # exactly the tokens' "iss"
    audience: str  # must be in the tokens' "aud"
    jwks_url: str | None = None
    jwks_file: Path | None = None
    algorithms: list[str] = Field(default_factory=lambda: ["RS256", "ES256"])
    min_refresh_seconds: float = 60.0
    # claim mapping: where tenant / role / fhirUser / scope / patient / facilities are found
    tenant_claim: str = "tenant"
    default_tenant: str | None = None  # when the token has no tenant claim
    allowed_tenants: list[str] | None = None  # the tenants this provider may speak for (None: any)
    role_claim: str = "role"
    default_role: str | None = None
    fhir_user_claim: str = "fhirUser"
    scope_claim: str = "scope"
    patient_claim: str = "patient"
    facilities_claim: str = "facilities"
    subject_claim: str = "sub"

    @field_validator("algorithms")
    @classmethod
    def _asymmetric_only(cls, value: list[str]) -> list[str]:
        bad = [a for a in value if a not in ASYMMETRIC]
        if bad or not value:
            raise ValueError(f"only asymmetric algorithms ({', '.join(sorted(ASYMMETRIC))}); not {bad}")
        return value

    @model_validator(mode="after")
    def _one_jwks_source(self) -> OidcProviderSettings:
        if (self.jwks_url is None) == (self.jwks_file is None):
            raise ValueError("give exactly one of jwks_url and jwks_file")
        if self.jwks_url is not None:
            parts = urlsplit(self.jwks_url)
            if parts.scheme != "https" and not (parts.scheme == "http" and _is_loopback(parts.hostname)):
                raise ValueError("jwks_url: https (http only on loopback)")
        return self


def _is_loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


def _fetch(url: str) -> bytes:
    req = urllib.request.Request(url, headers={"Accept": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        body: bytes = resp.read(_MAX_JWKS_BYTES + 1)
    if len(body) > _MAX_JWKS_BYTES:
        raise ValueError("JWKS larger than 1 MiB")
    return body


class ExternalProvider:
    def __init__(self, config: OidcProviderSettings) -> None:
        self.config = config
        self.issuer = config.issuer
        self._keys: KeySet | None = None
        self._last_refresh = float("-inf")
        self._lock = asyncio.Lock()

    def _load(self) -> KeySet:
        raw = self.config.jwks_file.read_bytes() if self.config.jwks_file else _fetch(str(self.config.jwks_url))
        data = orjson.loads(raw)
        keys = [k for k in data.get("keys", []) if isinstance(k, dict) and k.get("kty") in ("RSA", "EC", "OKP") and "d" not in k]
        return KeySet.import_key_set({"keys": keys})

    async def refresh(self, *, force: bool = False) -> bool:
        """Reload the JWKS unless that happened less than ``min_refresh_seconds`` ago. True if reloaded."""
        async with self._lock:
            now = time.monotonic()
            if not force and now - self._last_refresh < self.config.min_refresh_seconds:
                return False
            self._last_refresh = now
            try:
                self._keys = await asyncio.to_thread(self._load)
            except Exception as exc:  # noqa: BLE001  (the provider is down or the file unreadable: keep the old keys)
                log.warning("could not load the JWKS of an OpenID provider",
                            extra={"issuer": self.issuer, "error": type(exc).__name__})
                return False
            log.info("loaded the JWKS of an OpenID provider", extra={"issuer": self.issuer, "keys": len(self._keys.keys)})
            return True

    def verify(self, token: str, header: dict[str, Any]) -> dict[str, Any]:
        if header.get("alg") not in self.config.algorithms:
            raise Unauthorized("The bearer token is not valid: algorithm not accepted")
        keys = self._keys
        kid = header.get("kid")
        if keys is None or (kid is not None and not any(k.kid == kid for k in keys.keys)):
            raise UnknownExternalKey(self)
        try:
            decoded = jwt.decode(token, keys, algorithms=self.config.algorithms)
            jwt.JWTClaimsRegistry(
                leeway=LEEWAY,
                iss={"essential": True, "value": self.issuer},
                aud={"essential": True, "value": self.config.audience},
                exp={"essential": True},
            ).validate(decoded.claims)
        except (JoseError, ValueError) as exc:
            reason = getattr(exc, "error", type(exc).__name__)
            raise Unauthorized(f"The bearer token is not valid: {reason}") from None
        return decoded.claims

    def principal(self, claims: dict[str, Any]) -> Principal:
        c = self.config
        tenant = claims.get(c.tenant_claim, c.default_tenant)
        role = claims.get(c.role_claim, c.default_role)
        subject = claims.get(c.subject_claim)
        if not isinstance(tenant, str) or not tenant:
            raise Unauthorized("The bearer token is not valid: no tenant")
        if c.allowed_tenants is not None and tenant not in c.allowed_tenants:
            raise Unauthorized("The bearer token is not valid: its issuer may not speak for this tenant")
        if isinstance(role, list):  # e.g. Keycloak's realm roles: the first one
            role = role[0] if role else None
        if not isinstance(role, str) or not role or not isinstance(subject, str):
            raise Unauthorized("The bearer token is not valid: no role or subject")
        scope = claims.get(c.scope_claim, "")
        if isinstance(scope, list):
            scope = " ".join(str(s) for s in scope)
        facilities = claims.get(c.facilities_claim)
        fhir_user = claims.get(c.fhir_user_claim)
        patient = claims.get(c.patient_claim)
        client_id = claims.get("client_id", claims.get("azp"))
        return Principal(
            subject, tenant, role, str(scope),
            client_id=client_id if isinstance(client_id, str) else None,
            fhir_user=fhir_user if isinstance(fhir_user, str) else None,
            patient=patient if isinstance(patient, str) else None,
            facilities=tuple(str(f) for f in facilities) if isinstance(facilities, list) else None,
        )
