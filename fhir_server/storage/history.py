"""Reading version history (https://hl7.org/fhir/R4/http.html#history), newest first, keyset-paged."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from psycopg import AsyncConnection

from fhir_server.auth.visibility import Access, visible_binds
from fhir_server.storage.repository import StoredVersion

# Sort key of a history row; the page cursor is the key of the last row returned.
Cursor = tuple[datetime, str, str, int]


@dataclass(slots=True)
class HistoryQuery:
    tenant: str
    resource_type: str | None = None
    resource_id: str | None = None
    since: datetime | None = None
    at: tuple[datetime, datetime] | None = None  # [low, high) the versions must have been current in
    after: Cursor | None = None
    count: int = 50
    access: Access | None = None  # versions of resources the caller may see (decided on the current one)


async def fetch_history(conn: AsyncConnection, q: HistoryQuery) -> tuple[list[StoredVersion], Cursor | None]:
    where = ["h.tenant_id = %(tenant)s"]
    binds: dict[str, object] = {"tenant": q.tenant, "limit": q.count + 1}
    if q.resource_type:
        where.append("h.resource_type = %(rtype)s")
        binds["rtype"] = q.resource_type
    if q.resource_id:
        where.append("h.id = %(rid)s")
        binds["rid"] = q.resource_id
    if q.since:
        where.append("h.last_updated >= %(since)s")
        binds["since"] = q.since
    if q.at:
        # current at some point in [low, high): made before high, and not replaced before low
        where.append(
            "h.last_updated < %(at_high)s AND NOT EXISTS (SELECT 1 FROM resource_history n "
            "WHERE n.tenant_id = h.tenant_id AND n.resource_type = h.resource_type AND n.id = h.id "
            "AND n.version_id = h.version_id + 1 AND n.last_updated <= %(at_low)s)"
        )
        binds["at_low"], binds["at_high"] = q.at
    visible = visible_binds(q.access, "h", binds, resource_type=q.resource_type)
    if visible:
        where.append(visible)
    if q.after:
        where.append("(h.last_updated, h.resource_type, h.id, h.version_id) < (%(c_t)s, %(c_rt)s, %(c_id)s, %(c_v)s)")
        binds.update(c_t=q.after[0], c_rt=q.after[1], c_id=q.after[2], c_v=q.after[3])
    cur = await conn.execute(
        "SELECT h.resource_type, h.id, h.version_id, h.last_updated, h.deleted, h.content::text, h.method "
        f"FROM resource_history h WHERE {' AND '.join(where)} "
        "ORDER BY h.last_updated DESC, h.resource_type DESC, h.id DESC, h.version_id DESC LIMIT %(limit)s",
        binds,
    )
    rows = [StoredVersion(*row) for row in await cur.fetchall()]
    next_cursor: Cursor | None = None
    if len(rows) > q.count:
        rows = rows[: q.count]
        last = rows[-1]
        next_cursor = (last.last_updated, last.resource_type, last.id, last.version_id)
    return rows, next_cursor
