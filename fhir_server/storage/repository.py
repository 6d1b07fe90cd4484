"""SQL for resources and their versions. Every statement carries the tenant.

Callers hold the connection (and the transaction); this module only reads and writes rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from psycopg import AsyncConnection

INDEX_TABLES: dict[str, tuple[str, ...]] = {
    "string": ("value_norm", "value_exact"),
    "token": ("system", "code", "text"),
    "reference": ("target_type", "target_id", "target_version", "url"),
    "date": ("low", "high"),
    "number": ("value", "low", "high"),
    "quantity": ("system", "code", "unit", "value", "low", "high"),
    "uri": ("value",),
}

_INSERT_INDEX = {
    kind: (
        f"INSERT INTO idx_{kind} (tenant_id, resource_type, resource_id, param, {', '.join(cols)}) "
        f"VALUES (%s, %s, %s, {', '.join(['%s'] * (len(cols) + 1))})"
    )
    for kind, cols in INDEX_TABLES.items()
}
_DELETE_INDEX = {
    kind: f"DELETE FROM idx_{kind} WHERE tenant_id = %s AND resource_type = %s AND resource_id = %s"
    for kind in INDEX_TABLES
}


class IndexRowsLike(Protocol):
    """What ``fhir_server.search.extract.extract_index_rows`` returns: one row list per index table."""

    string: list[tuple[Any, ...]]
    token: list[tuple[Any, ...]]
    reference: list[tuple[Any, ...]]
    date: list[tuple[Any, ...]]
    number: list[tuple[Any, ...]]
    quantity: list[tuple[Any, ...]]
    uri: list[tuple[Any, ...]]


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


async def insert_new(conn: AsyncConnection, tenant: str, v: StoredVersion) -> bool:
    """Insert the first row of a resource; False when the id is already taken (a concurrent create)."""
    cur = await conn.execute(
        "INSERT INTO resource (tenant_id, resource_type, id, version_id, last_updated, deleted, content) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s::jsonb) ON CONFLICT (tenant_id, resource_type, id) DO NOTHING",
        (tenant, v.resource_type, v.id, v.version_id, v.last_updated, v.deleted, v.content),
        prepare=True,
    )
    return cur.rowcount == 1


async def replace_current(conn: AsyncConnection, tenant: str, v: StoredVersion) -> None:
    await conn.execute(
        "UPDATE resource SET version_id = %s, last_updated = %s, deleted = %s, content = %s::jsonb "
        "WHERE tenant_id = %s AND resource_type = %s AND id = %s",
        (v.version_id, v.last_updated, v.deleted, v.content, tenant, v.resource_type, v.id),
        prepare=True,
    )


async def append_history(conn: AsyncConnection, tenant: str, v: StoredVersion) -> None:
    await conn.execute(
        "INSERT INTO resource_history "
        "(tenant_id, resource_type, id, version_id, last_updated, deleted, method, content) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s::jsonb)",
        (tenant, v.resource_type, v.id, v.version_id, v.last_updated, v.deleted, v.method, v.content),
        prepare=True,
    )


async def replace_index_rows(
    conn: AsyncConnection,
    tenant: str,
    resource_type: str,
    resource_id: str,
    rows: IndexRowsLike | None,
    *,
    had_rows: bool,
) -> None:
    """Rewrite the search-index rows of one resource (same transaction as the write)."""
    key = (tenant, resource_type, resource_id)
    async with conn.cursor() as cur:
        if had_rows:
            for kind in INDEX_TABLES:
                await cur.execute(_DELETE_INDEX[kind], key, prepare=True)
        if rows is None:
            return
        for kind in INDEX_TABLES:
            table_rows = getattr(rows, kind)
            if table_rows:
                await cur.executemany(_INSERT_INDEX[kind], [key + tuple(r) for r in table_rows])
