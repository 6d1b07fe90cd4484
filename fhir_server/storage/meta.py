"""SQL for the meta operations (https://hl7.org/fhir/R4/resource-operation-meta.html and
-meta-add / -meta-delete). Every statement carries the tenant.

``$meta-add``/``$meta-delete`` change ``meta`` without a new version: the resource row's and the
current history row's ``content`` are rewritten in place, and the index rows that come from
``meta`` (``_tag``/``_security`` in ``idx_token``, ``_profile`` in ``idx_uri``, and the
``_content`` document in ``idx_text``, which holds every string of the resource) are replaced,
with an audit row, in one transaction held by the caller.
"""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection

from fhir_server.audit.actor import Actor
from fhir_server.audit.patient import patient_from_rows
from fhir_server.auth.visibility import Access, visible_binds
from fhir_server.storage.repository import INDEX_TABLES

# index table kind -> the parameters whose rows come (also) from meta
META_PARAMS: dict[str, tuple[str, ...]] = {"token": ("_tag", "_security"), "uri": ("_profile",), "text": ("_content",)}
_KEY = "tenant_id = %(t)s AND resource_type = %(rt)s"


async def meta_in_use(
    conn: AsyncConnection, tenant: str, resource_type: str | None, access: Access | None = None
) -> tuple[list[tuple[str, str | None, str | None]], list[str]]:
    """Distinct ``(param, system, code)`` of ``_tag``/``_security`` and the ``_profile`` URLs of the
    tenant's live resources (deleted ones keep no index rows), of one type or of all; of the
    resources the caller (``access``) may see."""
    binds: dict[str, Any] = {"t": tenant}
    where = "tenant_id = %(t)s"
    if resource_type is not None:
        binds["rt"] = resource_type
        where += " AND resource_type = %(rt)s"
    visible = visible_binds(access, "r", binds)
    if visible:
        where += (
            " AND EXISTS (SELECT 1 FROM resource r WHERE r.tenant_id = %(t)s AND r.resource_type = x.resource_type"
            f" AND r.id = x.resource_id AND {visible})"
        )
    cur = await conn.execute(
        f"SELECT DISTINCT param, system, code FROM idx_token x WHERE {where} AND param IN ('_tag', '_security') "
        "ORDER BY param, system, code",
        binds,
    )
    codings = [(str(r[0]), r[1], r[2]) for r in await cur.fetchall()]
    cur = await conn.execute(
        f"SELECT DISTINCT value FROM idx_uri x WHERE {where} AND param = '_profile' ORDER BY value", binds
    )
    profiles = [str(r[0]) for r in await cur.fetchall()]
    return codings, profiles


async def rewrite_meta(
    conn: AsyncConnection,
    tenant: str,
    resource_type: str,
    resource_id: str,
    version_id: int,
    content: str,
    rows: Any,
    actor: Actor,
) -> bool:
    """Store ``content`` as version ``version_id`` (still current) and refresh the meta index rows.
    False if that version is no longer current. Run inside a transaction."""
    key = {"t": tenant, "rt": resource_type, "id": resource_id, "v": version_id, "c": content}
    cur = await conn.execute(
        f"UPDATE resource SET content = %(c)s::jsonb WHERE {_KEY} AND id = %(id)s AND version_id = %(v)s "
        "AND NOT deleted RETURNING last_updated",
        key,
    )
    if await cur.fetchone() is None:
        return False
    await conn.execute(
        f"UPDATE resource_history SET content = %(c)s::jsonb WHERE {_KEY} AND id = %(id)s AND version_id = %(v)s", key
    )
    for kind, params in META_PARAMS.items():
        await conn.execute(
            f"DELETE FROM idx_{kind} WHERE {_KEY} AND resource_id = %(id)s AND param = ANY(%(p)s)",
            {**key, "p": list(params)},
        )
        new = [row for row in getattr(rows, kind) if row[0] in params]
        if not new:
            continue
        columns = INDEX_TABLES[kind]
        values = ", ".join(
            "to_tsvector('simple', %s)" if kind == "text" else "%s" for _ in columns
        )
        async with conn.cursor() as c:
            await c.executemany(
                f"INSERT INTO idx_{kind} (tenant_id, resource_type, resource_id, param, {', '.join(columns)}) "
                f"VALUES (%s, %s, %s, %s, {values})",
                [(tenant, resource_type, resource_id, *row) for row in new],
            )
    await conn.execute(
        "INSERT INTO audit_event (tenant_id, recorded, action, interaction, outcome, status, agent, request_id, "
        "method, path, resource_type, resource_id, version_id, fhir_user, client_id, role, network, purpose, patient) "
        "VALUES (%(t)s, clock_timestamp(), 'U', 'update', '0', 200, %(agent)s, %(req)s, %(method)s, %(path)s, "
        "%(rt)s, %(id)s, %(v)s, %(fhir_user)s, %(client)s, %(role)s, %(network)s, %(purpose)s::text[], %(patient)s)",
        {**key, "agent": actor.agent, "req": actor.request_id, "method": actor.method, "path": actor.path,
         "fhir_user": actor.fhir_user, "client": actor.client_id, "role": actor.role, "network": actor.network,
         "purpose": list(actor.purpose) or None, "patient": patient_from_rows(resource_type, resource_id, rows)},
    )
    return True
