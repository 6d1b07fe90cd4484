"""Write hooks (fhir_server.services.hooks): guards refuse a write before anything is stored, and
after-write hooks run on the same transaction as the write, on every write path (create, update,
patch, delete, transaction Bundle). The rules of http.html (a refused write changes nothing) and
bundle.html#transaction (all or nothing) hold with hooks in place.

Hooks are registered in this test process on ``Basic`` resources tagged for the test, through the
same decorators the workflow modules use, against a real PostgreSQL.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from fhir_server.audit.actor import Actor
from fhir_server.errors import FhirError, UnprocessableEntity
from fhir_server.services import hooks
from fhir_server.services.bundles import BundleService
from fhir_server.services.resources import ResourceService
from fhir_server.storage.db import Database

MARK = "hook-test"
seen: list[tuple[str, str | None, str | None]] = []


def _mark(resource: dict[str, Any] | None) -> str | None:
    return (resource or {}).get("code", {}).get("text")


@hooks.guard("Basic")
def _refuse_locked(event: hooks.WriteEvent) -> None:
    if _mark(event.before) == f"{MARK}-locked":
        raise UnprocessableEntity("this Basic is locked", expression="Basic.code")


@hooks.after_write("Basic")
async def _record(conn: Any, service: ResourceService, event: hooks.WriteEvent) -> None:
    if not (_mark(event.after) or _mark(event.before) or "").startswith(MARK):
        return
    seen.append((event.method, _mark(event.before), _mark(event.after)))
    if _mark(event.after) == f"{MARK}-explode":
        raise UnprocessableEntity("the after-write hook refused", expression="Basic.code")
    if _mark(event.after) == f"{MARK}-spawn":
        await service.create_in(conn, "Basic", {"resourceType": "Basic", "code": {"text": f"{MARK}-child-{event.resource_id}"}})


def basic(mark: str) -> dict[str, Any]:
    return {"resourceType": "Basic", "code": {"text": f"{MARK}-{mark}"}}


@pytest.fixture
async def svc(database_url: str) -> AsyncIterator[ResourceService]:
    db = Database(database_url, min_size=1, max_size=2)
    await db.open()
    try:
        yield ResourceService(db, f"hooks-{uuid.uuid4().hex[:8]}", Actor("test"))
    finally:
        await db.close()


async def count(svc: ResourceService, text: str) -> int:
    async with svc.db.connection() as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM resource WHERE tenant_id = %s AND resource_type = 'Basic' AND content->'code'->>'text' = %s",
            (svc.tenant, text),
        )
        row = await cur.fetchone()
        return int(row[0])


async def test_after_write_runs_in_the_write_transaction(svc: ResourceService) -> None:
    """An after-write hook's own write commits with the write (http.html#create)."""
    created = await svc.create("Basic", basic("spawn"))
    assert ("POST", None, f"{MARK}-spawn") in seen
    assert await count(svc, f"{MARK}-child-{created.version.id}") == 1


async def test_failing_after_write_rolls_the_write_back(svc: ResourceService) -> None:
    """A write whose after-write hook fails leaves nothing behind (http.html: bad input writes nothing)."""
    with pytest.raises(FhirError):
        await svc.create("Basic", basic("explode"))
    assert await count(svc, f"{MARK}-explode") == 0
    kept = await svc.create("Basic", basic("plain"))
    with pytest.raises(FhirError):
        await svc.update("Basic", kept.version.id, {**basic("explode"), "id": kept.version.id})
    assert (await svc.read("Basic", kept.version.id)).version_id == 1


async def test_guard_refuses_update_patch_and_delete(svc: ResourceService) -> None:
    """http.html#update, #patch, #delete: a guard sees the stored content; a locked resource cannot be
    updated, patched or deleted."""
    locked = await svc.create("Basic", basic("locked"))
    rid = locked.version.id
    with pytest.raises(UnprocessableEntity) as err:
        await svc.update("Basic", rid, {**basic("changed"), "id": rid})
    assert err.value.issues[0].expression == "Basic.code"
    with pytest.raises(UnprocessableEntity):
        await svc.patch("Basic", rid, [{"op": "replace", "path": "/code/text", "value": "x"}])
    with pytest.raises(UnprocessableEntity):
        await svc.delete("Basic", rid)
    assert (await svc.read("Basic", rid)).version_id == 1


async def test_hooks_run_for_transaction_entries(svc: ResourceService) -> None:
    """bundle.html#transaction: entries go through the same hooks; one failing hook fails them all."""
    good = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": basic("spawn"), "request": {"method": "POST", "url": "Basic"}},
    ]}
    _, results, _ = await BundleService(svc).run(good)
    child = f"{MARK}-child-{results[0].version.id}"
    assert await count(svc, child) == 1

    bad = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": basic("tx-ok"), "request": {"method": "POST", "url": "Basic"}},
        {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": basic("explode"), "request": {"method": "POST", "url": "Basic"}},
    ]}
    with pytest.raises(FhirError):
        await BundleService(svc).run(bad)
    assert await count(svc, f"{MARK}-tx-ok") == 0
