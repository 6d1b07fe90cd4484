"""The ``tenant`` table: one row per hospital (id, name, status, created_at). Every resource,
history, index and audit row carries its ``tenant_id``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection

from fhir_server.errors import BadRequest, VersionConflict

# a tenant id is a URL segment: lowercase first (resource types start uppercase, operations with
# "$", _history/_search with "_"), so /fhir/{tenant}/… and /fhir/… never look alike
TENANT_ID = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
# lowercase words the server (or the SMART/OAuth endpoints) may use as a first segment
RESERVED = frozenset({
    "metadata", "admin", "api", "auth", "authorize", "fhir", "health", "introspect", "jwks", "login", "logout",
    "oauth", "oauth2", "openid", "register", "revoke", "smart", "static", "system", "token", "userinfo",
    "well-known",
})
STATUSES = ("active", "suspended")


@dataclass(frozen=True, slots=True)
class Tenant:
    id: str
    name: str
    status: str
    created_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "status": self.status, "created": self.created_at.isoformat()}


def check_tenant_id(tenant_id: str) -> str:
    if not TENANT_ID.fullmatch(tenant_id) or tenant_id in RESERVED:
        raise BadRequest(
            f"'{tenant_id}' is not a valid tenant id: 1-63 characters a-z, 0-9 and '-', starting with a letter,"
            f" not one of {', '.join(sorted(RESERVED))}",
            expression="id",
        )
    return tenant_id


_COLS = "id, name, status, created_at"


async def create_tenant(conn: AsyncConnection, tenant_id: str, name: str) -> Tenant:
    """A new active tenant; 409 if the id is taken."""
    check_tenant_id(tenant_id)
    if not name.strip():
        raise BadRequest("A tenant needs a name", expression="name")
    cur = await conn.execute(
        f"INSERT INTO tenant (id, name) VALUES (%s, %s) ON CONFLICT (id) DO NOTHING RETURNING {_COLS}",
        (tenant_id, name.strip()),
    )
    row = await cur.fetchone()
    if row is None:
        raise VersionConflict(f"Tenant '{tenant_id}' exists already", expression="id")
    return Tenant(*row)


async def list_tenants(conn: AsyncConnection) -> list[Tenant]:
    cur = await conn.execute(f"SELECT {_COLS} FROM tenant ORDER BY id")
    return [Tenant(*row) for row in await cur.fetchall()]


async def is_active(conn: AsyncConnection, tenant_id: str) -> bool:
    cur = await conn.execute("SELECT 1 FROM tenant WHERE id = %s AND status = 'active'", (tenant_id,), prepare=True)
    return await cur.fetchone() is not None
