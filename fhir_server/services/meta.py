"""The meta operations (https://hl7.org/fhir/R4/resource-operation-meta.html, -meta-add.html,
-meta-delete.html): profiles, tags and security labels of one resource, or in use on the server.

``$meta-add``/``$meta-delete`` do not create a version ("executing this operation does not cause
a new version of the resource to be created"): ``versionId`` and ``lastUpdated`` stay, the stored
JSON of the current version changes in place (``fhir_server.storage.meta``). Codings are the same
tag / security label when ``system`` and ``code`` are equal; profiles are compared by URL.
Adding keeps an existing entry as it is (its display too); deleting ignores entries not present.
"""

from __future__ import annotations

from typing import Any

import orjson

from fhir_server.audit.actor import Actor
from fhir_server.auth.visibility import Access, prepare_write
from fhir_server.errors import BadRequest, InvalidResource, ResourceGone, ResourceNotFound, VersionConflict
from fhir_server.services import hooks
from fhir_server.services.resources import BoundDatabase
from fhir_server.storage import repository as repo
from fhir_server.storage.db import Database
from fhir_server.storage.meta import meta_in_use, rewrite_meta

LISTS = ("profile", "security", "tag")


def _coding_key(c: Any) -> tuple[Any, Any]:
    return (c.get("system"), c.get("code")) if isinstance(c, dict) else (None, None)


def check_meta(meta: Any, expression: str) -> dict[str, Any]:
    """The ``profile``/``security``/``tag`` lists of an input Meta, shape-checked (400 otherwise)."""
    if not isinstance(meta, dict):
        raise BadRequest("A Meta value is required (valueMeta)", expression=expression)
    out: dict[str, Any] = {}
    for name in LISTS:
        items = meta.get(name, [])
        if not isinstance(items, list):
            raise BadRequest(f"Meta.{name} must be an array", expression=f"{expression}.{name}")
        for i, item in enumerate(items):
            where = f"{expression}.{name}[{i}]"
            if name == "profile":
                if not isinstance(item, str) or not item:
                    raise BadRequest("A profile is a canonical URL", expression=where)
            elif not isinstance(item, dict) or not (item.get("system") or item.get("code")):
                raise BadRequest("A tag or security label is a Coding with a system and/or a code", expression=where)
        out[name] = items
    return out


def merged(meta: dict[str, Any], change: dict[str, Any], *, add: bool) -> dict[str, Any]:
    """``meta`` with the entries of ``change`` added (absent ones appended) or deleted."""
    result = dict(meta)
    for name in LISTS:
        current = list(meta.get(name) or [])
        items = change.get(name) or []
        key = (lambda v: v) if name == "profile" else _coding_key
        if add:
            seen = {key(v) for v in current}
            for item in items:
                if key(item) not in seen:
                    current.append(item)
                    seen.add(key(item))
        else:
            gone = {key(v) for v in items}
            current = [v for v in current if key(v) not in gone]
        if current:
            result[name] = current
        else:
            result.pop(name, None)
    return result


def meta_of(content: str | None) -> dict[str, Any]:
    resource = orjson.loads(content or "{}")
    meta = resource.get("meta")
    return dict(meta) if isinstance(meta, dict) else {}


async def meta_summary(
    db: Database | BoundDatabase, tenant: str, resource_type: str | None, access: Access | None = None
) -> dict[str, Any]:
    """The union of the tags, security labels and profiles in use (system or type level) on the
    resources the caller (``access``) may see."""
    async with db.connection() as conn:
        codings, profiles = await meta_in_use(conn, tenant, resource_type, access)
    meta: dict[str, Any] = {}
    if profiles:
        meta["profile"] = profiles
    for param, name in (("_security", "security"), ("_tag", "tag")):
        items = [
            {k: v for k, v in (("system", system), ("code", code)) if v is not None}
            for p, system, code in codings
            if p == param
        ]
        if items:
            meta[name] = items
    return meta


async def change_meta(
    db: Database | BoundDatabase, tenant: str, actor: Actor, resource_type: str, resource_id: str, change: dict[str, Any], *, add: bool,
    access: Access | None = None,
) -> tuple[dict[str, Any], bool]:
    """Apply ``$meta-add`` (``add``) or ``$meta-delete`` to the current version: the resulting Meta,
    and whether anything was written (nothing is when the Meta does not change)."""
    from fhir_server.search.extract import extract_index_rows
    from fhir_server.services.validate import validation_issues

    async with db.transaction() as conn:
        current = await repo.fetch_current(conn, tenant, resource_type, resource_id, for_update=True, access=access)
        if current is None:
            raise ResourceNotFound(f"{resource_type}/{resource_id} is not known")
        if current.deleted:
            raise ResourceGone(f"{resource_type}/{resource_id} was deleted", headers={"ETag": f'W/"{current.version_id}"'})
        resource = orjson.loads(current.content or "{}")
        before = dict(resource.get("meta") or {})
        resource["meta"] = merged(before, change, add=add)
        prepare_write(access, resource, current.content)  # a bound caller keeps to its facilities
        after = resource["meta"]
        if after == before:
            return after, False  # nothing to change: no write, no audit row for an update
        issues = [i for i in validation_issues(resource) if i.severity in ("error", "fatal")]
        if issues:
            raise InvalidResource(f"{resource_type} with the new meta fails validation against FHIR R4", issues=issues)
        # the workflow rules see a meta change like any write (a finalized prescription's tag stays)
        if hooks.has_hooks(resource_type):
            hooks.run_guards(hooks.WriteEvent(
                tenant, resource_type, resource_id, orjson.loads(current.content or "{}"), resource, "PATCH", actor,
            ))
        content = orjson.dumps(resource).decode()
        written = await rewrite_meta(
            conn, tenant, resource_type, resource_id, current.version_id, content, extract_index_rows(resource), actor
        )
        if not written:  # pragma: no cover - the row is locked FOR UPDATE
            raise VersionConflict(f"{resource_type}/{resource_id} changed meanwhile; try again")
    return after, True
