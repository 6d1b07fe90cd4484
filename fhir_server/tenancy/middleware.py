"""The tenant of a request, from its URL: ``/fhir/{tenant}/…`` or ``/fhir/…`` (the default tenant).

Pure ASGI, outside audit and authentication. A first segment that is a tenant id (lowercase
first: ``^[a-z][a-z0-9-]{0,62}$``, not a reserved word like ``metadata``; resource types start
uppercase, operations with ``$``, ``_history``/``_search`` with ``_``) is removed from
``scope["path"]`` so routing and ``routes.shape_of`` see ``/fhir/…`` as for a single hospital, and
recorded in ``scope["state"]``: ``tenant`` (always set: the URL's or ``settings.default_tenant``) and
``tenant_segment`` (only when the URL named it; ``api.responses.base_url`` appends it, so every
link, ``Location``, ``fullUrl`` and manifest URL keeps the tenant). An unknown or suspended tenant
is 404 with an OperationOutcome. Known tenants are remembered ``ttl`` seconds per process (a
suspension takes effect within that time); unknown ones are looked up each time.
"""

from __future__ import annotations

import time
from typing import Any

from fhir_server.api.errors import send_outcome
from fhir_server.errors import Issue
from fhir_server.tenancy.store import RESERVED, TENANT_ID, is_active

_PREFIX = "/fhir/"


class TenantFromPath:
    def __init__(self, app: Any, *, default_tenant: str, ttl: float = 30.0) -> None:
        self.app = app
        self.default_tenant = default_tenant
        self.ttl = ttl
        self._known: dict[str, float] = {}  # tenant id -> monotonic time until which it counts as active

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        path: str = scope["path"]
        segment = path[len(_PREFIX):].split("/", 1)[0] if path.startswith(_PREFIX) else ""
        if not segment or segment in RESERVED or not TENANT_ID.fullmatch(segment):
            state["tenant"] = self.default_tenant
            await self.app(scope, receive, send)
            return
        if not await self._active(scope, segment):
            await _not_found(scope, send, segment)
            return
        state["tenant"] = state["tenant_segment"] = segment
        rest = path[len(_PREFIX) + len(segment):]  # "" or "/…"
        inner = dict(scope)  # the outer scope (access log) keeps the path as it came
        inner["path"] = "/fhir" + rest
        raw = scope.get("raw_path")
        if isinstance(raw, bytes) and raw.startswith(f"{_PREFIX}{segment}".encode()):
            inner["raw_path"] = b"/fhir" + raw[len(_PREFIX) + len(segment):]
        await self.app(inner, receive, send)

    async def _active(self, scope: dict[str, Any], tenant: str) -> bool:
        now = time.monotonic()
        if self._known.get(tenant, 0.0) > now:
            return True
        db = getattr(getattr(scope.get("app"), "state", None), "db", None)
        if db is None:
            return False
        async with db.connection() as conn:
            active = await is_active(conn, tenant)
        if active:
            self._known[tenant] = now + self.ttl
        else:
            self._known.pop(tenant, None)
        return active


async def _not_found(scope: dict[str, Any], send: Any, tenant: str) -> None:
    await send_outcome(scope, send, 404, [Issue("error", "not-found", f"No tenant '{tenant}' on this server")])
