"""The ``export`` job kind: FHIR Bulk Data Access 2.0 ``$export`` (https://hl7.org/fhir/uv/bulkdata/export.html).

Request (made by ``fhir_server.api.ops_export`` at kick-off)::

    {"level": "system" | "patient" | "group", "group": id | None, "patients": [ids] | None,
     "types": [...], "since": iso | None, "typeFilters": {type: [query, ...]},
     "transactionTime": iso, "request": kick-off URL, "fileMaxBytes": n, "fileMaxResources": n}

What is exported, per type in name order:

* **content as of ``transactionTime``** (the manifest's, "the server SHALL include any matching
  resources modified up to and including this instant"): for each candidate id the latest version
  in ``resource_history`` with ``last_updated <= transactionTime``; a deletion as of then, or a
  resource created later, is left out. So writes while the job runs never tear the export.
* ``_since``: only resources whose version as of ``transactionTime`` was written after ``_since``.
* candidates: at system level every resource id of the type; at Patient and Group level the ids
  whose **current** ``idx_reference`` rows put them in the Patient compartment of the patients
  (all live patients, or the Group's ``member.entity`` patients), plus those Patient resources;
  ``_typeFilter`` queries are compiled by the search compiler and applied to the **current** state
  (OR between the filters of one type). Documented in ``fhir_server/bulk/README.md``.

Output: NDJSON files in the blob store (``app.state.blobs``), one type per file, a new file past
``fileMaxBytes`` or ``fileMaxResources``. After each file the job saves its checkpoint
``{"type", "id", "files": [...]}`` in one transaction; a restarted job resumes after the last
saved file (a file written but not recorded is removed, or left to ``fhir-server blobs gc``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

from fhir_server.auth.visibility import Access, visible_binds
from fhir_server.definitions.compartments import compartment
from fhir_server.jobs.runner import JobContext, JobLost, register_kind
from fhir_server.search.compile import build_where
from fhir_server.storage.blobs import BlobStore

KIND = "export"
BATCH = 500
log = logging.getLogger(__name__)

# what a status/file URL and the manifest need to find the blob store of this process
_BLOBS: dict[str, BlobStore] = {}


def configure(blobs: BlobStore) -> None:
    """Called by the app's lifespan: the store export files go to."""
    _BLOBS["store"] = blobs


def blob_store() -> BlobStore:
    store = _BLOBS.get("store")
    if store is None:
        raise RuntimeError("the export blob store is not configured")
    return store


def patient_links() -> dict[str, tuple[str, ...]]:
    """Patient compartment: resource type → the parameters linking it to a Patient."""
    return {t: tuple(p for p in ps if p != "{def}") for t, ps in compartment("Patient").params.items()}


def patient_types() -> list[str]:
    return sorted({"Patient", *(t for t, ps in patient_links().items() if ps)})


@dataclass(slots=True)
class _Cursor:
    after: str
    count: int = 0
    size: int = 0
    exhausted: bool = False


def _candidates_sql(request: dict[str, Any], resource_type: str) -> tuple[str, dict[str, Any]] | None:
    """The next ids of ``resource_type`` to consider (``%(after)s``, ``%(lim)s``), or None if the type
    cannot have any at this level."""
    binds: dict[str, Any] = {"rt": resource_type}
    conds = ["r.tenant_id = %(tenant)s", "r.resource_type = %(rt)s", "r.id > %(after)s"]
    level = request["level"]
    if level != "system":
        patients = request.get("patients")
        if resource_type == "Patient":
            if patients is not None:
                conds.append("r.id = ANY(%(patients)s)")
                binds["patients"] = patients
        else:
            params = patient_links().get(resource_type)
            if not params:
                return None
            binds["cparams"] = list(params)
            link = (
                "EXISTS (SELECT 1 FROM idx_reference l WHERE l.tenant_id = %(tenant)s AND l.resource_type = r.resource_type"
                " AND l.resource_id = r.id AND l.param = ANY(%(cparams)s) AND l.target_type = 'Patient' AND l.url IS NULL"
            )
            if patients is not None:
                link += " AND l.target_id = ANY(%(patients)s)"
                binds["patients"] = patients
            conds.append(link + ")")
    filters = request.get("typeFilters", {}).get(resource_type)
    if filters:
        ors = []
        for n, query in enumerate(filters):
            where = build_where(resource_type, query_pairs(query))
            sql = where.sql
            for name, value in where.binds.items():
                new = f"f{n}_{name}"
                sql = sql.replace(f"%({name})s", f"%({new})s")
                binds[new] = value
            ors.append(f"({sql})")
        conds.append("(" + " OR ".join(ors) + ")")
    visible = visible_binds(Access.from_json(request.get("access")), "r", binds, resource_type=resource_type)  # the requester's facilities / patient
    if visible:
        conds.append(visible)
    return f"SELECT r.id FROM resource r WHERE {' AND '.join(conds)} ORDER BY r.id LIMIT %(lim)s", binds


def query_pairs(query: str) -> list[tuple[str, str]]:
    return parse_qsl(query, keep_blank_values=True)


_AS_OF = (
    "SELECT DISTINCT ON (h.id) h.id, h.deleted, h.last_updated, h.content::text FROM resource_history h "
    "WHERE h.tenant_id = %(tenant)s AND h.resource_type = %(rt)s AND h.id = ANY(%(ids)s) "
    "AND h.last_updated <= %(tt)s ORDER BY h.id, h.version_id DESC"
)


async def _lines(ctx: JobContext, resource_type: str, cursor: _Cursor, max_bytes: int, max_count: int) -> AsyncIterator[bytes]:
    """NDJSON lines of one file: from ``cursor.after`` until the file is full or the type is done."""
    job = ctx.job
    request = job.request
    tt = datetime.fromisoformat(request["transactionTime"])
    since = datetime.fromisoformat(request["since"]) if request.get("since") else None
    made = _candidates_sql(request, resource_type)
    if made is None:
        cursor.exhausted = True
        return
    sql, binds = made
    binds.update(tenant=job.tenant_id, lim=BATCH)
    while True:
        async with ctx.db.connection() as conn:
            binds["after"] = cursor.after
            cur = await conn.execute(sql, binds)
            ids = [row[0] for row in await cur.fetchall()]
            if not ids:
                cursor.exhausted = True
                return
            cur = await conn.execute(_AS_OF, {"tenant": job.tenant_id, "rt": resource_type, "ids": ids, "tt": tt})
            versions = {row[0]: row[1:] for row in await cur.fetchall()}
        for rid in ids:
            cursor.after = rid
            found = versions.get(rid)
            if found is None:
                continue
            deleted, last_updated, content = found
            if deleted or content is None or (since is not None and last_updated <= since):
                continue
            line = content.encode() + b"\n"
            cursor.count += 1
            cursor.size += len(line)
            yield line
            if cursor.size >= max_bytes or cursor.count >= max_count:
                if len(ids) < BATCH and rid == ids[-1]:
                    cursor.exhausted = True
                return
        if len(ids) < BATCH:
            cursor.exhausted = True
            return
        await asyncio.sleep(0)


async def export(ctx: JobContext) -> dict[str, Any]:
    job = ctx.job
    request = job.request
    store = blob_store()
    types: list[str] = sorted(request["types"])
    max_bytes = int(request.get("fileMaxBytes") or 64 * 1024 * 1024)
    max_count = int(request.get("fileMaxResources") or 100_000)
    checkpoint = dict(job.checkpoint or {})
    files: list[dict[str, Any]] = list(checkpoint.get("files", []))
    resume_type, resume_id = checkpoint.get("type"), checkpoint.get("id") or ""
    exported = sum(f["count"] for f in files)
    for resource_type in types:
        if resume_type is not None and resource_type < resume_type:
            continue
        after = resume_id if resource_type == resume_type else ""
        if resume_type == resource_type and checkpoint.get("typeDone"):
            continue
        while True:
            cursor = _Cursor(after)
            info = await store.put(_lines(ctx, resource_type, cursor, max_bytes, max_count), max_bytes=2**62)
            if cursor.count == 0:
                await store.delete(info.key)
            else:
                n = sum(1 for f in files if f["type"] == resource_type) + 1
                files.append({"type": resource_type, "name": f"{resource_type}-{n}.ndjson", "key": info.key,
                              "count": cursor.count, "size": info.size, "sha256": info.sha256})
                exported += cursor.count
            checkpoint = {"type": resource_type, "id": cursor.after, "typeDone": cursor.exhausted, "files": files}
            try:
                async with ctx.db.transaction() as conn:
                    await ctx.save(conn, checkpoint=checkpoint,
                                   progress={"exported": exported, "type": resource_type, "files": len(files)})
            except JobLost:
                if cursor.count:
                    await store.delete(info.key)  # not recorded: nobody will ever serve it
                raise
            if cursor.exhausted:
                break
            after = cursor.after
    return {"files": files, "exported": exported}


async def delete_files(job_result: dict[str, Any] | None, job_checkpoint: dict[str, Any] | None) -> None:
    """Remove a job's files (cancelled, or expired)."""
    store = blob_store()
    keys = {f["key"] for source in (job_result, job_checkpoint) if source for f in source.get("files", [])}
    for key in keys:
        try:
            await store.delete(key)
        except Exception:  # pragma: no cover - storage trouble: gc will get it
            log.warning("could not delete export file", extra={"key": key}, exc_info=True)


async def _cleanup(job: Any) -> None:
    await delete_files(job.result, job.checkpoint)


register_kind(KIND, export, cleanup=_cleanup)
