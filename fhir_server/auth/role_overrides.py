"""A tenant's overrides of the role defaults: the ``role_permission`` table, its edits, and the
in-process cache of compiled ``RolePolicy`` objects.

Cache freshness. Every edit runs ``pg_notify('fhir_role_permission', tenant)`` in its own
transaction. Each server process keeps one extra connection that has run ``LISTEN`` and, at the
start of every permission check, drains what has arrived on its socket without waiting
(``PQconsumeInput`` + ``PQnotifies``: a non-blocking ``recv``, ~1–2 µs). A notification is sent
at commit, so once ``fhir-server role grant …`` has returned, the next request in every process
sees the change, with no query per request. Should the listening connection be down, cached
policies are trusted for ``FALLBACK_TTL`` seconds only, and the connection is retried; after a
reconnect the whole cache is dropped (notifications may have been missed).
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from dataclasses import dataclass
from typing import Any

import psycopg

from fhir_server.auth.permissions import INTERACTIONS, Override, RolePolicy, defaults
from fhir_server.definitions.resource_types import RESOURCE_TYPES
from fhir_server.errors import BadRequest

__all__ = ["CHANNEL", "PermissionStore", "change", "load_overrides", "reset", "show"]

log = logging.getLogger("fhir_server.auth.roles")

CHANNEL = "fhir_role_permission"
FALLBACK_TTL = 5.0  # seconds a cached policy is trusted while the LISTEN connection is down
RETRY_AFTER = 5.0
ROLE_NAME = re.compile(r"[a-z][a-z0-9-]{0,63}")
OPERATION_NAME = re.compile(r"[a-z0-9*?\[\]-]{1,64}")


# ---- the table ---------------------------------------------------------------------------------
async def load_overrides(conn: psycopg.AsyncConnection[Any], tenant: str) -> list[Override]:
    cur = await conn.execute(
        "SELECT role, resource_type, effect, interactions, operations FROM role_permission WHERE tenant_id = %s",
        (tenant,),
    )
    return [Override(r[0], r[1], r[2], frozenset(r[3]), tuple(r[4])) for r in await cur.fetchall()]


def _validate(role: str, resource_type: str, interactions: list[str], operations: list[str]) -> None:
    if not ROLE_NAME.fullmatch(role):
        raise BadRequest(f"'{role}' is not a role name (lower case letters, digits and '-')", expression="role")
    if resource_type != "*" and resource_type not in RESOURCE_TYPES:
        raise BadRequest(f"'{resource_type}' is not an R4 resource type (or *)", expression="type")
    bad = [i for i in interactions if i not in INTERACTIONS and i != "*"]
    if bad:
        raise BadRequest(f"unknown interaction {', '.join(bad)}; use {', '.join(INTERACTIONS)} or *", expression="interaction")
    bad = [o for o in operations if not OPERATION_NAME.fullmatch(o.lstrip("$"))]
    if bad:
        raise BadRequest(f"'{bad[0]}' is not an operation name or pattern", expression="operation")
    if not interactions and not operations:
        raise BadRequest("name at least one interaction or operation", expression="interaction")


async def change(
    conn: psycopg.AsyncConnection[Any], tenant: str, action: str, role: str, resource_type: str,
    interactions: list[str], operations: list[str], by: str | None,
) -> None:
    """``grant`` or ``revoke`` on (role, type): the named items move to that effect's row and out
    of the other's, so the latest command about an item wins. One transaction, with the NOTIFY."""
    assert action in ("grant", "revoke")
    _validate(role, resource_type, interactions, operations)
    inter = sorted({i for x in interactions for i in (INTERACTIONS if x == "*" else (x,))})
    ops = sorted({o.lstrip("$") for o in operations})
    effect, other = ("grant", "deny") if action == "grant" else ("deny", "grant")
    key = (tenant, role, resource_type)
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO role_permission (tenant_id, role, resource_type, effect, interactions, operations, updated_by)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (tenant_id, role, resource_type, effect) DO UPDATE SET"
            " interactions = ARRAY(SELECT DISTINCT unnest(role_permission.interactions || EXCLUDED.interactions) ORDER BY 1),"
            " operations = ARRAY(SELECT DISTINCT unnest(role_permission.operations || EXCLUDED.operations) ORDER BY 1),"
            " updated = now(), updated_by = EXCLUDED.updated_by",
            (*key, effect, inter, ops, by),
        )
        await conn.execute(
            "UPDATE role_permission SET"
            " interactions = ARRAY(SELECT unnest(interactions) EXCEPT SELECT unnest(%s::text[]) ORDER BY 1),"
            " operations = ARRAY(SELECT unnest(operations) EXCEPT SELECT unnest(%s::text[]) ORDER BY 1),"
            " updated = now(), updated_by = %s"
            " WHERE tenant_id = %s AND role = %s AND resource_type = %s AND effect = %s",
            (inter, ops, by, *key, other),
        )
        await conn.execute(
            "DELETE FROM role_permission WHERE tenant_id = %s AND role = %s AND resource_type = %s"
            " AND interactions = '{}' AND operations = '{}'",
            key,
        )
        await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, tenant))


async def reset(conn: psycopg.AsyncConnection[Any], tenant: str, role: str, resource_type: str | None) -> int:
    """Back to the shipped defaults for the role (on one type, or entirely). Returns rows removed."""
    async with conn.transaction():
        if resource_type is None:
            cur = await conn.execute("DELETE FROM role_permission WHERE tenant_id = %s AND role = %s", (tenant, role))
        else:
            cur = await conn.execute(
                "DELETE FROM role_permission WHERE tenant_id = %s AND role = %s AND resource_type = %s",
                (tenant, role, resource_type),
            )
        await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, tenant))
        return cur.rowcount


async def show(conn: psycopg.AsyncConnection[Any], tenant: str, role: str | None) -> dict[str, Any]:
    """The effective permissions (defaults + overrides) of one role or of every known role."""
    overrides = await load_overrides(conn, tenant)
    d = defaults()
    names = [role] if role else sorted(set(d.roles) | {o.role for o in overrides})
    out: dict[str, Any] = {"tenant": tenant, "roles": []}
    for name in names:
        policy = RolePolicy(name, d.roles.get(name, ()), overrides, d.explicit_operations)
        entry = policy.matrix()
        entry["description"] = d.descriptions.get(name, "a tenant-defined role" if name not in d.roles else "")
        entry["overrides"] = [
            {"type": o.resource_type, "effect": o.effect, "interactions": sorted(o.interactions), "operations": list(o.operations)}
            for o in overrides if o.role == name
        ]
        out["roles"].append(entry)
    return out


# ---- the cache ---------------------------------------------------------------------------------
@dataclass(slots=True)
class _Entry:
    overrides: list[Override]
    policies: dict[str, RolePolicy]
    loaded: float


class PermissionStore:
    """Compiled role policies per tenant, kept fresh by LISTEN/NOTIFY (see the module docstring)."""

    def __init__(self, database_url: str) -> None:
        self.url = database_url
        self._tenants: dict[str, _Entry] = {}
        self._generation: dict[str, int] = {}
        self._listener: psycopg.AsyncConnection[Any] | None = None
        self._connecting = False
        self._last_attempt = -RETRY_AFTER

    @property
    def listening(self) -> bool:
        return self._listener is not None

    def _invalidate(self, tenant: str | None) -> None:
        if tenant is None:
            self._tenants.clear()
            for t in self._generation:
                self._generation[t] += 1
        else:
            self._tenants.pop(tenant, None)
            self._generation[tenant] = self._generation.get(tenant, 0) + 1

    def poll(self) -> None:
        """Drain the notifications already received (never waits)."""
        conn = self._listener
        if conn is None:
            return
        pg = conn.pgconn
        try:
            pg.consume_input()
            while (n := pg.notifies()) is not None:
                self._invalidate(n.extra.decode())
        except psycopg.Error as exc:
            log.warning("role cache: the LISTEN connection failed; falling back to a %s s TTL", FALLBACK_TTL, extra={"error": str(exc)})
            self._listener = None
            self._last_attempt = time.monotonic()
            with contextlib.suppress(Exception):  # already broken
                pg.finish()

    async def _listen(self) -> None:
        self._connecting = True
        self._last_attempt = time.monotonic()
        try:
            conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True, application_name="fhir-role-cache")
            await conn.execute(f"LISTEN {CHANNEL}")
            self._listener = conn
            self._invalidate(None)  # whatever was cached may predate the LISTEN
        except psycopg.Error as exc:
            log.warning("role cache: cannot LISTEN; falling back to a %s s TTL", FALLBACK_TTL, extra={"error": str(exc)})
        finally:
            self._connecting = False

    async def policy(self, pool: Any, tenant: str, role: str) -> RolePolicy:
        """The role's policy in the tenant; ``pool`` (``Database`` or a bound one) loads overrides on a miss."""
        if self._listener is None and not self._connecting and time.monotonic() - self._last_attempt >= RETRY_AFTER:
            await self._listen()
        self.poll()
        entry = self._tenants.get(tenant)
        if entry is not None and self._listener is None and time.monotonic() - entry.loaded > FALLBACK_TTL:
            entry = None
        if entry is None:
            generation = self._generation.get(tenant, 0)
            async with pool.connection() as conn:
                overrides = await load_overrides(conn, tenant)
            entry = _Entry(overrides, {}, time.monotonic())
            self.poll()
            if self._generation.get(tenant, 0) == generation:  # no change arrived while loading
                self._tenants[tenant] = entry
        found = entry.policies.get(role)
        if found is None:
            d = defaults()
            found = RolePolicy(role, d.roles.get(role, ()), entry.overrides, d.explicit_operations)
            entry.policies[role] = found
        return found

    async def close(self) -> None:
        if self._listener is not None:
            await self._listener.close()
            self._listener = None
