"""Resource interactions (https://hl7.org/fhir/R4/http.html): the rules between REST and storage.

Validation, server-owned ``meta``, version checks, conditional matching and index upkeep
live here, so every entry point (REST, bundles, operations, the HL7 bridge) gets them.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import jsonpatch
import orjson

from fhir_server.audit.actor import Actor
from fhir_server.errors import (
    BadRequest,
    Issue,
    PreconditionFailed,
    ResourceGone,
    ResourceNotFound,
    UnprocessableEntity,
    VersionConflict,
)
from fhir_server.services.conditional import find_matches
from fhir_server.services.validate import check_resource
from fhir_server.storage import repository as repo
from fhir_server.storage.db import Database
from fhir_server.storage.repository import StoredVersion
from fhir_server.timeutil import format_instant, now

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


def _index_rows(resource: dict[str, Any]) -> Any:
    from fhir_server.search.extract import extract_index_rows

    return extract_index_rows(resource)


def _lock_key(*parts: str) -> int:
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class ResourceService:
    def __init__(self, db: Database, tenant: str, actor: Actor) -> None:
        self.db = db
        self.tenant = tenant
        self.actor = actor

    # ---- reads ---------------------------------------------------------------------------
    async def read(self, resource_type: str, resource_id: str) -> StoredVersion:
        async with self.db.connection() as conn:
            current = await repo.fetch_current(conn, self.tenant, resource_type, resource_id)
        if current is None:
            raise ResourceNotFound(f"{resource_type}/{resource_id} is not known")
        if current.deleted:
            raise ResourceGone(
                f"{resource_type}/{resource_id} was deleted",
                headers={"ETag": f'W/"{current.version_id}"'},
            )
        return current

    async def vread(self, resource_type: str, resource_id: str, version: str) -> StoredVersion:
        if not version.isdigit():
            raise ResourceNotFound(f"{resource_type}/{resource_id} has no version '{version}'")
        async with self.db.connection() as conn:
            found = await repo.fetch_version(conn, self.tenant, resource_type, resource_id, int(version))
            if found is None:
                known = await repo.exists_any_version(conn, self.tenant, resource_type, resource_id)
        if found is None:
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
            async with self.db.connection() as conn:
                return await self._create_in(conn, resource_type, resource)
        async with self.db.transaction() as conn:
            await self._lock(conn, "if-none-exist", resource_type, if_none_exist)
            matches = await find_matches(conn, self.tenant, resource_type, if_none_exist, limit=2)
            if len(matches) > 1:
                raise PreconditionFailed(f"If-None-Exist '{if_none_exist}' matches more than one {resource_type}")
            if matches:
                return WriteResult(matches[0], created=False)
            return await self._create_in(conn, resource_type, resource)

    async def _create_in(self, conn: Any, resource_type: str, resource: dict[str, Any]) -> WriteResult:
        for _ in range(_MAX_ID_RETRIES):
            version = await self._write_first(conn, resource_type, str(uuid.uuid4()), resource, "POST")
            if version is not None:
                return WriteResult(version, created=True)
        raise RuntimeError("could not allocate a resource id")  # pragma: no cover - uuid4 collisions

    async def _write_first(
        self, conn: Any, resource_type: str, resource_id: str, resource: dict[str, Any], method: str
    ) -> StoredVersion | None:
        last_updated = _next_instant(None)
        text = _stamp(resource, resource_id, 1, last_updated)
        version = StoredVersion(resource_type, resource_id, 1, last_updated, False, text, method)
        if await repo.insert_first(conn, self.tenant, version, _index_rows(resource), self.actor):
            return version
        return None

    async def _write_next(
        self, conn: Any, current: StoredVersion, resource: dict[str, Any] | None, method: str
    ) -> StoredVersion | None:
        """The version after ``current`` (a deletion when ``resource`` is None); None if another write won."""
        last_updated = _next_instant(current.last_updated)
        next_id = current.version_id + 1
        text = _stamp(resource, current.id, next_id, last_updated) if resource is not None else None
        version = StoredVersion(current.resource_type, current.id, next_id, last_updated, resource is None, text, method)
        rows = _index_rows(resource) if resource is not None else None
        if await repo.replace_version(conn, self.tenant, version, current.version_id, rows, self.actor):
            return version
        return None

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
        async with self.db.connection() as conn:
            return await self._update_in(conn, resource_type, resource_id, resource, if_match)

    async def _update_in(
        self, conn: Any, resource_type: str, resource_id: str, resource: dict[str, Any], if_match: int | None
    ) -> WriteResult:
        """Optimistic: read the current version, write the next one only if it is still current."""
        for _ in range(_MAX_WRITE_RETRIES):
            current = await repo.fetch_current(conn, self.tenant, resource_type, resource_id)
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
        async with self.db.transaction() as conn:
            await self._lock(conn, "cond-update", resource_type, query)
            matches = await find_matches(conn, self.tenant, resource_type, query, limit=2)
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
                return await self._update_in(conn, resource_type, found.id, resource, if_match)
            if resource.get("id"):
                return await self._update_in(conn, resource_type, resource["id"], resource, if_match)
            return await self._create_in(conn, resource_type, resource)

    # ---- patch ---------------------------------------------------------------------------
    async def patch(
        self, resource_type: str, resource_id: str, patch: Any, *, if_match: int | None = None
    ) -> WriteResult:
        """patch with JSON Patch (http.html#patch); the patched resource is validated like an update."""
        async with self.db.connection() as conn:
            for _ in range(_MAX_WRITE_RETRIES):
                current = await repo.fetch_current(conn, self.tenant, resource_type, resource_id)
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
            matches = await find_matches(conn, self.tenant, resource_type, query, limit=2)
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
        async with self.db.connection() as conn:
            return await self._delete_in(conn, resource_type, resource_id)

    async def _delete_in(self, conn: Any, resource_type: str, resource_id: str) -> StoredVersion | None:
        for _ in range(_MAX_WRITE_RETRIES):
            current = await repo.fetch_current(conn, self.tenant, resource_type, resource_id)
            if current is None:
                raise ResourceNotFound(f"{resource_type}/{resource_id} is not known")
            if current.deleted:
                return None
            version = await self._write_next(conn, current, None, "DELETE")
            if version is not None:
                return version
        raise VersionConflict(f"{resource_type}/{resource_id} is being changed by others; try again")

    async def conditional_delete(self, resource_type: str, query: str) -> StoredVersion | None:
        """Conditional delete (http.html#3.1.0.7.1): single-match only, more than one is 412."""
        async with self.db.transaction() as conn:
            await self._lock(conn, "cond-delete", resource_type, query)
            matches = await find_matches(conn, self.tenant, resource_type, query, limit=2)
            if len(matches) > 1:
                raise PreconditionFailed(f"The criteria '{query}' match more than one {resource_type}")
            if not matches:
                return None
            return await self._delete_in(conn, resource_type, matches[0].id)

    async def _lock(self, conn: Any, kind: str, resource_type: str, query: str) -> None:
        """Serialise conditional writes on the same criteria, so that two never both create."""
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_key(self.tenant, kind, resource_type, query),))


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

