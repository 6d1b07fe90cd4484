"""SQL for resources and their versions. Every statement carries the tenant.

Callers hold the connection (and the transaction); this module only reads and writes rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any, Protocol

from psycopg import AsyncConnection

from fhir_server.audit import switch as audit_switch
from fhir_server.audit.actor import Actor, write_action
from fhir_server.audit.patient import compartment_links, patient_from_rows
from fhir_server.auth.visibility import Access, visible_binds

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


# the audit row of a successful write, in the same statement (AuditEvent.action from the interaction),
# with the patient the data belongs to (``audit.patient``: from the new index rows; a deletion has
# none, so ``{patient}`` of a replace falls back to the old rows, which the statement still sees).
# Left out while FHIR_AUDIT=off (``audit.switch``: for the benchmark only).
_AUDIT_FROM = (
    "a AS (INSERT INTO audit_event (tenant_id, recorded, action, interaction, outcome, status, agent, fhir_user, "
    "client_id, role, network, purpose, request_id, method, path, resource_type, resource_id, version_id, patient) "
    "SELECT %(t)s, %(lu)s, %(a_action)s, %(a_interaction)s, '0', %(a_status)s, %(a_agent)s, %(a_fhir_user)s, "
    "%(a_client)s, %(a_role)s, %(a_network)s, %(a_purpose)s::text[], %(a_request)s, "
    "%(a_method)s, %(a_path)s, %(rt)s, %(id)s, %(v)s, {patient} FROM {guard})"
)
_PATIENT_NEW = "%(a_patient)s::text"
_PATIENT_OLD = (
    "COALESCE(%(a_patient)s::text, (SELECT o.target_id FROM idx_reference o WHERE o.tenant_id = %(t)s "
    "AND o.resource_type = %(rt)s AND o.resource_id = %(id)s AND o.target_type = 'Patient' AND o.url IS NULL "
    "AND o.param = ANY(%(a_links)s::text[]) LIMIT 1))"
)


def _audit_cte(guard: str, patient: str, audited: bool) -> str:
    return ", " + _AUDIT_FROM.format(guard=guard, patient=patient) if audited else ""

_HISTORY_FROM = (
    "h AS (INSERT INTO resource_history "
    "(tenant_id, resource_type, id, version_id, last_updated, deleted, method, content) "
    "SELECT %(t)s, %(rt)s, %(id)s, %(v)s, %(lu)s, %(del)s, %(method)s, %(content)s::jsonb FROM {guard})"
)

# A whole write is ONE statement (atomic on its own): the resource row, its history row, its audit
# row and its index rows. Measured: ~7 round trips per create and ~14 per update before, 1 now.
# One text per set of index tables that get rows (a handful per resource type), prepared per connection.
@cache
def _create_sql(kinds: tuple[str, ...], audited: bool = True) -> str:
    return (
        "WITH w AS (INSERT INTO resource (tenant_id, resource_type, id, version_id, last_updated, deleted, content) "
        "VALUES (%(t)s, %(rt)s, %(id)s, %(v)s, %(lu)s, %(del)s, %(content)s::jsonb) "
        "ON CONFLICT (tenant_id, resource_type, id) DO NOTHING RETURNING 1), "
        + _HISTORY_FROM.format(guard="w")
        + _audit_cte("w", _PATIENT_NEW, audited)
        + _index_ctes("w", delete_old=False, kinds=kinds)
        + " SELECT count(*) FROM w"
    )


@cache
def _replace_sql(kinds: tuple[str, ...], audited: bool = True) -> str:
    return (
        "WITH w AS (UPDATE resource SET version_id = %(v)s, last_updated = %(lu)s, deleted = %(del)s, "
        "content = %(content)s::jsonb WHERE " + _KEY + " AND id = %(id)s AND version_id = %(prev)s RETURNING 1), "
        + _HISTORY_FROM.format(guard="w")
        + _audit_cte("w", _PATIENT_OLD, audited)
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


def _visible(access: Access | None, alias: str, binds: dict[str, Any]) -> str:
    """`` AND <visibility>`` for a caller narrowed by facility or patient context; '' otherwise."""
    cond = visible_binds(access, alias, binds, resource_type=binds["rt"])
    return f" AND {cond}" if cond else ""


async def fetch_current(
    conn: AsyncConnection, tenant: str, resource_type: str, resource_id: str, *, for_update: bool = False,
    access: Access | None = None,
) -> StoredVersion | None:
    """The current row, or None if there is none the caller (``access``) may see."""
    if access is not None and not access.unrestricted:
        binds: dict[str, Any] = {"t": tenant, "rt": resource_type, "id": resource_id}
        sql = f"SELECT {_COLS} FROM resource r WHERE r.tenant_id = %(t)s AND r.resource_type = %(rt)s AND r.id = %(id)s"
        sql += _visible(access, "r", binds) + (" FOR UPDATE OF r" if for_update else "")
        cur = await conn.execute(sql, binds)
        row = await cur.fetchone()
        return _row(row) if row else None
    sql = f"SELECT {_COLS} FROM resource WHERE tenant_id = %s AND resource_type = %s AND id = %s"
    if for_update:
        sql += " FOR UPDATE"
    cur = await conn.execute(sql, (tenant, resource_type, resource_id), prepare=True)
    row = await cur.fetchone()
    return _row(row) if row else None


# An exact token match (``identifier=system|code``, the conditional criteria of the HL7 bridge and of most
# integration upserts) driven from ``idx_token_lookup``: the ids first (an InitPlan), then the resource rows
# by primary key. The generic builder's ``EXISTS`` shape lets the planner start from ``resource`` and probe
# the index rows of every resource of the type; with stale statistics (a growing table, a prepared generic
# plan) it did so, 3-8 ms per lookup and growing with the table (measured in bench/bench_hl7.py). This shape
# has no such plan.
_MATCH_TOKEN_SQL = (
    f"SELECT {_COLS} FROM resource WHERE tenant_id = %(t)s AND resource_type = %(rt)s AND id = ANY(ARRAY("
    "SELECT i.resource_id FROM idx_token i WHERE i.tenant_id = %(t)s AND i.resource_type = %(rt)s "
    "AND i.param = %(p)s AND i.code = %(c)s AND i.system = %(s)s)) AND NOT deleted ORDER BY id LIMIT %(n)s"
)


async def match_token(
    conn: AsyncConnection, tenant: str, resource_type: str, param: str, system: str, code: str, limit: int
) -> list[StoredVersion]:
    """Up to ``limit`` live resources with an index row ``param`` = ``system|code`` (unrestricted access)."""
    cur = await conn.execute(
        _MATCH_TOKEN_SQL, {"t": tenant, "rt": resource_type, "p": param, "s": system, "c": code, "n": limit}, prepare=True
    )
    return [_row(row) for row in await cur.fetchall()]


# Live resources whose reference index row ``param`` points at one target: the ids from
# ``idx_reference_lookup`` as an InitPlan, then the rows by primary key — the same plan whatever the
# planner believes about the tables (a freshly loaded table without statistics made the generic
# ``EXISTS`` search pick a nested loop over every row of the type: 70 ms for 250 Appointments).
_REFERRING_SQL = (
    f"SELECT {_COLS} FROM resource WHERE tenant_id = %(t)s AND resource_type = %(rt)s AND NOT deleted "
    "AND id = ANY(ARRAY(SELECT x.resource_id FROM idx_reference x WHERE x.tenant_id = %(t)s "
    "AND x.resource_type = %(rt)s AND x.param = %(p)s AND x.target_id = %(tid)s AND x.target_type = %(tt)s)) "
    "ORDER BY id LIMIT %(n)s"
)


async def referring(
    conn: AsyncConnection, tenant: str, resource_type: str, param: str, target_type: str, target_id: str, limit: int
) -> list[StoredVersion]:
    """Up to ``limit`` live ``resource_type`` resources whose reference parameter ``param`` is
    ``target_type/target_id`` (unrestricted access: the caller narrows visibility itself)."""
    binds = {"t": tenant, "rt": resource_type, "p": param, "tt": target_type, "tid": target_id, "n": limit}
    cur = await conn.execute(_REFERRING_SQL, binds, prepare=True)
    return [_row(row) for row in await cur.fetchall()]


# ``_MATCH_TOKEN_SQL`` for several criteria in one round trip (the HL7 bridge's look-ups of one message):
# the same lookup per criterion, as a LATERAL subquery over the criteria arrays.
_MATCH_TOKENS_SQL = (
    f"SELECT q.n, m.* FROM unnest(%(rt)s::text[], %(p)s::text[], %(s)s::text[], %(c)s::text[]) WITH ORDINALITY "
    f"AS q(rt, p, s, c, n) CROSS JOIN LATERAL (SELECT {_COLS} FROM resource WHERE tenant_id = %(t)s "
    "AND resource_type = q.rt AND id = ANY(ARRAY(SELECT i.resource_id FROM idx_token i WHERE i.tenant_id = %(t)s "
    "AND i.resource_type = q.rt AND i.param = q.p AND i.code = q.c AND i.system = q.s)) AND NOT deleted "
    "ORDER BY id LIMIT %(n)s) m ORDER BY q.n, m.id"
)


async def match_tokens(
    conn: AsyncConnection, tenant: str, criteria: list[tuple[str, str, str, str]], limit: int
) -> list[list[StoredVersion]]:
    """``match_token`` for each (resource_type, param, system, code) of ``criteria``, in one statement."""
    binds = {"t": tenant, "rt": [c[0] for c in criteria], "p": [c[1] for c in criteria],
             "s": [c[2] for c in criteria], "c": [c[3] for c in criteria], "n": limit}
    cur = await conn.execute(_MATCH_TOKENS_SQL, binds, prepare=True)
    out: list[list[StoredVersion]] = [[] for _ in criteria]
    for row in await cur.fetchall():
        out[int(row[0]) - 1].append(_row(row[1:]))
    return out


async def fetch_version(
    conn: AsyncConnection, tenant: str, resource_type: str, resource_id: str, version_id: int,
    *, access: Access | None = None,
) -> StoredVersion | None:
    if access is not None and not access.unrestricted:
        binds: dict[str, Any] = {"t": tenant, "rt": resource_type, "id": resource_id, "v": version_id}
        cur = await conn.execute(
            f"SELECT {_COLS}, method FROM resource_history h "
            "WHERE h.tenant_id = %(t)s AND h.resource_type = %(rt)s AND h.id = %(id)s AND h.version_id = %(v)s"
            + _visible(access, "h", binds),
            binds,
        )
    else:
        cur = await conn.execute(
            f"SELECT {_COLS}, method FROM resource_history "
            "WHERE tenant_id = %s AND resource_type = %s AND id = %s AND version_id = %s",
            (tenant, resource_type, resource_id, version_id),
            prepare=True,
        )
    row = await cur.fetchone()
    return _row(row, row[6]) if row else None


async def exists_any_version(
    conn: AsyncConnection, tenant: str, resource_type: str, resource_id: str, *, access: Access | None = None
) -> bool:
    binds: dict[str, Any] = {"t": tenant, "rt": resource_type, "id": resource_id}
    cur = await conn.execute(
        "SELECT 1 FROM resource r WHERE r.tenant_id = %(t)s AND r.resource_type = %(rt)s AND r.id = %(id)s"
        + _visible(access, "r", binds),
        binds,
    )
    return await cur.fetchone() is not None


def _write_params(tenant: str, v: StoredVersion, rows: IndexRowsLike | None, actor: Actor) -> dict[str, Any]:
    action, interaction, status = write_action(v.method, v.version_id, v.deleted)
    params: dict[str, Any] = {
        "t": tenant, "rt": v.resource_type, "id": v.id, "v": v.version_id, "lu": v.last_updated,
        "del": v.deleted, "method": v.method, "content": v.content,
        "a_action": action, "a_interaction": interaction, "a_status": status, "a_agent": actor.agent,
        "a_request": actor.request_id, "a_method": actor.method, "a_path": actor.path,
        "a_fhir_user": actor.fhir_user, "a_client": actor.client_id, "a_role": actor.role,
        "a_network": actor.network, "a_purpose": list(actor.purpose) or None,
        "a_patient": patient_from_rows(v.resource_type, v.id, rows), "a_links": list(compartment_links(v.resource_type)),
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
    return _create_sql(_kinds(rows), audit_switch.enabled()), _write_params(tenant, v, rows, actor)


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
    cur = await conn.execute(_replace_sql(_kinds(rows), audit_switch.enabled()), params, prepare=True)
    row = await cur.fetchone()
    return bool(row and row[0] == 1)


# ---- many creates in one statement (a transaction's POST entries) -------------------------------
# The resource, history, audit and index rows of many new resources, each table filled from
# column arrays by ``unnest``: one statement (one plan, one executor start, one round trip) for a
# whole bundle instead of one per entry. The history row takes the already-parsed ``jsonb`` from
# the resource insert (``RETURNING content``), so PostgreSQL parses each document once. The arrays
# go in binary (``%(x)b``): psycopg's text format escapes every quote of every JSON document with a
# regular expression (0.28 vs 0.04 ms of client CPU per Synthea entry, measured).
@cache
def _create_many_sql(kinds: tuple[str, ...], audited: bool = True) -> str:
    parts = [
        (
            "w AS (INSERT INTO resource (tenant_id, resource_type, id, version_id, last_updated, deleted, content) "
            "SELECT %(t)s, u.rt, u.id, 1, u.lu, false, u.content::jsonb "
            "FROM unnest(%(rt)b::text[], %(id)b::text[], %(lu)b::timestamptz[], %(content)b::text[]) AS u(rt, id, lu, content) "
            "ON CONFLICT (tenant_id, resource_type, id) DO NOTHING RETURNING resource_type, id, last_updated, content)"
        ),
        (
            "h AS (INSERT INTO resource_history (tenant_id, resource_type, id, version_id, last_updated, deleted, method, content) "
            "SELECT %(t)s, w.resource_type, w.id, 1, w.last_updated, false, 'POST', w.content FROM w)"
        ),
    ]
    if audited:
        parts.append(
            "a AS (INSERT INTO audit_event (tenant_id, recorded, action, interaction, outcome, status, agent, fhir_user, "
            "client_id, role, network, purpose, request_id, method, path, resource_type, resource_id, version_id, patient) "
            "SELECT %(t)s, u.lu, 'C', 'create', '0', 201, %(a_agent)s, %(a_fhir_user)s, %(a_client)s, %(a_role)s, "
            "%(a_network)s, %(a_purpose)s::text[], %(a_request)s, u.method, u.path, u.rt, u.id, 1, u.patient "
            "FROM unnest(%(lu)b::timestamptz[], %(a_method)b::text[], %(a_path)b::text[], %(rt)b::text[], %(id)b::text[], "
            "%(a_patient)s::text[]) AS u(lu, method, path, rt, id, patient))"
        )
    for kind in kinds:
        cols = _INDEX_COLUMNS[kind]
        arrays = ", ".join(
            [f"%({kind}_rt)b::text[]", f"%({kind}_id)b::text[]", f"%({kind}_0)b::text[]"]
            + [f"%({kind}_{i + 1})b::{t}[]" for i, (_, t, _) in enumerate(cols)]
        )
        values = ", ".join(["u.rt", "u.rid", "u.c0"] + [expr.format(f"u.c{i + 1}") for i, (_, _, expr) in enumerate(cols)])
        names = ", ".join(["rt", "rid"] + [f"c{i}" for i in range(len(cols) + 1)])
        parts.append(
            f"i_{kind} AS (INSERT INTO idx_{kind} (tenant_id, resource_type, resource_id, param, {', '.join(INDEX_TABLES[kind])}) "
            f"SELECT %(t)s, {values} FROM unnest({arrays}) AS u({names}))"
        )
    return "WITH " + ", ".join(parts) + " SELECT count(*) FROM w"


def create_many_statement(
    tenant: str, versions: list[StoredVersion], rows: list[IndexRowsLike], actors: list[Actor]
) -> tuple[str, dict[str, Any]]:
    """The one statement that writes version 1 of every resource in ``versions`` (``rows[i]`` and
    ``actors[i]`` belong to ``versions[i]``). All of them must be new: the statement answers how many
    resource rows it wrote, and a caller that gets fewer than ``len(versions)`` must roll back."""
    first = actors[0] if actors else SYSTEM
    params: dict[str, Any] = {
        "t": tenant, "rt": [v.resource_type for v in versions], "id": [v.id for v in versions],
        "lu": [v.last_updated for v in versions], "content": [v.content for v in versions],
        "a_agent": first.agent, "a_request": first.request_id, "a_fhir_user": first.fhir_user,
        "a_client": first.client_id, "a_role": first.role, "a_network": first.network,
        "a_purpose": list(first.purpose) or None,
        "a_patient": [patient_from_rows(v.resource_type, v.id, r) for v, r in zip(versions, rows, strict=True)],
        "a_method": [a.method for a in actors], "a_path": [a.path for a in actors],
    }
    kinds = []
    for kind in INDEX_TABLES:
        rts: list[str] = []
        ids: list[str] = []
        table: list[tuple[Any, ...]] = []
        for v, r in zip(versions, rows, strict=True):
            got = getattr(r, kind)
            if got:
                rts += [v.resource_type] * len(got)
                ids += [v.id] * len(got)
                table += got
        if not table:
            continue
        kinds.append(kind)
        params[f"{kind}_rt"], params[f"{kind}_id"] = rts, ids
        for i, column in enumerate(zip(*table, strict=True)):
            params[f"{kind}_{i}"] = list(column)
    return _create_many_sql(tuple(kinds), audit_switch.enabled()), params


async def insert_many(
    conn: AsyncConnection, tenant: str, versions: list[StoredVersion], rows: list[IndexRowsLike], actors: list[Actor]
) -> int:
    """Write version 1 of every resource in ``versions`` with history, audit and index rows in one
    statement. Returns how many resource rows were written (fewer: an id was taken; roll back)."""
    if not versions:
        return 0
    if len({(a.agent, a.request_id, a.fhir_user, a.client_id, a.role, a.network, a.purpose) for a in actors}) > 1:
        raise ValueError("insert_many writes the audit rows of one agent and request")
    sql, params = create_many_statement(tenant, versions, rows, actors)
    cur = await conn.execute(sql, params, prepare=True)
    row = await cur.fetchone()
    return int(row[0]) if row else 0
