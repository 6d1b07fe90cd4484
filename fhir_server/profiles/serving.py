"""Serving the packaged definitions at ``/StructureDefinition``, ``/CodeSystem``, ``/ValueSet`` in every
tenant (conformance resources, http.html#read, search.html), read-only.

How: the definitions are **seeded into the tenant** the first time anyone in it touches one of those
three types (``ensure_seeded``, called from ``api/routes.dispatch`` after authorization), so read, vread,
search (``url``, ``name``, ``type``, ``version``, ``status``… every R4 parameter), ``_include``,
paging and ``:in`` over a stored ValueSet all work unchanged through the normal storage and index.
Seeding is idempotent: each definition is written with its packaged ``id`` by a create-on-update, only
when missing or different from the packaged JSON (server-owned ``meta`` ignored), under a
transaction-scoped advisory lock per tenant so concurrent workers write it once; a process remembers
the tenants it has seeded. A tenant created later is seeded on its first use; a new server release
with changed definitions updates them on first use after the restart.

Why not a read-only overlay in the read/search path: search would have to merge packaged and stored
results across paging, ``_total``, ``_sort`` and ``_include`` — a second search engine. Why not at
startup or tenant creation: tenants are created by ``$tenants``/the CLI in other processes, and most
server starts (tests, the HL7 listener) never need the definitions; seeding on first use covers both.

Read-only: ``readonly.py`` refuses (403) any other write of a resource with a packaged id or url.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
from starlette.requests import Request

from fhir_server.audit.actor import Actor
from fhir_server.errors import FhirError
from fhir_server.services.resources import BoundDatabase, ResourceService
from fhir_server.services.validate import check_resource
from fhir_server.storage import repository as repo
from fhir_server.storage.locks import advisory_lock

from .catalog import SERVED_TYPES, catalog

log = logging.getLogger("fhir_server.profiles")

SEED_AGENT = "project-definitions"  # the actor of seeding writes (a command-like SYSTEM actor)
SEED_ACTOR = Actor(SEED_AGENT)

_seeded: set[str] = set()
_locks: dict[str, asyncio.Lock] = {}


def _same(stored: str | None, packaged: dict[str, Any]) -> bool:
    if stored is None:
        return False
    have = orjson.loads(stored)
    have.pop("meta", None)
    want = dict(packaged)
    want.pop("meta", None)
    return bool(have == want)


async def seed_tenant(db: Any, tenant: str) -> int:
    """Write the packaged definitions missing (or changed) in ``tenant``; returns how many were written."""
    written = 0
    async with db.transaction() as conn:
        await advisory_lock(conn, "project-definitions", tenant)
        service = ResourceService(BoundDatabase(conn), tenant, SEED_ACTOR)
        for res in catalog().resources():
            current = await repo.fetch_current(conn, tenant, res["resourceType"], res["id"])
            if current is not None and not current.deleted and _same(current.content, res):
                continue
            body = orjson.loads(orjson.dumps(res))  # the write stamps meta into its argument
            try:
                check_resource(res["resourceType"], body, id_required=True)
                async with conn.transaction():  # a savepoint: one bad file must not stop the others
                    await service.update_in(conn, res["resourceType"], res["id"], body, None)
            except FhirError as exc:
                log.warning("project definition %s/%s not served: %s", res["resourceType"], res["id"], exc.diagnostics)
                continue
            written += 1
    if written:
        log.info("project definitions seeded", extra={"tenant": tenant, "written": written})
    return written


async def ensure_seeded(request: Request, resource_type: str) -> None:
    """Seed the request's tenant once per process before it reads or searches a served type."""
    if resource_type not in SERVED_TYPES:
        return
    from fhir_server.api.deps import tenant_of

    tenant = tenant_of(request)
    if tenant in _seeded:
        return
    lock = _locks.setdefault(tenant, asyncio.Lock())
    async with lock:
        if tenant not in _seeded:
            await seed_tenant(request.app.state.db, tenant)
            _seeded.add(tenant)
