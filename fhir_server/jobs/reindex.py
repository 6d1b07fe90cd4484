"""The ``reindex`` job kind: rewrite the index rows of a tenant's live resources with the tenant's
current SearchParameters (core + custom, ``fhir_server.search.custom``).

Request ``{"types": [...], "batchSize": n}``. Types are done in name order, each in keyset batches
over ``id`` (the primary key ``(tenant_id, resource_type, id)``); one transaction per batch reads
the batch ``FOR UPDATE`` (a concurrent write of one of them waits for the batch, then writes its
own rows), deletes the batch's rows from every ``idx_*`` table, inserts the re-extracted ones, and
saves the checkpoint ``{"type", "id"}`` and ``progress`` ``{"total", "done"}``. Rewriting is
idempotent, so a batch redone after a crash changes nothing. No resource version is created.
"""

from __future__ import annotations

import asyncio
from functools import cache
from typing import Any

import orjson
from psycopg import AsyncConnection

from fhir_server.jobs.runner import JobContext, register_kind
from fhir_server.search.custom import tenant_registry
from fhir_server.search.extract import extract_index_rows
from fhir_server.storage.repository import _INDEX_COLUMNS as INDEX_COLUMNS  # the one table of index columns

KIND = "reindex"
DEFAULT_BATCH = 500
MAX_BATCH = 5000


@cache
def _insert_sql(kind: str) -> str:
    cols = INDEX_COLUMNS[kind]
    arrays = ", ".join(["%s::text[]", "%s::text[]"] + [f"%s::{t}[]" for _, t, _ in cols])
    values = ", ".join(["u.rid", "u.c0"] + [expr.format(f"u.c{i + 1}") for i, (_, _, expr) in enumerate(cols)])
    names = ", ".join(["rid"] + [f"c{i}" for i in range(len(cols) + 1)])
    return (
        f"INSERT INTO idx_{kind} (tenant_id, resource_type, resource_id, param, {', '.join(c for c, _, _ in cols)}) "
        f"SELECT %s, %s, {values} FROM unnest({arrays}) AS u({names})"
    )


async def reindex_batch(conn: AsyncConnection, tenant: str, resource_type: str, after_id: str, limit: int) -> list[str]:
    """Re-extract the index rows of the next ``limit`` live resources after ``after_id``; their ids.
    ``conn`` must be in a transaction."""
    registry = await tenant_registry(conn, tenant)
    cur = await conn.execute(
        "SELECT id, content::text FROM resource WHERE tenant_id = %s AND resource_type = %s AND id > %s "
        "AND NOT deleted ORDER BY id LIMIT %s FOR UPDATE",
        (tenant, resource_type, after_id, limit),
    )
    fetched = await cur.fetchall()
    if not fetched:
        return []
    ids = [rid for rid, _ in fetched]
    rows: dict[str, list[tuple[Any, ...]]] = {kind: [] for kind in INDEX_COLUMNS}
    for rid, content in fetched:
        extracted = extract_index_rows(orjson.loads(content), registry=registry)
        for kind, out in rows.items():
            out += [(rid, *row) for row in getattr(extracted, kind)]
    for kind, out in rows.items():
        await conn.execute(
            f"DELETE FROM idx_{kind} WHERE tenant_id = %s AND resource_type = %s AND resource_id = ANY(%s)",
            (tenant, resource_type, ids),
        )
        if out:
            await conn.execute(_insert_sql(kind), (tenant, resource_type, *[list(c) for c in zip(*out, strict=True)]))
    return ids


async def reindex(ctx: JobContext) -> dict[str, Any]:
    job, db = ctx.job, ctx.db
    tenant = job.tenant_id
    types: list[str] = sorted(job.request["types"])
    batch = max(1, min(int(job.request.get("batchSize") or DEFAULT_BATCH), MAX_BATCH))
    progress = dict(job.progress)
    if "total" not in progress:
        async with db.transaction() as conn:
            cur = await conn.execute(
                "SELECT count(*) FROM resource WHERE tenant_id = %s AND resource_type = ANY(%s) AND NOT deleted",
                (tenant, types),
            )
            row = await cur.fetchone()
            progress = {"total": int(row[0]) if row else 0, "done": 0}
            await ctx.save(conn, checkpoint=job.checkpoint, progress=progress)
    checkpoint = job.checkpoint or {}
    resume_type, resume_id = checkpoint.get("type"), checkpoint.get("id") or ""
    for resource_type in types:
        if resume_type is not None and resource_type < resume_type:
            continue  # done before the restart
        after = resume_id if resource_type == resume_type else ""
        while True:
            async with db.transaction() as conn:
                ids = await reindex_batch(conn, tenant, resource_type, after, batch)
                if ids:
                    progress = {**progress, "done": int(progress.get("done", 0)) + len(ids)}
                    await ctx.save(conn, checkpoint={"type": resource_type, "id": ids[-1]}, progress=progress)
            if len(ids) < batch:
                break
            after = ids[-1]
            await asyncio.sleep(0)  # let the process's requests run between batches
    return {"reindexed": progress.get("done", 0)}


register_kind(KIND, reindex)
