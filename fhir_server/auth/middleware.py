"""Authentication on every FHIR path but the public ones, unless the server runs in dev mode."""

from __future__ import annotations

from typing import Any

import orjson

from fhir_server.auth.tokens import TokenVerifier
from fhir_server.errors import Issue, Unauthorized, operation_outcome

PUBLIC_PATHS = frozenset({"/fhir/metadata", "/.well-known/smart-configuration"})


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
            principal = self.verifier.verify(token)
        except Unauthorized as exc:
            await _deny(scope, send, exc.issues)
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)


async def _deny(scope: dict[str, Any], send: Any, issues: list[Issue]) -> None:
    rid = scope.get("state", {}).get("request_id")
    body = orjson.dumps(operation_outcome(issues, rid))
    await send({
        "type": "http.response.start",
        "status": 401,
        "headers": [
            (b"content-type", b"application/fhir+json; charset=utf-8"),
            (b"www-authenticate", b'Bearer realm="fhir"'),
            (b"content-length", str(len(body)).encode()),
        ],
    })
    await send({"type": "http.response.body", "body": body})
