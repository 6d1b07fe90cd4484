"""SQL for ``$everything`` (patient-operation-everything.html, encounter-operation-everything.html):
a compartment's members, plus what they reference, read through ``idx_reference``.

No JSONB is scanned: membership comes from the index rows of the compartment's search
parameters (``idx_reference_target``: tenant, target type, target id), references from the
members' own rows (``idx_reference_owner``). Every table reference carries
``tenant_id = %(tenant)s``; deleted resources have no index rows and are filtered on ``resource``.
Only local references are followed (relative ``Type/id``: ``url IS NULL``), as in ``_include``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection

from fhir_server.auth.visibility import Access, visible_binds
from fhir_server.search.paging import PageToken, SortKey, after_condition, order_by
from fhir_server.storage.repository import StoredVersion

# focus first, then by type and id: a total order, so keyset pages never repeat or skip a row
ORDER = [
    SortKey("CASE WHEN r.resource_type = %(focus_type)s THEN 0::numeric ELSE 1::numeric END", False, "numeric", nullable=False),
    SortKey("r.resource_type", False, "text", nullable=False),
    SortKey("r.id", False, "text", nullable=False),
]


@dataclass(slots=True)
class EverythingQuery:
    tenant: str
    focus_type: str  # Patient | Encounter
    focus_ids: list[str] | None  # None: every live resource of focus_type (type-level $everything)
    member_types: list[str]  # the compartment's (type, param) links as aligned arrays
    member_params: list[str]
    # resources of another patient's compartment are never added as references: the patients
    # whose data may appear (None: any), and the Patient compartment's links to tell
    patients: list[str] | None
    patient_types: list[str]
    patient_params: list[str]
    types: list[str] | None = None  # _type
    since: datetime | None = None  # _since
    count: int = 50
    page: PageToken | None = None
    access: Access | None = None  # only what the caller may see (facility, patient context)


@dataclass(slots=True)
class EverythingPage:
    matches: list[StoredVersion]  # the focus and its compartment
    included: list[StoredVersion]  # resources they reference
    total: int
    next: PageToken | None


def _set_sql(q: EverythingQuery, binds: dict[str, Any]) -> str:
    """CTEs ``f`` (focus ids), ``m`` (members), ``x`` (references), ``s`` (all, with a member flag)."""
    binds.update(
        tenant=q.tenant, focus_type=q.focus_type, m_types=q.member_types, m_params=q.member_params,
        p_types=q.patient_types, p_params=q.patient_params,
    )
    focus = "SELECT r.id FROM resource r WHERE r.tenant_id = %(tenant)s AND r.resource_type = %(focus_type)s AND NOT r.deleted"
    if q.focus_ids is not None:
        binds["focus_ids"] = q.focus_ids
        focus += " AND r.id = ANY(%(focus_ids)s)"
    guard = ""
    if q.patients is not None:
        binds["patients"] = q.patients
        guard = (
            " WHERE (t.resource_type <> 'Patient' OR t.id = ANY(%(patients)s))"
            " AND NOT EXISTS (SELECT 1 FROM idx_reference g"
            " JOIN unnest(%(p_types)s::text[], %(p_params)s::text[]) AS pc(rt, param)"
            " ON g.resource_type = pc.rt AND g.param = pc.param"
            " WHERE g.tenant_id = %(tenant)s AND g.resource_type = t.resource_type AND g.resource_id = t.id"
            " AND g.target_type = 'Patient' AND g.url IS NULL AND NOT (g.target_id = ANY(%(patients)s)))"
        )
    return (
        f"WITH f AS ({focus}), "
        "m AS (SELECT %(focus_type)s::text AS resource_type, f.id FROM f "
        "UNION SELECT l.resource_type, l.resource_id FROM idx_reference l "
        "JOIN unnest(%(m_types)s::text[], %(m_params)s::text[]) AS c(rt, param) "
        "ON l.resource_type = c.rt AND l.param = c.param "
        "WHERE l.tenant_id = %(tenant)s AND l.target_type = %(focus_type)s AND l.url IS NULL "
        "AND l.target_id IN (SELECT id FROM f)), "
        "x AS (SELECT t.resource_type, t.id FROM (SELECT DISTINCT l.target_type AS resource_type, l.target_id AS id "
        "FROM m JOIN idx_reference l ON l.tenant_id = %(tenant)s AND l.resource_type = m.resource_type "
        "AND l.resource_id = m.id "
        "WHERE l.url IS NULL AND l.target_type IS NOT NULL AND l.target_id IS NOT NULL) t" + guard + "), "
        "s AS (SELECT resource_type, id, bool_or(member) AS member FROM "
        "(SELECT resource_type, id, true AS member FROM m UNION ALL SELECT resource_type, id, false FROM x) u "
        "GROUP BY resource_type, id) "
    )


def _filters(q: EverythingQuery, binds: dict[str, Any]) -> str:
    sql = "FROM s JOIN resource r ON r.tenant_id = %(tenant)s AND r.resource_type = s.resource_type AND r.id = s.id WHERE NOT r.deleted"
    if q.types is not None:
        binds["types"] = q.types
        sql += " AND r.resource_type = ANY(%(types)s)"
    if q.since is not None:
        binds["since"] = q.since
        sql += " AND r.last_updated >= %(since)s"
    visible = visible_binds(q.access, "r", binds)
    if visible:
        sql += f" AND {visible}"
    return sql


async def focus_patients(conn: AsyncConnection, tenant: str, focus_type: str, focus_id: str, params: list[str]) -> list[str]:
    """The patients the focus resource (e.g. an Encounter) points at through ``params``."""
    cur = await conn.execute(
        "SELECT DISTINCT target_id FROM idx_reference WHERE tenant_id = %s AND resource_type = %s AND resource_id = %s "
        "AND param = ANY(%s) AND target_type = 'Patient' AND url IS NULL AND target_id IS NOT NULL",
        (tenant, focus_type, focus_id, params),
    )
    return [str(r[0]) for r in await cur.fetchall()]


async def everything_page(conn: AsyncConnection, q: EverythingQuery) -> EverythingPage:
    binds: dict[str, Any] = {}
    head = _set_sql(q, binds)
    rest = _filters(q, binds)
    cur = await conn.execute(head + "SELECT count(*) " + rest, binds)
    row = await cur.fetchone()
    total = int(row[0]) if row else 0
    if q.count == 0:
        return EverythingPage([], [], total, None)
    cols = [f"q.s{i}" for i in range(len(ORDER))]
    sort_cols = ", ".join(f"{k.sql} AS s{i}" for i, k in enumerate(ORDER))
    sql = (
        head + "SELECT q.* FROM (SELECT r.resource_type, r.id, r.version_id, r.last_updated, r.deleted, "
        f"r.content::text AS content, s.member, {sort_cols} {rest}) q"
    )
    if q.page is not None:
        n = [0]

        def bind(v: object) -> str:
            n[0] += 1
            binds[f"k{n[0]}"] = v
            return f"%(k{n[0]})s"

        sql += " WHERE " + after_condition(ORDER, cols, q.page.values, False, bind)
    binds["limit"] = q.count + 1
    sql += f" ORDER BY {order_by(ORDER, cols, False)} LIMIT %(limit)s"
    cur = await conn.execute(sql, binds)
    fetched = await cur.fetchall()
    more = len(fetched) > q.count
    fetched = fetched[: q.count]
    matches = [StoredVersion(*r[:6]) for r in fetched if r[6]]
    included = [StoredVersion(*r[:6]) for r in fetched if not r[6]]
    nxt = PageToken(False, tuple(fetched[-1][7:])) if more and fetched else None
    return EverythingPage(matches, included, total, nxt)
