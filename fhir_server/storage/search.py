"""Running a compiled search against the resource table (tenant first, index tables via EXISTS).

The page is a keyset page over the sort keys (``fhir_server.search.paging``): the page query
selects the sort values with each row so the boundary rows give the next/previous tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
from psycopg import AsyncConnection

from fhir_server.auth.visibility import Access, visible_binds
from fhir_server.search.normalize import url_key
from fhir_server.search.paging import PageToken, SortKey, after_condition, order_by
from fhir_server.search.sort import DEFAULT_ORDER
from fhir_server.storage.repository import StoredVersion

_COLS = "r.resource_type, r.id, r.version_id, r.last_updated, r.deleted, r.content::text AS content"


@dataclass(slots=True)
class SearchQuery:
    tenant: str
    resource_types: list[str] | None  # None: every type (system search)
    where_sql: str
    binds: dict[str, object]
    count: int
    order: list[SortKey] = field(default_factory=lambda: list(DEFAULT_ORDER))
    page: PageToken | None = None
    total: str = "accurate"  # none | estimate | accurate
    access: Access | None = None  # the caller's facility / patient-context narrowing (None: none)


@dataclass(slots=True)
class SearchPage:
    rows: list[StoredVersion]
    total: int | None
    next: PageToken | None
    previous: PageToken | None


def _base(q: SearchQuery, binds: dict[str, Any]) -> str:
    base = "FROM resource r WHERE r.tenant_id = %(tenant)s AND NOT r.deleted"
    if q.resource_types is not None:
        if len(q.resource_types) == 1:
            binds["rtype"] = q.resource_types[0]
            base += " AND r.resource_type = %(rtype)s"
        else:
            binds["rtypes"] = list(q.resource_types)
            base += " AND r.resource_type = ANY(%(rtypes)s)"
    if q.where_sql:
        base += f" AND ({q.where_sql})"
    one_type = q.resource_types[0] if q.resource_types is not None and len(q.resource_types) == 1 else None
    visible = visible_binds(q.access, "r", binds, resource_type=one_type)
    if visible:
        base += f" AND {visible}"
    return base


def _page_sql(q: SearchQuery, base: str, binds: dict[str, Any]) -> str:
    """The page query: the sort values with each row, after the page token's boundary, count + 1 rows."""
    cols = [f"q.s{i}" for i in range(len(q.order))]
    sort_cols = ", ".join(f"{k.sql} AS s{i}" for i, k in enumerate(q.order))
    backward = q.page.backward if q.page else False
    sql = f"SELECT q.* FROM (SELECT {_COLS}, {sort_cols} {base}) q"
    if q.page:
        n = [0]

        def bind(v: object) -> str:
            n[0] += 1
            binds[f"k{n[0]}"] = v
            return f"%(k{n[0]})s"

        sql += " WHERE " + after_condition(q.order, cols, q.page.values, backward, bind)
    binds["limit"] = q.count + 1
    return sql + f" ORDER BY {order_by(q.order, cols, backward)} LIMIT %(limit)s"


async def explain_search(conn: AsyncConnection, q: SearchQuery) -> list[tuple[str, str]]:
    """``EXPLAIN (ANALYZE, BUFFERS, FORMAT TEXT)`` of the count query (``_total=accurate``) and of
    the page query, with the same binds (sent by the driver, never spliced into the text)."""
    binds: dict[str, Any] = dict(q.binds, tenant=q.tenant)
    base = _base(q, binds)
    statements = [("count", f"SELECT count(*) {base}")] if q.total == "accurate" else []
    if q.count > 0:
        statements.append(("page", _page_sql(q, base, binds)))
    plans = []
    for name, sql in statements:
        cur = await conn.execute(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT TEXT) {sql}", binds)
        plans.append((name, "\n".join(str(r[0]) for r in await cur.fetchall())))
    return plans


async def run_search(conn: AsyncConnection, q: SearchQuery) -> SearchPage:
    binds: dict[str, Any] = dict(q.binds, tenant=q.tenant)
    base = _base(q, binds)
    total = None
    if q.total == "accurate":
        cur = await conn.execute(f"SELECT count(*) {base}", binds)
        row = await cur.fetchone()
        total = int(row[0]) if row else 0
    elif q.total == "estimate":
        cur = await conn.execute(f"EXPLAIN (FORMAT JSON) SELECT 1 {base}", binds)
        row = await cur.fetchone()
        plan = row[0] if row else None
        if isinstance(plan, (str, bytes)):
            plan = orjson.loads(plan)
        total = int(plan[0]["Plan"]["Plan Rows"]) if plan else 0
    if q.count == 0:
        return SearchPage([], total, None, None)
    cur = await conn.execute(_page_sql(q, base, binds), binds)
    fetched = await cur.fetchall()
    backward = q.page.backward if q.page else False
    more = len(fetched) > q.count
    fetched = fetched[: q.count]
    if backward:
        fetched.reverse()
    rows = [StoredVersion(*r[:6]) for r in fetched]
    first = PageToken(True, tuple(fetched[0][6:])) if fetched else None
    last = PageToken(False, tuple(fetched[-1][6:])) if fetched else None
    if backward:
        # came from a later page: it is the next one; a previous one only if more rows were left
        # (an empty backward page, everything before having been deleted, leaves only `first`)
        nxt = last
        prev = first if more else None
    else:
        nxt = last if more else None
        prev = first if q.page is not None and fetched else None
    return SearchPage(rows, total, nxt, prev)


async def load_conformance(
    conn: AsyncConnection, tenant: str, resource_type: str, *, url: str | None = None, id: str | None = None
) -> list[dict[str, Any]]:
    """A tenant's live ``resource_type`` resources (CodeSystem, ValueSet) with canonical ``url``
    (every version, the most recently updated first; via the ``url`` uri index) or with ``id``.
    ``terminology.StoredTerminology`` calls this when a search names a value set or code system."""
    binds: dict[str, Any] = {"tenant": tenant, "rtype": resource_type}
    sql = "SELECT r.content::text FROM resource r WHERE r.tenant_id = %(tenant)s AND r.resource_type = %(rtype)s"
    if id is not None:
        binds["id"] = id
        sql += " AND r.id = %(id)s AND NOT r.deleted"
    else:
        binds["url"] = url_key(url)
        sql += (
            " AND NOT r.deleted AND EXISTS (SELECT 1 FROM idx_uri u WHERE u.tenant_id = %(tenant)s"
            " AND u.resource_type = r.resource_type AND u.resource_id = r.id AND u.param = 'url'"
            " AND u.value = %(url)s) ORDER BY r.last_updated DESC LIMIT 100"
        )
    cur = await conn.execute(sql, binds)
    return [orjson.loads(row[0]) for row in await cur.fetchall()]
