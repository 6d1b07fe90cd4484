"""Bulk load of NDJSON (``fhir-server import --bulk``): one resource per line, at COPY speed.

Input: ``.ndjson`` / ``.ndjson.gz`` files, or folders of them (a ``$export`` output). Files named
``SearchParameter*`` load first, so a tenant's own parameters index everything after them.

Per line: parse (orjson), the checks of every write (``services.validate``: R4 validation; a
SearchParameter is checked like on the write path), the resource's own ``id`` kept (a bulk load
restores data; a line without one gets a uuid), index rows from the tenant's registry
(``search.custom.tenant_registry``). A bad line is reported as ``file:line: reason`` and skipped;
with ``strict`` the load stops at the first one (``InvalidResource``), batches already committed
stay. Binary lines must hold their content inline (at most ``FHIR_BINARY_INLINE_MAX_BYTES``): a
blob-store reference or larger content is a bad line (load those through ``fhir-server import``).

Per batch (``batch_size`` lines, one transaction): the existing rows of the batch's ids are locked
(``FOR UPDATE``, key order), each resource is stamped as a write stamps it
(``services.resources.stamp``: ``meta.versionId`` = current + 1 or 1, ``meta.lastUpdated`` now,
strictly after the previous version), the rows are COPYed (binary) into temporary staging tables,
and ONE statement moves them: ``INSERT … ON CONFLICT DO UPDATE SET version_id = version_id + 1``
into ``resource``, a ``resource_history`` row per resource (method ``PUT``, as an update with the
client's id), an ``audit_event`` row per resource (action C for version 1, U after: "every write
leaves an AuditEvent", so no summarising row), the old index rows of updated resources deleted
and the new ones inserted. Every row carries the tenant. If another writer changed one of the ids
in between (the upsert guard matched fewer rows) or a deadlock broke the batch, it is redone.

Parallel loading (``jobs`` > 1, ``run_bulk_import``): worker processes, each with its own
connection, load whole batches; the parent reads lines, hands out batches and draws the progress.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import multiprocessing
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

import orjson
import psycopg
from psycopg import AsyncConnection

from fhir_server.audit.actor import Actor, write_action
from fhir_server.errors import FhirError, InvalidResource
from fhir_server.search.extract import IndexRows, extract_index_rows
from fhir_server.search.registry import SearchParamRegistry
from fhir_server.services.resources import next_instant, stamp
from fhir_server.services.validate import validation_issues
from fhir_server.storage.repository import _INDEX_COLUMNS, INDEX_TABLES
from fhir_server.transfer.files import find_files, open_file

__all__ = ["BadLine", "BulkLoader", "LoadReport", "discover", "run_bulk_import"]

SUFFIXES = (".ndjson", ".ndjson.gz")
DEFAULT_BATCH = 2000
_RETRIES = 5
_METHOD = "PUT"  # history method: an update with the client's id (create-on-update for new ids)

Line = tuple[str, int, bytes]  # (file, line number, text)


@dataclass(frozen=True, slots=True)
class BadLine:
    path: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


@dataclass(slots=True)
class LoadReport:
    loaded: int = 0
    created: int = 0
    updated: int = 0
    bad: list[BadLine] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, other: LoadReport) -> None:
        self.loaded += other.loaded
        self.created += other.created
        self.updated += other.updated
        self.bad.extend(other.bad)

    @property
    def rate(self) -> float:
        return self.loaded / self.seconds if self.seconds else 0.0


@dataclass(slots=True)
class _Item:
    key: tuple[str, str]  # (resource type, id)
    resource: dict[str, Any]
    rows: IndexRows
    search_parameter: bool


class _Raced(Exception):
    """Another writer changed one of the batch's ids between the lock and the upsert."""


# ---- reading ---------------------------------------------------------------------------------
def discover(paths: Iterable[Path]) -> list[Path]:
    """The NDJSON files under ``paths`` (files as given, folders searched), SearchParameter files first."""
    files = find_files(paths, SUFFIXES)
    return sorted(files, key=lambda p: not p.name.startswith("SearchParameter"))  # stable otherwise


def read_lines(files: Iterable[Path]) -> Iterator[Line]:
    for path in files:
        with open_file(path, binary=True) as f:
            for number, raw in enumerate(f, 1):
                if raw.strip():
                    yield str(path), number, raw


def batches(lines: Iterable[Line], size: int) -> Iterator[list[Line]]:
    batch: list[Line] = []
    for line in lines:
        batch.append(line)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


# ---- per line: parse, check, index rows (no database) ----------------------------------------
def _check(resource: Any, registry: SearchParamRegistry, binary_inline_max: int) -> str | None:
    """Why ``resource`` cannot be loaded, or None. Gives a missing id a uuid."""
    if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
        return "not a FHIR resource (a JSON object with a resourceType)"
    if not resource.get("id"):
        resource["id"] = str(uuid.uuid4())
    issues = [i for i in validation_issues(resource) if i.severity in ("error", "fatal")]
    if issues:
        first = issues[0]
        more = f" (and {len(issues) - 1} more)" if len(issues) > 1 else ""
        return f"{first.diagnostics}{' at ' + first.expression if first.expression else ''}{more}"
    rtype = resource["resourceType"]
    if rtype == "Binary":
        from fhir_server.services.binary import storage_of

        data = resource.get("data")
        if storage_of(resource) is not None or (isinstance(data, str) and len(data) * 3 // 4 > binary_inline_max):
            return "Binary content beyond the inline limit (or in a blob store) is not bulk-loaded; use `fhir-server import`"
    if rtype == "SearchParameter":
        from fhir_server.search.custom import check_search_parameter

        try:
            check_search_parameter(resource, registry)
        except FhirError as exc:
            return "; ".join(i.diagnostics for i in exc.issues)
    return None


def prepare(lines: list[Line], registry: SearchParamRegistry, *, strict: bool,
            binary_inline_max: int = 16 * 1024) -> tuple[list[_Item], list[BadLine]]:
    """Parse, check and index one batch of lines (CPU only; safe to run in a thread)."""
    items: list[_Item] = []
    bad: list[BadLine] = []
    for path, number, raw in lines:
        try:
            resource = orjson.loads(raw)
            reason = _check(resource, registry, binary_inline_max)
        except orjson.JSONDecodeError as exc:
            reason = f"not JSON: {exc}"
        if reason is not None:
            if strict:
                raise InvalidResource(f"{path}:{number}: {reason}")
            bad.append(BadLine(path, number, reason))
            continue
        rtype = resource["resourceType"]
        items.append(_Item((rtype, str(resource["id"])), resource, extract_index_rows(resource, registry=registry),
                           rtype == "SearchParameter"))
    return items, bad


def _reindex(items: list[_Item], registry: SearchParamRegistry) -> None:
    for item in items:
        item.rows = extract_index_rows(item.resource, registry=registry)


# ---- SQL -------------------------------------------------------------------------------------
_PG_TYPES = {"text": "text", "timestamptz": "timestamptz", "numeric": "numeric"}
_STAGE_RESOURCE = (
    "CREATE TEMP TABLE IF NOT EXISTS bulk_resource (resource_type text NOT NULL, id text NOT NULL, "
    "version_id integer NOT NULL, last_updated timestamptz NOT NULL, content text NOT NULL) ON COMMIT DELETE ROWS"
)


def _stage_ddl(kind: str) -> str:
    cols = ", ".join(f"c{i + 1} {t}" for i, (_, t, _) in enumerate(_INDEX_COLUMNS[kind]))
    return (f"CREATE TEMP TABLE IF NOT EXISTS bulk_idx_{kind} (resource_type text NOT NULL, "
            f"resource_id text NOT NULL, param text NOT NULL, {cols}) ON COMMIT DELETE ROWS")


def _stage_types(kind: str) -> list[str]:
    return ["text", "text", "text"] + [t for _, t, _ in _INDEX_COLUMNS[kind]]


# existing rows of the batch, locked in key order (parallel loaders never wait on each other in a circle)
_LOCK_SQL = (
    "SELECT r.resource_type, r.id, r.version_id, r.last_updated FROM resource r "
    "JOIN unnest(%s::text[], %s::text[]) AS k(rt, id) ON r.tenant_id = %s AND r.resource_type = k.rt AND r.id = k.id "
    "ORDER BY r.resource_type, r.id FOR UPDATE OF r"
)


@cache
def _move_sql(kinds: tuple[str, ...], updates: bool) -> str:
    """The one statement that moves a staged batch into resource, history, audit and idx_* tables."""
    parts = [
        ("up AS (INSERT INTO resource AS r (tenant_id, resource_type, id, version_id, last_updated, deleted, content) "
        "SELECT %(t)s, resource_type, id, version_id, last_updated, false, content::jsonb FROM bulk_resource "
        "ORDER BY resource_type, id "
        "ON CONFLICT (tenant_id, resource_type, id) DO UPDATE SET version_id = r.version_id + 1, "
        "last_updated = EXCLUDED.last_updated, deleted = false, content = EXCLUDED.content "
        "WHERE r.version_id + 1 = EXCLUDED.version_id "
        "RETURNING resource_type, id, version_id, last_updated, content)"),
        ("h AS (INSERT INTO resource_history (tenant_id, resource_type, id, version_id, last_updated, deleted, method, content) "
         "SELECT %(t)s, resource_type, id, version_id, last_updated, false, %(method)s, content FROM up)"),
        ("a AS (INSERT INTO audit_event (tenant_id, recorded, action, interaction, outcome, status, agent, "
        "request_id, method, path, resource_type, resource_id, version_id) "
        "SELECT %(t)s, last_updated, "
        "CASE WHEN version_id = 1 THEN %(c_action)s ELSE %(u_action)s END, "
        "CASE WHEN version_id = 1 THEN %(c_interaction)s ELSE %(u_interaction)s END, '0', "
        "CASE WHEN version_id = 1 THEN %(c_status)s::int ELSE %(u_status)s::int END, "
        "%(agent)s, %(request)s, %(a_method)s, %(path)s, resource_type, id, version_id FROM up)"),
    ]
    if updates:  # the old index rows of updated resources (the statement's snapshot: not the new ones)
        parts += [
            f"d_{kind} AS (DELETE FROM idx_{kind} i USING bulk_resource b WHERE b.version_id > 1 "
            f"AND i.tenant_id = %(t)s AND i.resource_type = b.resource_type AND i.resource_id = b.id)"
            for kind in INDEX_TABLES
        ]
    for kind in kinds:
        cols = _INDEX_COLUMNS[kind]
        values = ", ".join(expr.format(f"c{i + 1}") for i, (_, _, expr) in enumerate(cols))
        parts.append(
            f"i_{kind} AS (INSERT INTO idx_{kind} (tenant_id, resource_type, resource_id, param, "
            f"{', '.join(INDEX_TABLES[kind])}) SELECT %(t)s, resource_type, resource_id, param, {values} FROM bulk_idx_{kind})"
        )
    return "WITH " + ", ".join(parts) + " SELECT count(*) FROM up"


# ---- the loader ------------------------------------------------------------------------------
class BulkLoader:
    """Loads batches of NDJSON lines into one tenant over one connection (autocommit mode: each
    batch is its own transaction)."""

    def __init__(self, conn: AsyncConnection, tenant: str, actor: Actor | None = None, *,
                 batch_size: int = DEFAULT_BATCH, strict: bool = False, binary_inline_max: int = 16 * 1024) -> None:
        self.conn, self.tenant = conn, tenant
        self.actor = actor or Actor("fhir-server import --bulk", method="SYSTEM", path="import")
        self.batch_size, self.strict, self.binary_inline_max = batch_size, strict, binary_inline_max
        self._staged = False
        created, updated = write_action(_METHOD, 1, False), write_action(_METHOD, 2, False)
        self._params: dict[str, Any] = {
            "t": tenant, "method": _METHOD, "agent": self.actor.agent, "request": self.actor.request_id,
            "a_method": self.actor.method, "path": self.actor.path,
            "c_action": created[0], "c_interaction": created[1], "c_status": created[2],
            "u_action": updated[0], "u_interaction": updated[1], "u_status": updated[2],
        }

    async def registry(self) -> SearchParamRegistry:
        from fhir_server.search.custom import tenant_registry

        return await tenant_registry(self.conn, self.tenant)

    async def load(self, paths: Iterable[Path], progress: Callable[[int], None] | None = None) -> LoadReport:
        """Load every line of the NDJSON files under ``paths``; the next batch is parsed, checked
        and indexed in a thread while the current one is written."""
        return await self.load_lines(read_lines(discover(paths)), progress)

    async def load_lines(self, lines: Iterable[Line], progress: Callable[[int], None] | None = None) -> LoadReport:
        started = time.perf_counter()
        report = LoadReport()
        chunks = batches(lines, self.batch_size)
        registry = await self.registry()

        def prep(reg: SearchParamRegistry) -> tuple[list[_Item], list[BadLine], int, SearchParamRegistry] | None:
            chunk = next(chunks, None)
            if chunk is None:
                return None
            items, bad = prepare(chunk, reg, strict=self.strict, binary_inline_max=self.binary_inline_max)
            return items, bad, len(chunk), reg

        pending = asyncio.ensure_future(asyncio.to_thread(prep, registry))
        try:
            while (ready := await pending) is not None:
                items, bad, n_lines, used = ready
                if used is not registry:  # a SearchParameter committed after this batch was indexed
                    await asyncio.to_thread(_reindex, items, registry)
                pending = asyncio.ensure_future(asyncio.to_thread(prep, registry))
                batch = await self.write(items)
                batch.bad = bad
                report.add(batch)
                if any(item.search_parameter for item in items):
                    registry = await self.registry()
                if progress:
                    progress(n_lines)
        finally:
            if not pending.done():
                pending.cancel()
                await asyncio.gather(pending, return_exceptions=True)
        report.seconds = time.perf_counter() - started
        return report

    async def load_batch(self, lines: list[Line]) -> LoadReport:
        """Parse, check, index and write one batch (the parallel workers' unit of work)."""
        items, bad = prepare(lines, await self.registry(), strict=self.strict, binary_inline_max=self.binary_inline_max)
        report = await self.write(items)
        report.bad = bad
        return report

    async def write(self, items: list[_Item]) -> LoadReport:
        """Write prepared items: one transaction per run of distinct ids (a repeated id starts a new one)."""
        report = LoadReport()
        group: list[_Item] = []
        seen: set[tuple[str, str]] = set()
        for item in items:
            if item.key in seen:
                await self._write_group(group, report)
                group, seen = [], set()
            group.append(item)
            seen.add(item.key)
        if group:
            await self._write_group(group, report)
        return report

    async def _write_group(self, items: list[_Item], report: LoadReport) -> None:
        if not self._staged:
            await self.conn.execute(_STAGE_RESOURCE)
            for kind in INDEX_TABLES:
                await self.conn.execute(_stage_ddl(kind))
            self._staged = True
        for attempt in range(_RETRIES):
            try:
                created = await self._write_once(items)
            except (_Raced, psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure):
                if attempt == _RETRIES - 1:
                    raise
                await asyncio.sleep(0.05 * (attempt + 1))
                continue
            report.loaded += len(items)
            report.created += created
            report.updated += len(items) - created
            return

    async def _write_once(self, items: list[_Item]) -> int:
        items = sorted(items, key=lambda item: item.key)
        conn = self.conn
        async with conn.transaction():
            cur = await conn.execute(_LOCK_SQL, ([k for k, _ in (i.key for i in items)],
                                                 [k for _, k in (i.key for i in items)], self.tenant))
            existing: dict[tuple[str, str], tuple[int, datetime]] = {
                (rt, rid): (v, lu) for rt, rid, v, lu in await cur.fetchall()
            }
            kinds = tuple(kind for kind in INDEX_TABLES if any(getattr(i.rows, kind) for i in items))
            async with conn.cursor() as c:
                async with c.copy("COPY bulk_resource (resource_type, id, version_id, last_updated, content) "
                                  "FROM STDIN (FORMAT BINARY)") as copy:
                    copy.set_types(["text", "text", "int4", "timestamptz", "text"])
                    for item in items:
                        previous = existing.get(item.key)
                        version = previous[0] + 1 if previous else 1
                        last_updated = next_instant(previous[1] if previous else None)
                        text = stamp(item.resource, item.key[1], version, last_updated)
                        await copy.write_row((item.key[0], item.key[1], version, last_updated, text))
                for kind in kinds:
                    async with c.copy(f"COPY bulk_idx_{kind} FROM STDIN (FORMAT BINARY)") as copy:
                        copy.set_types(_stage_types(kind))
                        for item in items:
                            rt, rid = item.key
                            for row in getattr(item.rows, kind):
                                await copy.write_row((rt, rid, *row))
            cur = await conn.execute(_move_sql(kinds, bool(existing)), self._params)
            row = await cur.fetchone()
            if not row or row[0] != len(items):
                raise _Raced()
        return len(items) - len(existing)


# ---- the command -----------------------------------------------------------------------------
_worker: dict[str, Any] = {}


def _worker_init(database_url: str, tenant: str, actor: Actor, batch_size: int, strict: bool, inline_max: int) -> None:
    loop = asyncio.new_event_loop()
    conn = loop.run_until_complete(AsyncConnection.connect(database_url, autocommit=True,
                                                           application_name="fhir-bulk-import"))
    _worker.update(loop=loop, loader=BulkLoader(conn, tenant, actor, batch_size=batch_size, strict=strict,
                                                binary_inline_max=inline_max))


def _worker_batch(lines: list[Line]) -> LoadReport:
    return _worker["loop"].run_until_complete(_worker["loader"].load_batch(lines))


async def _load_in_process(database_url: str, lines: Iterable[Line], loader_args: dict[str, Any],
                           progress: Callable[[int], None]) -> LoadReport:
    async with await AsyncConnection.connect(database_url, autocommit=True, application_name="fhir-bulk-import") as conn:
        return await BulkLoader(conn, **loader_args).load_lines(lines, progress)


async def _analyze(database_url: str) -> None:
    """Fresh planner statistics, so reads and searches use the right indexes at once."""
    async with await AsyncConnection.connect(database_url, autocommit=True) as conn:
        for table in ("resource", "resource_history", *(f"idx_{kind}" for kind in INDEX_TABLES)):
            await conn.execute(f"ANALYZE {table}")


def run_bulk_import(database_url: str, paths: list[Path], *, tenant: str, jobs: int = 1,
                    batch_size: int = DEFAULT_BATCH, strict: bool = False, show_progress: bool = True) -> LoadReport:
    """``fhir-server import --bulk``: load, with a progress bar (lines), then ANALYZE."""
    from tqdm import tqdm

    from fhir_server.settings import Settings

    files = discover(paths)
    actor = Actor("fhir-server import --bulk", method="SYSTEM", path="import")
    loader_args = {"tenant": tenant, "actor": actor, "batch_size": batch_size, "strict": strict,
                   "binary_inline_max": Settings().binary_inline_max_bytes}
    report = LoadReport()
    started = time.perf_counter()
    sp_files = [f for f in files if f.name.startswith("SearchParameter")]
    other = [f for f in files if not f.name.startswith("SearchParameter")]
    with tqdm(unit=" res", unit_scale=True, file=sys.stderr, disable=not show_progress, smoothing=0.1) as bar:
        # SearchParameters first, in this process: the batches after them index with them
        first = [f for f in files if jobs == 1 or f in sp_files]
        if first:
            report.add(asyncio.run(_load_in_process(database_url, read_lines(first), loader_args, bar.update)))
        if jobs > 1 and other:
            ctx = multiprocessing.get_context("spawn")  # no fork of a process holding connections/threads
            init = (database_url, tenant, actor, batch_size, strict, loader_args["binary_inline_max"])
            with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_worker_init,
                                                        initargs=init) as pool:
                running: set[concurrent.futures.Future[LoadReport]] = set()
                sizes: dict[concurrent.futures.Future[LoadReport], int] = {}

                def collect(done: set[concurrent.futures.Future[LoadReport]]) -> None:
                    for fut in done:
                        report.add(fut.result())  # a worker's error (strict mode) ends the load here
                        bar.update(sizes.pop(fut))

                for chunk in batches(read_lines(other), batch_size):
                    fut = pool.submit(_worker_batch, chunk)
                    running.add(fut)
                    sizes[fut] = len(chunk)
                    if len(running) >= 2 * jobs:
                        done, running = concurrent.futures.wait(running, return_when="FIRST_COMPLETED")
                        collect(done)
                        running = set(running)
                collect(set(concurrent.futures.wait(running).done))
    if report.loaded:
        asyncio.run(_analyze(database_url))
    report.seconds = time.perf_counter() - started
    return report
