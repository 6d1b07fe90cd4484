"""Resource interactions (https://hl7.org/fhir/R4/http.html): the rules between REST and storage.

Validation, server-owned ``meta``, version checks, conditional matching and index upkeep
live here, so every entry point (REST, bundles, operations, the HL7 bridge) gets them.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import jsonpatch
import orjson

from fhir_server.audit.actor import Actor
from fhir_server.auth.visibility import UNRESTRICTED, Access, check_compartment, prepare_write
from fhir_server.errors import (
    BadRequest,
    Issue,
    PreconditionFailed,
    ResourceGone,
    ResourceNotFound,
    UnprocessableEntity,
    VersionConflict,
)
from fhir_server.search.custom import pinned_registry, tenant_registry
from fhir_server.services import hooks
from fhir_server.services.conditional import find_matches
from fhir_server.services.validate import check_resource
from fhir_server.storage import repository as repo
from fhir_server.storage.db import Database
from fhir_server.storage.locks import advisory_lock, lock_key
from fhir_server.storage.repository import StoredVersion
from fhir_server.timeutil import format_instant, now

# the advisory-lock kinds of the conditional interactions (ResourceService.matches_in)
IF_NONE_EXIST, COND_UPDATE, COND_DELETE = "if-none-exist", "cond-update", "cond-delete"

_MAX_ID_RETRIES = 3
_MAX_WRITE_RETRIES = 50  # optimistic writes re-read and retry when another write won


@dataclass(slots=True)
class WriteResult:
    version: StoredVersion
    created: bool
    warnings: list[Issue] = field(default_factory=list)


def _stamp(resource: dict[str, Any], resource_id: str, version_id: int, last_updated: datetime) -> str:
    """Set the server-owned id and meta, and return the JSON text to store (resourceType first)."""
    meta = dict(resource.get("meta") or {})
    meta["versionId"] = str(version_id)
    meta["lastUpdated"] = format_instant(last_updated)
    body = {"resourceType": resource["resourceType"], "id": resource_id, "meta": meta}
    for key, value in resource.items():
        if key not in body:
            body[key] = value
    resource.clear()
    resource.update(body)
    return orjson.dumps(body).decode()


def _next_instant(previous: datetime | None) -> datetime:
    t = now()
    if previous is not None and t <= previous:
        # keep every resource's versions strictly ordered in time even if the clock steps back
        t = previous + timedelta(microseconds=1)
    return t


# public for the bulk loader (transfer/bulk_load.py), which stamps meta exactly as a write does
stamp = _stamp
next_instant = _next_instant


async def _index_rows(conn: Any, tenant: str, resource: dict[str, Any]) -> Any:
    """Index rows with the tenant's SearchParameters (checked first if ``resource`` is one)."""
    from fhir_server.search.custom import index_rows

    return await index_rows(conn, tenant, resource)


class BoundDatabase:
    """A ``Database`` look-alike over one connection the caller holds (and may have in a transaction).

    ``connection()`` is that connection; ``transaction()`` a transaction on it (a savepoint when
    the caller's transaction is open). Services and handlers given one run inside the caller's work.
    """

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Any]:
        yield self.conn

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Any]:
        async with self.conn.transaction():
            yield self.conn


class ResourceService:
    """The interactions. Each public one opens its connection (or transaction) and calls its
    ``*_in(conn, ...)`` form, which works on a connection the caller holds: the bundle service
    (``services.bundles``) runs many of them on one connection inside one transaction."""

    def __init__(self, db: Database | BoundDatabase, tenant: str, actor: Actor, access: Access = UNRESTRICTED) -> None:
        self.db = db
        self.tenant = tenant
        self.actor = actor
        self.access = access  # facility / patient-context narrowing (fhir_server.auth.visibility)

    def on(self, conn: Any, actor: Actor | None = None) -> ResourceService:
        """The same service bound to ``conn`` (optionally acting as ``actor``)."""
        return ResourceService(BoundDatabase(conn), self.tenant, actor or self.actor, self.access)

    # ---- reads ---------------------------------------------------------------------------
    async def read(self, resource_type: str, resource_id: str) -> StoredVersion:
        async with self.db.connection() as conn:
            return await self.read_in(conn, resource_type, resource_id)

    async def read_in(self, conn: Any, resource_type: str, resource_id: str) -> StoredVersion:
        current = await repo.fetch_current(conn, self.tenant, resource_type, resource_id, access=self.access)
        if current is None:
            raise ResourceNotFound(f"{resource_type}/{resource_id} is not known")
        if current.deleted:
            raise ResourceGone(
                f"{resource_type}/{resource_id} was deleted",
                headers={"ETag": f'W/"{current.version_id}"'},
            )
        return current

    async def vread(self, resource_type: str, resource_id: str, version: str) -> StoredVersion:
        async with self.db.connection() as conn:
            return await self.vread_in(conn, resource_type, resource_id, version)

    async def vread_in(self, conn: Any, resource_type: str, resource_id: str, version: str) -> StoredVersion:
        if not version.isdigit():
            raise ResourceNotFound(f"{resource_type}/{resource_id} has no version '{version}'")
        found = await repo.fetch_version(conn, self.tenant, resource_type, resource_id, int(version), access=self.access)
        if found is None:
            known = await repo.exists_any_version(conn, self.tenant, resource_type, resource_id, access=self.access)
            what = f"{resource_type}/{resource_id} has no version {version}" if known else f"{resource_type}/{resource_id} is not known"
            raise ResourceNotFound(what)
        if found.deleted:
            raise ResourceGone(f"{resource_type}/{resource_id} version {version} is a deletion")
        return found

    # ---- create --------------------------------------------------------------------------
    async def create(
        self, resource_type: str, resource: dict[str, Any], *, if_none_exist: str | None = None
    ) -> WriteResult:
        """create (http.html#create); conditional create with If-None-Exist (http.html#ccreate)."""
        check_resource(resource_type, resource, id_required=False)
        if if_none_exist is None:
            async with self._session(resource_type) as conn:
                return await self.create_in(conn, resource_type, resource)
        async with self.db.transaction() as conn:
            return await self.create_in(conn, resource_type, resource, if_none_exist=if_none_exist)

    async def create_in(
        self, conn: Any, resource_type: str, resource: dict[str, Any], *,
        if_none_exist: str | None = None, resource_id: str | None = None,
    ) -> WriteResult:
        """create on ``conn`` (not validated here). ``if_none_exist`` needs ``conn`` in a transaction:
        its lock lasts until the end. ``resource_id``: an id the caller chose for the new resource
        (a transaction allocates ids before it writes, to resolve ``urn:uuid`` references)."""
        if if_none_exist is not None:
            matches = await self.matches_in(conn, IF_NONE_EXIST, resource_type, if_none_exist)
            if len(matches) > 1:
                raise PreconditionFailed(f"If-None-Exist '{if_none_exist}' matches more than one {resource_type}")
            if matches:
                return WriteResult(matches[0], created=False)
        if resource_id is not None:
            version = await self._write_first(conn, resource_type, resource_id, resource, "POST")
            if version is None:
                raise VersionConflict(f"{resource_type}/{resource_id} exists already")
            return WriteResult(version, created=True)
        for _ in range(_MAX_ID_RETRIES):
            version = await self._write_first(conn, resource_type, str(uuid.uuid4()), resource, "POST")
            if version is not None:
                return WriteResult(version, created=True)
        raise RuntimeError("could not allocate a resource id")  # pragma: no cover - uuid4 collisions

    async def _write_first(
        self, conn: Any, resource_type: str, resource_id: str, resource: dict[str, Any], method: str
    ) -> StoredVersion | None:
        last_updated = _next_instant(None)
        prepare_write(self.access, resource, None)
        event = self._guard(resource_type, resource_id, None, resource, method)
        text = _stamp(resource, resource_id, 1, last_updated)
        version = StoredVersion(resource_type, resource_id, 1, last_updated, False, text, method)
        rows = await _index_rows(conn, self.tenant, resource)
        self._check_compartment(resource_type, resource_id, rows)
        if await repo.insert_first(conn, self.tenant, version, rows, self.actor):
            if event is not None:
                await self._after(conn, event)
            return version
        return None

    async def new_version_in(
        self, conn: Any, resource_type: str, resource_id: str, resource: dict[str, Any]
    ) -> tuple[StoredVersion, Any]:
        """Version 1 of a new resource, stamped, and its index rows, NOT written: a caller creating
        many (a transaction's POST entries) writes them together with ``insert_many_in``."""
        last_updated = _next_instant(None)
        prepare_write(self.access, resource, None)
        self._guard(resource_type, resource_id, None, resource, "POST")
        text = _stamp(resource, resource_id, 1, last_updated)
        rows = await _index_rows(conn, self.tenant, resource)
        self._check_compartment(resource_type, resource_id, rows)
        return StoredVersion(resource_type, resource_id, 1, last_updated, False, text, "POST"), rows

    async def insert_many_in(
        self, conn: Any, versions: list[StoredVersion], rows: list[Any], actors: list[Actor]
    ) -> None:
        """Write the versions of ``new_version_in`` in one statement (``conn`` in a transaction:
        if an id is taken nothing may stay, so this raises and the caller's transaction rolls back)."""
        written = await repo.insert_many(conn, self.tenant, versions, rows, actors)
        if written != len(versions):
            raise VersionConflict("A resource id chosen for this request exists already; try again")
        for version, actor in zip(versions, actors, strict=True):
            if hooks.has_after(version.resource_type):
                event = hooks.WriteEvent(self.tenant, version.resource_type, version.id, None,
                                         orjson.loads(version.content or "{}"), version.method, actor)
                await self._after(conn, event, actor)

    async def _write_next(
        self, conn: Any, current: StoredVersion, resource: dict[str, Any] | None, method: str
    ) -> StoredVersion | None:
        """The version after ``current`` (a deletion when ``resource`` is None); None if another write won."""
        last_updated = _next_instant(current.last_updated)
        next_id = current.version_id + 1
        if resource is not None:
            prepare_write(self.access, resource, None if current.deleted else current.content)
        event = None
        if hooks.has_hooks(current.resource_type):
            before = None if current.deleted or not current.content else orjson.loads(current.content)
            event = self._guard(current.resource_type, current.id, before, resource, method)
        text = _stamp(resource, current.id, next_id, last_updated) if resource is not None else None
        version = StoredVersion(current.resource_type, current.id, next_id, last_updated, resource is None, text, method)
        rows = await _index_rows(conn, self.tenant, resource) if resource is not None else None
        if rows is not None:
            self._check_compartment(current.resource_type, current.id, rows)
        if await repo.replace_version(conn, self.tenant, version, current.version_id, rows, self.actor):
            if event is not None:
                await self._after(conn, event)
            return version
        return None

    # ---- write hooks (fhir_server.services.hooks) -------------------------------------------
    def _session(self, resource_type: str) -> Any:
        """The connection for a single-resource interaction: a transaction when after-write hooks
        must commit with the write, else the plain connection (one statement, autocommitted)."""
        return self.db.transaction() if hooks.has_after(resource_type) else self.db.connection()

    def _guard(
        self, resource_type: str, resource_id: str, before: dict[str, Any] | None, after: dict[str, Any] | None,
        method: str,
    ) -> hooks.WriteEvent | None:
        """Run the type's guards (they raise to refuse); the event for the after-write hooks, or None."""
        if not hooks.has_hooks(resource_type):
            return None
        event = hooks.WriteEvent(self.tenant, resource_type, resource_id, before, after, method, self.actor)
        hooks.run_guards(event)
        return event

    async def _after(self, conn: Any, event: hooks.WriteEvent, actor: Actor | None = None) -> None:
        afters = hooks.afters_for(event.resource_type)
        if afters:
            bound = self.on(conn, actor)
            for fn in afters:
                await fn(conn, bound, event)

    def _check_compartment(self, resource_type: str, resource_id: str, rows: Any) -> None:
        if self.access.patient is not None:
            check_compartment(self.access, resource_type, resource_id, rows.reference)

    async def _current(self, conn: Any, resource_type: str, resource_id: str) -> StoredVersion | None:
        """The current version for a write: None if there is none; 404 if the caller may not see it
        (it must not be created over, nor told apart from a missing one by its answer)."""
        current = await repo.fetch_current(conn, self.tenant, resource_type, resource_id, access=self.access)
        if (
            current is None
            and not self.access.unrestricted
            and await repo.exists_any_version(conn, self.tenant, resource_type, resource_id)
        ):
            raise ResourceNotFound(f"{resource_type}/{resource_id} is not known")
        return current

    # ---- update --------------------------------------------------------------------------
    async def update(
        self, resource_type: str, resource_id: str, resource: dict[str, Any], *, if_match: int | None = None
    ) -> WriteResult:
        """update (http.html#update), version-aware with If-Match (http.html#concurrency)."""
        check_resource(resource_type, resource, id_required=True)
        if resource.get("id") != resource_id:
            raise BadRequest(
                f"Resource id '{resource.get('id')}' does not match the id '{resource_id}' in the URL",
                expression=f"{resource_type}.id",
            )
        async with self._session(resource_type) as conn:
            return await self.update_in(conn, resource_type, resource_id, resource, if_match)

    async def update_in(
        self, conn: Any, resource_type: str, resource_id: str, resource: dict[str, Any], if_match: int | None,
        *, current: StoredVersion | None = None,
    ) -> WriteResult:
        """Optimistic: read the current version, write the next one only if it is still current.
        ``current``: the version the caller has just read (a conditional match), used for the first try."""
        known = current
        for _ in range(_MAX_WRITE_RETRIES):
            current, known = known or await self._current(conn, resource_type, resource_id), None
            if current is None:
                if if_match is not None:
                    raise PreconditionFailed(
                        f"If-Match version {if_match} given, but {resource_type}/{resource_id} does not exist"
                    )
                # create-on-update with a client-chosen id (http.html#upsert)
                version = await self._write_first(conn, resource_type, resource_id, resource, "PUT")
                if version is not None:
                    return WriteResult(version, created=True)
                continue  # a concurrent request created it first: update that one
            _check_if_match(if_match, current.version_id)
            version = await self._write_next(conn, current, resource, "PUT")
            if version is not None:
                # updating a deleted resource brings it back: that is a create for the client
                return WriteResult(version, created=current.deleted)
            _check_if_match(if_match, current.version_id + 1)  # someone else wrote first
        raise VersionConflict(f"{resource_type}/{resource_id} is being changed by others; try again")

    async def conditional_update(
        self, resource_type: str, query: str, resource: dict[str, Any], *, if_match: int | None = None
    ) -> WriteResult:
        """Conditional update (http.html#cond-update): 0 matches create, 1 updates, more is 412."""
        check_resource(resource_type, resource, id_required=False)
        if if_match is None:
            async with self._session(resource_type) as conn:
                done = await self._update_single_match(conn, resource_type, query, resource)
            if done is not None:
                return done
        async with self.db.transaction() as conn:
            return await self.conditional_update_in(conn, resource_type, query, resource, if_match)

    async def _update_single_match(
        self, conn: Any, resource_type: str, query: str, resource: dict[str, Any]
    ) -> WriteResult | None:
        """A sync job's upsert of a resource that exists, without the lock and the transaction: the
        criteria match exactly one resource, whose next version is written only if the one matched is
        still current (a write in between: search again). None when they match none or several, or the
        body's id differs: the locked path decides those (two requests must not both create).

        Measured (bench/bench_upsert.py): the locked path costs 8 round trips (BEGIN, lock, registry,
        search, read, registry, write, COMMIT), this one 3, like a plain update (registry, search, write)."""
        with pinned_registry(self.tenant, await tenant_registry(conn, self.tenant)):
            for _ in range(3):
                matches = await find_matches(conn, self.tenant, resource_type, query, limit=2, access=self.access)
                if len(matches) != 1 or resource.get("id") not in (None, matches[0].id):
                    return None
                resource["id"] = matches[0].id
                version = await self._write_next(conn, matches[0], resource, "PUT")
                if version is not None:
                    return WriteResult(version, created=False)
        return None

    async def conditional_update_in(
        self, conn: Any, resource_type: str, query: str, resource: dict[str, Any], if_match: int | None
    ) -> WriteResult:
        """Conditional update on ``conn``, which must be in a transaction (the lock lasts until its end)."""
        matches = await self.matches_in(conn, COND_UPDATE, resource_type, query)
        if len(matches) > 1:
            raise PreconditionFailed(f"The criteria '{query}' match more than one {resource_type}")
        if matches:
            found = matches[0]
            if resource.get("id") not in (None, found.id):
                raise BadRequest(
                    f"Resource id '{resource['id']}' differs from the matched {resource_type}/{found.id}",
                    expression=f"{resource_type}.id",
                )
            resource["id"] = found.id
            return await self.update_in(conn, resource_type, found.id, resource, if_match, current=found)
        if resource.get("id"):
            return await self.update_in(conn, resource_type, resource["id"], resource, if_match)
        return await self.create_in(conn, resource_type, resource)

    # ---- patch ---------------------------------------------------------------------------
    async def patch(
        self, resource_type: str, resource_id: str, patch: Any, *, if_match: int | None = None
    ) -> WriteResult:
        """patch with JSON Patch (http.html#patch); the patched resource is validated like an update."""
        async with self._session(resource_type) as conn:
            return await self.patch_in(conn, resource_type, resource_id, patch, if_match)

    async def patch_in(
        self, conn: Any, resource_type: str, resource_id: str, patch: Any, if_match: int | None = None
    ) -> WriteResult:
        for _ in range(_MAX_WRITE_RETRIES):
            current = await self._current(conn, resource_type, resource_id)
            if current is None:
                raise ResourceNotFound(f"{resource_type}/{resource_id} is not known")
            if current.deleted:
                raise ResourceGone(f"{resource_type}/{resource_id} was deleted")
            _check_if_match(if_match, current.version_id)
            resource = apply_json_patch(orjson.loads(current.content or "{}"), patch)
            if resource.get("resourceType") != resource_type or resource.get("id") != resource_id:
                raise UnprocessableEntity("A patch must not change the resourceType or id")
            check_resource(resource_type, resource, id_required=True)
            version = await self._write_next(conn, current, resource, "PATCH")
            if version is not None:
                return WriteResult(version, created=False)
            _check_if_match(if_match, current.version_id + 1)
        raise VersionConflict(f"{resource_type}/{resource_id} is being changed by others; try again")

    async def conditional_patch(self, resource_type: str, query: str, patch: Any) -> WriteResult:
        async with self.db.connection() as conn:
            matches = await find_matches(conn, self.tenant, resource_type, query, limit=2, access=self.access)
        if not matches:
            raise ResourceNotFound(f"No {resource_type} matches '{query}'")
        if len(matches) > 1:
            raise PreconditionFailed(f"The criteria '{query}' match more than one {resource_type}")
        return await self.patch(resource_type, matches[0].id, patch)

    # ---- delete --------------------------------------------------------------------------
    async def delete(self, resource_type: str, resource_id: str) -> StoredVersion | None:
        """delete (http.html#delete): a new version marked deleted; history keeps the rest.

        Returns the deletion version, or None when the resource was already deleted.
        """
        async with self._session(resource_type) as conn:
            return await self.delete_in(conn, resource_type, resource_id)

    async def delete_in(
        self, conn: Any, resource_type: str, resource_id: str, if_match: int | None = None
    ) -> StoredVersion | None:
        for _ in range(_MAX_WRITE_RETRIES):
            current = await self._current(conn, resource_type, resource_id)
            if current is None:
                raise ResourceNotFound(f"{resource_type}/{resource_id} is not known")
            _check_if_match(if_match, current.version_id)
            if current.deleted:
                return None
            version = await self._write_next(conn, current, None, "DELETE")
            if version is not None:
                return version
            _check_if_match(if_match, current.version_id + 1)
        raise VersionConflict(f"{resource_type}/{resource_id} is being changed by others; try again")

    async def conditional_delete(self, resource_type: str, query: str) -> StoredVersion | None:
        """Conditional delete (http.html#3.1.0.7.1): single-match only, more than one is 412."""
        async with self.db.transaction() as conn:
            return await self.conditional_delete_in(conn, resource_type, query)

    async def conditional_delete_in(self, conn: Any, resource_type: str, query: str) -> StoredVersion | None:
        """Conditional delete on ``conn``, which must be in a transaction (the lock lasts until its end)."""
        matches = await self.matches_in(conn, COND_DELETE, resource_type, query)
        if len(matches) > 1:
            raise PreconditionFailed(f"The criteria '{query}' match more than one {resource_type}")
        if not matches:
            return None
        return await self.delete_in(conn, resource_type, matches[0].id)

    async def matches_in(self, conn: Any, kind: str, resource_type: str, query: str) -> list[StoredVersion]:
        """Up to two resources matching conditional ``query``, under the lock of (``kind``, criteria).

        ``conn`` must be in a transaction. A caller that waited for the lock sees what the holder
        committed: under READ COMMITTED the search after it is a new statement with a new snapshot.
        """
        await self.lock_in(conn, kind, resource_type, query)
        return await find_matches(conn, self.tenant, resource_type, query, limit=2, access=self.access)

    async def lock_in(self, conn: Any, kind: str, resource_type: str, query: str) -> None:
        """Serialise conditional writes on the same criteria, so that two never both create."""
        await advisory_lock(conn, self.tenant, kind, resource_type, query)

    def lock_key(self, kind: str, resource_type: str, query: str) -> int:
        return lock_key(self.tenant, kind, resource_type, query)


def _check_if_match(if_match: int | None, current_version: int) -> None:
    if if_match is not None and if_match != current_version:
        raise PreconditionFailed(
            f"If-Match version {if_match} does not match the current version {current_version}"
        )


def apply_json_patch(document: dict[str, Any], patch: Any) -> dict[str, Any]:
    if not isinstance(patch, list):
        raise BadRequest("A JSON Patch document must be an array of operations")
    try:
        result = jsonpatch.JsonPatch(patch).apply(document)
    except jsonpatch.JsonPatchTestFailed as exc:
        raise UnprocessableEntity(f"JSON Patch test failed: {exc}") from None
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, TypeError, KeyError) as exc:
        raise UnprocessableEntity(f"JSON Patch could not be applied: {exc}") from None
    if not isinstance(result, dict):
        raise UnprocessableEntity("JSON Patch result is not a resource")
    return result

