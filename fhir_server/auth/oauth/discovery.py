"""Discovery documents: SMART App Launch 2.x ``.well-known/smart-configuration`` and OpenID's.

Served at ``/.well-known/smart-configuration``, at ``/fhir/.well-known/smart-configuration`` (the
FHIR base) and at ``/fhir/{tenant}/.well-known/smart-configuration`` (the tenancy middleware strips
the tenant segment before routing). The endpoints are shared by every tenant: a client is bound to
one tenant, so the tenant a login or token is for follows from the client; ``aud`` may name the
tenant's base (``…/fhir/{tenant}``).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from fhir_server.auth.oauth.clients import CLIENT_ASSERTION_ALGORITHMS
from fhir_server.auth.oauth.keys import ALGORITHM
from fhir_server.auth.oauth.runtime import OAuthRuntime

__all__ = ["openid_configuration", "smart_configuration"]

SCOPES_SUPPORTED = [
    "openid", "fhirUser", "profile", "launch/patient", "offline_access", "online_access",
    "patient/*.read", "patient/*.rs", "patient/*.cruds", "user/*.read", "user/*.write", "user/*.rs", "user/*.cruds",
    "system/*.read", "system/*.rs", "system/*.cruds",
]
CAPABILITIES = [
    "launch-standalone", "client-public", "client-confidential-asymmetric", "context-standalone-patient",
    "permission-offline", "permission-online", "permission-patient", "permission-user", "permission-v1",
    "permission-v2", "sso-openid-connect",
]


def _where(request: Request) -> tuple[OAuthRuntime, str]:
    rt: OAuthRuntime = request.app.state.oauth
    return rt, rt.origin(request.url.scheme, request.headers.get("host"))


async def smart_configuration(request: Request) -> JSONResponse:
    """SMART App Launch 2.x, Conformance: "Using .well-known"."""
    rt, origin = _where(request)
    doc: dict[str, Any] = {
        "issuer": rt.issuer(origin),
        "jwks_uri": f"{origin}/auth/jwks",
        "authorization_endpoint": f"{origin}/auth/authorize",
        "token_endpoint": f"{origin}/auth/token",
        "introspection_endpoint": f"{origin}/auth/introspect",
        "revocation_endpoint": f"{origin}/auth/revoke",
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "response_types_supported": ["code"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt", "none"],
        "token_endpoint_auth_signing_alg_values_supported": list(CLIENT_ASSERTION_ALGORITHMS),
        "scopes_supported": SCOPES_SUPPORTED,
        "code_challenge_methods_supported": ["S256"],
        "capabilities": CAPABILITIES,
    }
    return JSONResponse(doc, headers={"Cache-Control": "public, max-age=300"})


async def openid_configuration(request: Request) -> JSONResponse:
    """OpenID Connect Discovery 1.0 §3, for clients checking the id_token (``sso-openid-connect``)."""
    rt, origin = _where(request)
    doc = {
        "issuer": rt.issuer(origin),
        "authorization_endpoint": f"{origin}/auth/authorize",
        "token_endpoint": f"{origin}/auth/token",
        "jwks_uri": f"{origin}/auth/jwks",
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": [ALGORITHM],
        "scopes_supported": ["openid", "fhirUser"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt", "none"],
        "claims_supported": ["iss", "sub", "aud", "exp", "iat", "auth_time", "nonce", "fhirUser"],
        "code_challenge_methods_supported": ["S256"],
    }
    return JSONResponse(doc, headers={"Cache-Control": "public, max-age=300"})
