"""Benchmark-only experiments on the server, applied in every server process (workers included).

Activated by bench/experiments.py with PYTHONPATH=bench/patches and BENCH_PATCHES=a,b,...
The server code is NOT modified; these monkeypatches only show what a change would gain.

  gc_freeze  gc.freeze() after the start-up warm-up, so the ~100k long-lived objects of the R4
             definitions are never traversed again by full collections
  batch_index  write the search-index rows with ONE statement per write (INSERT ... SELECT FROM
             unnest(arrays) for every idx_* table with rows, in data-modifying CTEs) and delete the
             old rows with ONE statement, instead of one executemany() per table (each executemany
             is a psycopg pipeline with its own Sync round trip) and seven DELETEs
  pipeline   run every write transaction in psycopg pipeline mode (Database.transaction), with
             insert_new using RETURNING so that only the statements whose result is needed wait
             for the server: ~2 round trips per create/update instead of ~7/~14
"""

from __future__ import annotations

import os

_PATCHES = {p.strip() for p in os.environ.get("BENCH_PATCHES", "").split(",") if p.strip()}


def _apply() -> None:
    if "gc_freeze" in _PATCHES:
        import gc

        from fhir_server import app

        original = app._warm_up

        def warm_up_then_freeze() -> None:
            original()
            gc.collect()
            gc.freeze()

        app._warm_up = warm_up_then_freeze

    if "pipeline" in _PATCHES:
        from contextlib import asynccontextmanager

        from fhir_server.storage import db as dbmod
        from fhir_server.storage import repository as repo

        @asynccontextmanager
        async def transaction(self):  # type: ignore[no-untyped-def]
            async with self.pool.connection() as conn, conn.pipeline(), conn.transaction():
                yield conn

        async def insert_new(conn, tenant, v):  # type: ignore[no-untyped-def]
            cur = await conn.execute(
                "INSERT INTO resource (tenant_id, resource_type, id, version_id, last_updated, deleted, content) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s::jsonb) ON CONFLICT (tenant_id, resource_type, id) DO NOTHING "
                "RETURNING 1",
                (tenant, v.resource_type, v.id, v.version_id, v.last_updated, v.deleted, v.content),
                prepare=True,
            )
            return await cur.fetchone() is not None

        dbmod.Database.transaction = transaction
        repo.insert_new = insert_new

    if "batch_index" in _PATCHES:
        from fhir_server.storage import repository as repo

        types = {
            "string": ("text", "text"),
            "token": ("text", "text", "text"),
            "reference": ("text", "text", "text", "text"),
            "date": ("timestamptz", "timestamptz"),
            "number": ("numeric", "numeric", "numeric"),
            "quantity": ("text", "text", "text", "numeric", "numeric", "numeric"),
            "uri": ("text",),
        }
        where = "tenant_id = %(t)s AND resource_type = %(rt)s AND resource_id = %(id)s"
        delete_all = "WITH " + ", ".join(
            f"d_{k} AS (DELETE FROM idx_{k} WHERE {where})" for k in repo.INDEX_TABLES
        ) + " SELECT 1"

        def insert_sql(kinds: tuple[str, ...]) -> str:
            parts = []
            for k in kinds:
                cols = repo.INDEX_TABLES[k]
                arrays = ", ".join([f"%({k}_0)s::text[]"] + [f"%({k}_{i + 1})s::{t}[]" for i, t in enumerate(types[k])])
                parts.append(
                    f"i_{k} AS (INSERT INTO idx_{k} (tenant_id, resource_type, resource_id, param, {', '.join(cols)}) "
                    f"SELECT %(t)s, %(rt)s, %(id)s, * FROM unnest({arrays}))"
                )
            return "WITH " + ", ".join(parts) + " SELECT 1"

        async def replace_index_rows(conn, tenant, resource_type, resource_id, rows, *, had_rows):  # type: ignore[no-untyped-def]
            key = {"t": tenant, "rt": resource_type, "id": resource_id}
            if had_rows:
                await conn.execute(delete_all, key, prepare=True)
            if rows is None:
                return
            params = dict(key)
            kinds = []
            for k in repo.INDEX_TABLES:
                table_rows = getattr(rows, k)
                if table_rows:
                    kinds.append(k)
                    for i, column in enumerate(zip(*table_rows)):
                        params[f"{k}_{i}"] = list(column)
            if kinds:
                await conn.execute(insert_sql(tuple(kinds)), params, prepare=True)

        repo.replace_index_rows = replace_index_rows


if _PATCHES:
    _apply()
    import sys

    print(f"bench patches applied in pid {os.getpid()}: {sorted(_PATCHES)}", file=sys.stderr, flush=True)
