"""Running a compiled search against the resource table (tenant first, index tables via EXISTS)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from psycopg import AsyncConnection

from fhir_server.storage.repository import StoredVersion

Cursor = tuple[datetime, str]


@dataclass(slots=True)
class SearchQuery:
    tenant: str
    resource_type: str
    where_sql: str
    binds: dict[str, object]
    count: int
    after: Cursor | None = None
    with_total: bool = True


async def run_search(conn: AsyncConnection, q: SearchQuery) -> tuple[list[StoredVersion], int | None, Cursor | None]:
    binds = dict(q.binds, tenant=q.tenant, rtype=q.resource_type)
    base = "FROM resource r WHERE r.tenant_id = %(tenant)s AND r.resource_type = %(rtype)s AND NOT r.deleted"
    if q.where_sql:
        base += f" AND ({q.where_sql})"
    total = None
    if q.with_total:
        cur = await conn.execute(f"SELECT count(*) {base}", binds)
        row = await cur.fetchone()
        total = int(row[0]) if row else 0
    if q.count == 0:
        return [], total, None
    page = base
    if q.after:
        page += " AND (r.last_updated, r.id) < (%(c_t)s, %(c_id)s)"
        binds.update(c_t=q.after[0], c_id=q.after[1])
    binds["limit"] = q.count + 1
    cur = await conn.execute(
        "SELECT r.resource_type, r.id, r.version_id, r.last_updated, r.deleted, r.content::text "
        f"{page} ORDER BY r.last_updated DESC, r.id DESC LIMIT %(limit)s",
        binds,
    )
    rows = [StoredVersion(*row) for row in await cur.fetchall()]
    next_cursor = None
    if len(rows) > q.count:
        rows = rows[: q.count]
        next_cursor = (rows[-1].last_updated, rows[-1].id)
    return rows, total, next_cursor
