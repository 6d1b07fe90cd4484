"""SQL for resources and their versions. Every statement carries the tenant.

Callers hold the connection (and the transaction); this module only reads and writes rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from datetime import datetime
from typing import Any, Protocol

from psycopg import AsyncConnection

from fhir_server.audit.actor import Actor, write_action

SYSTEM = Actor("system")

# Each index table's columns after ``param``: (column, PostgreSQL type of the array the write
# sends for it, and how the stored value is made from the unnested array element ``{}``).
# The one place to add an index table or column.
_INDEX_COLUMNS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "string": (("value_norm", "text", "{}"), ("value_exact", "text", "{}")),
    "token": (("system", "text", "{}"), ("code", "text", "{}"), ("text", "text", "{}")),
    "reference": (
        ("target_type", "text", "{}"), ("target_id", "text", "{}"), ("target_version", "text", "{}"), ("url", "text", "{}"),
    ),
    "date": (("low", "timestamptz", "{}"), ("high", "timestamptz", "{}")),
    "number": (("value", "numeric", "{}"), ("low", "numeric", "{}"), ("high", "numeric", "{}")),
    "quantity": (
        ("system", "text", "{}"), ("code", "text", "{}"), ("unit", "text", "{}"),
        ("value", "numeric", "{}"), ("low", "numeric", "{}"), ("high", "numeric", "{}"),
    ),
    "uri": (("value", "text", "{}"),),
    "composite": (
        ("system1", "text", "{}"), ("code1", "text", "{}"), ("system", "text", "{}"), ("code", "text", "{}"),
        ("unit", "text", "{}"), ("value", "numeric", "{}"), ("low", "numeric", "{}"), ("high", "numeric", "{}"),
        ("value_norm", "text", "{}"), ("value_exact", "text", "{}"), ("dlow", "timestamptz", "{}"), ("dhigh", "timestamptz", "{}"),
    ),
    "text": (("doc", "text", "to_tsvector('simple', {})"),),  # the document text becomes a tsvector
}
INDEX_TABLES: dict[str, tuple[str, ...]] = {
    kind: tuple(name for name, _, _ in cols) for kind, cols in _INDEX_COLUMNS.items()
}
_KEY = "tenant_id = %(t)s AND resource_type = %(rt)s"


def _index_ctes(guard: str, *, delete_old: bool, kinds: tuple[str, ...]) -> str:
    """CTEs that (optionally) delete a resource's index rows and insert the new ones of ``kinds``,
    if ``guard`` wrote. Only tables that get rows appear: an empty CTE still costs its execution."""
    parts = []
    if delete_old:
        parts += [
            f"d_{kind} AS (DELETE FROM idx_{kind} WHERE {_KEY} AND resource_id = %(id)s "
            f"AND EXISTS (SELECT 1 FROM {guard}))"
            for kind in INDEX_TABLES
        ]
    for kind in kinds:
        cols = _INDEX_COLUMNS[kind]
        # unnested as u(c0 = param, c1, c2, ...)
        arrays = ", ".join([f"%({kind}_0)s::text[]"] + [f"%({kind}_{i + 1})s::{t}[]" for i, (_, t, _) in enumerate(cols)])
        values = ", ".join(["u.c0"] + [expr.format(f"u.c{i + 1}") for i, (_, _, expr) in enumerate(cols)])
        names = ", ".join(f"c{i}" for i in range(len(cols) + 1))
        parts.append(
            f"i_{kind} AS (INSERT INTO idx_{kind} (tenant_id, resource_type, resource_id, param, {', '.join(INDEX_TABLES[kind])}) "
            f"SELECT %(t)s, %(rt)s, %(id)s, {values} FROM unnest({arrays}) AS u({names}) "
            f"WHERE EXISTS (SELECT 1 FROM {guard}))"
        )
    return "".join(", " + part for part in parts)


# the audit row of a successful write, in the same statement (AuditEvent.action from the interaction)
_AUDIT_FROM = (
    "a AS (INSERT INTO audit_event (tenant_id, recorded, action, interaction, outcome, status, agent, "
    "request_id, method, path, resource_type, resource_id, version_id) "
    "SELECT %(t)s, %(lu)s, %(a_action)s, %(a_interaction)s, '0', %(a_status)s, %(a_agent)s, %(a_request)s, "
    "%(a_method)s, %(a_path)s, %(rt)s, %(id)s, %(v)s FROM {guard})"
)

_HISTORY_FROM = (
    "h AS (INSERT INTO resource_history "
    "(tenant_id, resource_type, id, version_id, last_updated, deleted, method, content) "
    "SELECT %(t)s, %(rt)s, %(id)s, %(v)s, %(lu)s, %(del)s, %(method)s, %(content)s::jsonb FROM {guard})"
)

# A whole write is ONE statement (atomic on its own): the resource row, its history row, its audit
# row and its index rows. Measured: ~7 round trips per create and ~14 per update before, 1 now.
# One text per set of index tables that get rows (a handful per resource type), prepared per connection.
@cache
def _create_sql(kinds: tuple[str, ...]) -> str:
    return (
        "WITH w AS (INSERT INTO resource (tenant_id, resource_type, id, version_id, last_updated, deleted, content) "
        "VALUES (%(t)s, %(rt)s, %(id)s, %(v)s, %(lu)s, %(del)s, %(content)s::jsonb) "
        "ON CONFLICT (tenant_id, resource_type, id) DO NOTHING RETURNING 1), "
        + _HISTORY_FROM.format(guard="w") + ", "
        + _AUDIT_FROM.format(guard="w")
        + _index_ctes("w", delete_old=False, kinds=kinds)
        + " SELECT count(*) FROM w"
    )


@cache
def _replace_sql(kinds: tuple[str, ...]) -> str:
    return (
        "WITH w AS (UPDATE resource SET version_id = %(v)s, last_updated = %(lu)s, deleted = %(del)s, "
        "content = %(content)s::jsonb WHERE " + _KEY + " AND id = %(id)s AND version_id = %(prev)s RETURNING 1), "
        + _HISTORY_FROM.format(guard="w") + ", "
        + _AUDIT_FROM.format(guard="w")
        + _index_ctes("w", delete_old=True, kinds=kinds)
        + " SELECT count(*) FROM w"
    )


class IndexRowsLike(Protocol):
    """What ``fhir_server.search.extract.extract_index_rows`` returns: one row list per index table."""

    string: list[tuple[Any, ...]]
    token: list[tuple[Any, ...]]
    reference: list[tuple[Any, ...]]
    date: list[tuple[Any, ...]]
    number: list[tuple[Any, ...]]
    quantity: list[tuple[Any, ...]]
    uri: list[tuple[Any, ...]]
    composite: list[tuple[Any, ...]]
    text: list[tuple[str, str]]


@dataclass(slots=True)
class StoredVersion:
    resource_type: str
    id: str
    version_id: int
    last_updated: datetime
    deleted: bool
    content: str | None  # the resource as JSON text (None for a deletion)
    method: str = "PUT"


_COLS = "resource_type, id, version_id, last_updated, deleted, content::text"


def _row(row: tuple[Any, ...], method: str = "PUT") -> StoredVersion:
    return StoredVersion(row[0], row[1], row[2], row[3], row[4], row[5], method)


async def fetch_current(
    conn: AsyncConnection, tenant: str, resource_type: str, resource_id: str, *, for_update: bool = False
) -> StoredVersion | None:
    sql = f"SELECT {_COLS} FROM resource WHERE tenant_id = %s AND resource_type = %s AND id = %s"
    if for_update:
        sql += " FOR UPDATE"
    cur = await conn.execute(sql, (tenant, resource_type, resource_id), prepare=True)
    row = await cur.fetchone()
    return _row(row) if row else None


async def fetch_version(
    conn: AsyncConnection, tenant: str, resource_type: str, resource_id: str, version_id: int
) -> StoredVersion | None:
    cur = await conn.execute(
        f"SELECT {_COLS}, method FROM resource_history "
        "WHERE tenant_id = %s AND resource_type = %s AND id = %s AND version_id = %s",
        (tenant, resource_type, resource_id, version_id),
        prepare=True,
    )
    row = await cur.fetchone()
    return _row(row, row[6]) if row else None


async def exists_any_version(conn: AsyncConnection, tenant: str, resource_type: str, resource_id: str) -> bool:
    cur = await conn.execute(
        "SELECT 1 FROM resource WHERE tenant_id = %s AND resource_type = %s AND id = %s",
        (tenant, resource_type, resource_id),
    )
    return await cur.fetchone() is not None


def _write_params(tenant: str, v: StoredVersion, rows: IndexRowsLike | None, actor: Actor) -> dict[str, Any]:
    action, interaction, status = write_action(v.method, v.version_id, v.deleted)
    params: dict[str, Any] = {
        "t": tenant, "rt": v.resource_type, "id": v.id, "v": v.version_id, "lu": v.last_updated,
        "del": v.deleted, "method": v.method, "content": v.content,
        "a_action": action, "a_interaction": interaction, "a_status": status, "a_agent": actor.agent,
        "a_request": actor.request_id, "a_method": actor.method, "a_path": actor.path,
    }
    for kind in _kinds(rows):
        for i, column in enumerate(zip(*getattr(rows, kind), strict=True)):
            params[f"{kind}_{i}"] = list(column)
    return params


def _kinds(rows: IndexRowsLike | None) -> tuple[str, ...]:
    """The index tables that get rows."""
    if rows is None:
        return ()
    return tuple(kind for kind in INDEX_TABLES if getattr(rows, kind))


def create_statement(
    tenant: str, v: StoredVersion, rows: IndexRowsLike | None, actor: Actor = SYSTEM
) -> tuple[str, dict[str, Any]]:
    """The one statement that writes a new resource: its row, history row, audit row and index rows."""
    return _create_sql(_kinds(rows)), _write_params(tenant, v, rows, actor)


async def insert_first(
    conn: AsyncConnection, tenant: str, v: StoredVersion, rows: IndexRowsLike | None, actor: Actor
) -> bool:
    """Write version 1 with its history and index rows; False if the id is taken (a concurrent create)."""
    cur = await conn.execute(*create_statement(tenant, v, rows, actor), prepare=True)
    row = await cur.fetchone()
    return bool(row and row[0] == 1)


async def replace_version(
    conn: AsyncConnection, tenant: str, v: StoredVersion, previous: int, rows: IndexRowsLike | None, actor: Actor
) -> bool:
    """Write version ``v`` over ``previous`` with history and index rows; False if ``previous`` is
    no longer current (another write won): the caller re-reads, or answers 412 under If-Match."""
    params = _write_params(tenant, v, rows, actor)
    params["prev"] = previous
    cur = await conn.execute(_replace_sql(_kinds(rows)), params, prepare=True)
    row = await cur.fetchone()
    return bool(row and row[0] == 1)
