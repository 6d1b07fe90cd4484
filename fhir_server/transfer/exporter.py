"""``fhir-server export``: the current version of every resource, one NDJSON file per type."""

from __future__ import annotations

from pathlib import Path

from fhir_server.storage.db import Database


async def run_export(database_url: str, out: Path, *, tenant: str, types: list[str] | None) -> int:
    out.mkdir(parents=True, exist_ok=True)
    db = Database(database_url, min_size=1, max_size=1, application_name="fhir-export")
    await db.open()
    counts: dict[str, int] = {}
    handles = {}
    try:
        async with db.connection() as conn, conn.transaction():
            cur = conn.cursor(name="export")
            sql = "SELECT resource_type, content::text FROM resource WHERE tenant_id = %s AND NOT deleted"
            params: list[object] = [tenant]
            if types:
                sql += " AND resource_type = ANY(%s)"
                params.append(types)
            await cur.execute(sql + " ORDER BY resource_type, id", params)
            async for rtype, content in cur:
                if rtype not in handles:
                    handles[rtype] = open(out / f"{rtype}.ndjson", "w", encoding="utf-8")  # noqa: SIM115, ASYNC230  (one-shot CLI, nothing else on the loop)
                handles[rtype].write(content + "\n")
                counts[rtype] = counts.get(rtype, 0) + 1
    finally:
        for h in handles.values():
            h.close()
        await db.close()
    for rtype, n in sorted(counts.items()):
        print(f"{rtype}: {n}")
    print(f"exported {sum(counts.values())} resources in {len(counts)} files to {out}")
    return 0
