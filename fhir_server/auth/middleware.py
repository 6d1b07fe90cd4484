"""Authentication on every FHIR path but the public ones, unless the server runs in dev mode."""

from __future__ import annotations

from typing import Any

from fhir_server.api.errors import send_outcome
from fhir_server.auth.oauth import PUBLIC_PATHS as OAUTH_PUBLIC_PATHS
from fhir_server.auth.tokens import TokenVerifier
from fhir_server.errors import Issue, Unauthorized

PUBLIC_PATHS = frozenset({"/fhir/metadata"}) | OAUTH_PUBLIC_PATHS


class BearerAuth:
    def __init__(self, app: Any, *, verifier: TokenVerifier | None) -> None:
        self.app = app
        self.verifier = verifier  # None: development mode, authentication off

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or self.verifier is None or scope["path"] in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        token = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                kind, _, rest = value.decode("latin-1").partition(" ")
                if kind.lower() == "bearer" and rest.strip():
                    token = rest.strip()
                break
        try:
            if token is None:
                raise Unauthorized("Authentication required: send Authorization: Bearer <token>")
            principal = await self.verifier.authenticate(token, origin=self.verifier.origin_of(scope))
        except Unauthorized as exc:
            await _deny(scope, send, exc.issues)
            return
        state = scope.setdefault("state", {})
        if principal.tenant != state.get("tenant", principal.tenant):
            # a valid token of another tenant: refused before anything runs (403, README "Tenants")
            state["refused_principal"] = principal  # who it was, for the audit row
            await _deny(scope, send, [Issue("error", "forbidden", "The token was issued for another tenant")], 403)
            return
        state["principal"] = principal
        await self.app(scope, receive, send)


async def _deny(scope: dict[str, Any], send: Any, issues: list[Issue], status: int = 401) -> None:
    headers = {"WWW-Authenticate": 'Bearer realm="fhir"'} if status == 401 else None
    await send_outcome(scope, send, status, issues, headers)
