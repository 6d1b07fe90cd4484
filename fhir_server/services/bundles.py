"""Transaction and batch Bundles (https://hl7.org/fhir/R4/http.html#transaction, #batch,
https://hl7.org/fhir/R4/bundle.html#transaction).

A transaction runs on ONE connection inside ONE database transaction, in the order of
http.html#trules: DELETE, then POST, then PUT/PATCH, then GET (and other reads/operations).
Before anything is written every write entry gets its target identity (conditional criteria are
matched under their advisory locks, taken up front in key order so two bundles cannot deadlock on
them), the ``urn:uuid:``/``urn:oid:`` fullUrls are mapped to ``Type/id``, conditional references
(``Patient?identifier=…``) are resolved, and every reference in the bundle's resources is rewritten.
Any failure rolls the whole transaction back and names the entry (``Bundle.entry[i]``).

A batch runs each entry in its own database transaction on one connection; a failing entry gets
its own status and OperationOutcome and the others still happen.

Writes go through ``ResourceService.*_in(conn, …)``, so validation, versioning, index rows and the
audit row of each write are the same as for single requests. Reads, searches, history and
operations are not this module's business: the caller passes ``other`` to run them on the
connection (``fhir_server.api.transaction`` dispatches them to the ordinary handlers).
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
import psycopg
from psycopg import errors as pg_errors

from fhir_server.audit.actor import Actor
from fhir_server.definitions.resource_types import RESOURCE_TYPES
from fhir_server.errors import (
    BadRequest,
    FhirError,
    Issue,
    NotImplementedInteraction,
    PreconditionFailed,
    ResourceNotFound,
    VersionConflict,
)
from fhir_server.search.custom import pinned_registry, tenant_registry
from fhir_server.services.conditional import find_matches
from fhir_server.services.resources import (
    COND_DELETE,
    COND_UPDATE,
    IF_NONE_EXIST,
    ResourceService,
    WriteResult,
)
from fhir_server.services.validate import check_resource
from fhir_server.storage.repository import StoredVersion

__all__ = ["BundleEntry", "BundleService", "EntryResult", "parse_bundle", "rewrite_references"]

log = logging.getLogger("fhir_server.bundles")

_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_CONDITIONAL_REF = re.compile(r"([A-Z][A-Za-z]+)\?(.+)")
_NARRATIVE_LINK = re.compile(r'((?:href|src)=")(urn:(?:uuid|oid):[^"]+)(")')
_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
_JSON_PATCH = "application/json-patch+json"
# http.html#trules: the phase each kind of entry runs in
_PHASE = {"delete": 0, "cond-delete": 0, "create": 1, "update": 2, "cond-update": 2, "patch": 2, "cond-patch": 2}
_OTHER_PHASE = 3  # GET/HEAD, POST [type]/_search, $operations
_CREATE_CHUNK = 1000  # POST entries written per multi-row statement


@dataclass(slots=True)
class BundleEntry:
    index: int
    method: str
    url: str
    kind: str  # create | update | cond-update | patch | cond-patch | delete | cond-delete | other
    resource_type: str | None
    resource_id: str | None
    query: str  # the query string of request.url ('' if none)
    path: str  # request.url without the query string, relative to the base
    resource: Any = None
    full_url: str | None = None
    if_none_exist: str | None = None
    if_match: int | None = None
    if_none_match: str | None = None
    if_modified_since: str | None = None
    patch: Any = None  # the JSON Patch of a PATCH entry
    # filled while processing
    target: str | None = None  # the id the entry writes (or matched)
    matched: StoredVersion | None = None  # a conditional create that found its resource
    refs: list[dict[str, Any]] = field(default_factory=list)  # the objects holding a "reference"

    @property
    def label(self) -> str:
        return f"{self.method} {self.url}"

    @property
    def writes(self) -> bool:
        return self.kind != "other"


@dataclass(slots=True)
class EntryResult:
    """What one entry did. Writes carry ``version``; other entries the answer of their handler."""

    status: int
    version: StoredVersion | None = None
    location: bool = False
    message: str = ""
    audited: bool = False  # the write's own statement recorded its audit row
    body: bytes | None = None  # an ``other`` entry's response body (JSON)
    headers: dict[str, str] = field(default_factory=dict)
    error: FhirError | None = None  # a failed batch entry


OtherRunner = Callable[[Any, BundleEntry], Awaitable[EntryResult]]
Authorizer = Callable[[BundleEntry], Awaitable[None]]  # raises Forbidden for an entry the caller may not run


# ---- parsing ------------------------------------------------------------------------------------
def _bad(i: int, message: str, where: str = "request.url") -> BadRequest:
    return BadRequest(f"Bundle.entry[{i}]: {message}", expression=f"Bundle.entry[{i}].{where}")


def _if_match(i: int, value: Any) -> int | None:
    if value is None:
        return None
    tag = str(value).strip().removeprefix("W/").strip('"')
    if not tag.isdigit():
        raise _bad(i, f"ifMatch '{value}' is not a version ETag like W/\"3\"", "request.ifMatch")
    return int(tag)


def _relative(i: int, url: str, base: str | None) -> str:
    if url.startswith(("http://", "https://")):
        if base and url.startswith(base.rstrip("/") + "/"):
            return url[len(base.rstrip("/")) + 1 :]
        raise _bad(i, f"request.url '{url}' is not on this server; use a URL relative to the base")
    return url.lstrip("/")


def _patch_document(i: int, resource: Any) -> Any:
    """R4 PATCH in a bundle: a Binary holding the JSON Patch (http.html#patch), base64 in ``data``."""
    if not isinstance(resource, dict):
        raise _bad(i, "a PATCH entry needs a Binary resource holding a JSON Patch", "resource")
    if resource.get("resourceType") == "Parameters":
        raise NotImplementedInteraction(
            f"Bundle.entry[{i}]: FHIRPath Patch (Parameters) is not supported yet; send a Binary with a JSON Patch",
            expression=f"Bundle.entry[{i}].resource",
        )
    if resource.get("resourceType") != "Binary" or resource.get("contentType", "").split(";")[0] != _JSON_PATCH:
        raise _bad(i, f"a PATCH entry needs a Binary resource with contentType {_JSON_PATCH}", "resource")
    try:
        return orjson.loads(base64.b64decode(resource.get("data") or "", validate=True))
    except (binascii.Error, ValueError):
        raise _bad(i, "the Binary data is not a base64 JSON Patch document", "resource.data") from None


def parse_entry(i: int, raw: Any, base: str | None) -> BundleEntry:
    """One entry's request (bundle.html#transaction): method, URL shape, resource, preconditions."""
    if not isinstance(raw, dict):
        raise _bad(i, "an entry must be an object", "")
    request = raw.get("request")
    if not isinstance(request, dict):
        raise _bad(i, "entry.request (method and url) is required in a transaction or batch", "request")
    method = request.get("method")
    url = request.get("url")
    if method not in _METHODS:
        raise _bad(i, f"request.method must be one of {', '.join(_METHODS)}", "request.method")
    if not isinstance(url, str) or not url.strip():
        raise _bad(i, "request.url is required")
    rel = _relative(i, url.strip(), base)
    path, _, query = rel.partition("?")
    segments = [s for s in path.split("/") if s] if path else []
    resource = raw.get("resource")
    rtype = segments[0] if segments else None
    rid = segments[1] if len(segments) > 1 else None
    kind = "other"
    n = len(segments)
    is_op = any(s.startswith("$") for s in segments)
    if method in ("POST", "PUT", "PATCH", "DELETE") and not is_op and not (method == "POST" and path.endswith("/_search")):
        if rtype not in RESOURCE_TYPES:
            raise _bad(i, f"request.url '{url}' does not start with an R4 resource type")
        if n == 1 and method == "POST" and not query:
            kind = "create"
        elif n == 1 and method != "POST" and query:
            kind = {"PUT": "cond-update", "PATCH": "cond-patch", "DELETE": "cond-delete"}[method]
        elif n == 2 and method != "POST" and not query:
            if not _ID.fullmatch(rid or ""):
                raise _bad(i, f"'{rid}' is not a valid resource id")
            kind = {"PUT": "update", "PATCH": "patch", "DELETE": "delete"}[method]
        else:
            raise _bad(i, f"request.url '{url}' is not a valid target for {method}")
    entry = BundleEntry(
        i, method, url, kind, rtype, rid, query, path, resource,
        raw.get("fullUrl") if isinstance(raw.get("fullUrl"), str) else None,
        request.get("ifNoneExist") or None, _if_match(i, request.get("ifMatch")),
        request.get("ifNoneMatch"), request.get("ifModifiedSince"),
    )
    if kind in ("create", "update", "cond-update"):
        if not isinstance(resource, dict):
            raise _bad(i, f"a {method} entry needs a resource", "resource")
        if resource.get("resourceType") != rtype:
            raise _bad(i, f"the resource is a {resource.get('resourceType')!r} but request.url is for {rtype}", "resource.resourceType")
        if kind == "update" and resource.get("id") != rid:
            raise _bad(i, f"resource id '{resource.get('id')}' does not match the id '{rid}' in request.url", "resource.id")
    elif kind in ("patch", "cond-patch"):
        entry.patch = _patch_document(i, resource)
    if entry.if_none_exist is not None and kind != "create":
        raise _bad(i, "ifNoneExist only applies to a POST (create)", "request.ifNoneExist")
    return entry


def parse_bundle(bundle: Any, base: str | None) -> tuple[str, list[Any]]:
    """The Bundle itself: a transaction or batch (bundle.html#transaction). Returns (type, raw entries)."""
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise BadRequest("POST to the base needs a Bundle of type transaction or batch", expression="Bundle")
    btype = bundle.get("type")
    if btype not in ("transaction", "batch"):
        raise BadRequest(f"Bundle.type must be transaction or batch, not {btype!r}", expression="Bundle.type")
    entries = bundle.get("entry") or []
    if not isinstance(entries, list):
        raise BadRequest("Bundle.entry must be a list", expression="Bundle.entry")
    return btype, entries


# ---- references ---------------------------------------------------------------------------------
def _collect_refs(node: Any, out: list[dict[str, Any]]) -> None:
    """Every object holding a ``reference`` string (extensions included), in document order.
    No paths: building one per element cost more than the rest of the walk (``_path_to`` on error)."""
    if isinstance(node, dict):
        if isinstance(node.get("reference"), str):
            out.append(node)
        for value in node.values():
            if isinstance(value, (dict, list)):
                _collect_refs(value, out)
    elif isinstance(node, list):
        for value in node:
            if isinstance(value, (dict, list)):
                _collect_refs(value, out)


def _path_to(node: Any, target: dict[str, Any], path: str) -> str | None:
    """The FHIRPath-like path of ``target`` (by identity) under ``node``."""
    if node is target:
        return path
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        if isinstance(value, (dict, list)):
            found = _path_to(value, target, f"{path}[{key}]" if isinstance(node, list) else f"{path}.{key}")
            if found is not None:
                return found
    return None


def _rewrite_narrative(resource: dict[str, Any], mapping: dict[str, str]) -> None:
    """``<a href="urn:uuid:…">`` and ``<img src="urn:uuid:…">`` in the narrative follow too (http.html#trules)."""
    text = resource.get("text")
    div = text.get("div") if isinstance(text, dict) else None
    if isinstance(div, str) and "urn:" in div:
        text["div"] = _NARRATIVE_LINK.sub(lambda m: m[1] + mapping.get(m[2], m[2]) + m[3], div)


def rewrite_references(resource: dict[str, Any], mapping: dict[str, str]) -> None:
    """Replace every ``reference`` (and narrative link) found in ``mapping`` (bundle.html#references)."""
    refs: list[dict[str, Any]] = []
    _collect_refs(resource, refs)
    for node in refs:
        target = mapping.get(node["reference"])
        if target is not None:
            node["reference"] = target
    _rewrite_narrative(resource, mapping)


# ---- errors -------------------------------------------------------------------------------------
def at_entry(exc: FhirError, entry: BundleEntry) -> FhirError:
    """The same error, its issues naming the entry (``Bundle.entry[i]…``)."""
    if getattr(exc, "bundle_entry", None) is not None:
        return exc
    i, rtype = entry.index, entry.resource_type or ""
    issues = []
    for issue in exc.issues:
        expr = issue.expression
        if expr and expr.startswith("Bundle."):
            pass
        elif expr and rtype and (expr == rtype or expr.startswith(rtype + ".")):
            expr = f"Bundle.entry[{i}].resource{expr[len(rtype):]}"
        elif expr == "resourceType" or (expr or "").startswith("resourceType"):
            expr = f"Bundle.entry[{i}].resource.{expr}"
        else:
            expr = f"Bundle.entry[{i}]" if not expr else f"Bundle.entry[{i}].request.url"
        diagnostics = issue.diagnostics
        if not diagnostics.startswith("Bundle.entry["):
            diagnostics = f"Bundle.entry[{i}] ({entry.label}): {diagnostics}"
        issues.append(Issue(issue.severity, issue.code, diagnostics, expr))
    named = type(exc)(issues[0].diagnostics if issues else exc.diagnostics, issues=issues)
    named.bundle_entry = i  # type: ignore[attr-defined]
    return named


@contextmanager
def _entry_errors(entry: BundleEntry) -> Iterator[None]:
    try:
        yield
    except FhirError as exc:
        raise at_entry(exc, entry) from None
    except (pg_errors.DeadlockDetected, pg_errors.SerializationFailure, pg_errors.LockNotAvailable) as exc:
        log.info("bundle entry lost a concurrency race", extra={"entry": entry.index, "reason": type(exc).__name__})
        raise at_entry(VersionConflict("Another request changed the same resources at the same time; try again"), entry) from None


# ---- processing ---------------------------------------------------------------------------------
class BundleService:
    """Runs transaction and batch Bundles through ``ResourceService`` on one connection.

    ``keep_local_ids`` (the ``import`` command): a POSTed entry whose fullUrl is ``urn:uuid:<id>``
    keeps that id (an upsert), so importing the same file twice does not duplicate it. Over HTTP
    the server assigns ids (http.html#create).
    """

    def __init__(
        self, service: ResourceService, *, base: str | None = None, other: OtherRunner | None = None,
        keep_local_ids: bool = False, authorize: Authorizer | None = None,
    ) -> None:
        self.service = service
        self.base = base
        self.other = other
        self.keep_local_ids = keep_local_ids
        self.authorize = authorize

    async def _authorize(self, entries: list[BundleEntry]) -> None:
        """Every entry's method and URL against the caller's permissions, before anything runs
        (403 naming ``Bundle.entry[i]``: the whole transaction fails, a batch entry fails alone)."""
        if self.authorize is not None:
            for entry in entries:
                with _entry_errors(entry):
                    await self.authorize(entry)

    async def run(self, bundle: Any) -> tuple[str, list[EntryResult], list[BundleEntry | None]]:
        btype, raw = parse_bundle(bundle, self.base)
        if btype == "transaction":
            entries = [parse_entry(i, e, self.base) for i, e in enumerate(raw)]
            return btype, await self.transaction(entries), list(entries)
        results, parsed = await self.batch(raw)
        return btype, results, parsed

    # -- transaction --
    async def transaction(self, entries: list[BundleEntry]) -> list[EntryResult]:
        """All or nothing (http.html#transaction): one database transaction, spec order."""
        await self._authorize(entries)
        _check_resources(entries)
        try:
            async with self.service.db.transaction() as conn:
                return await self._process(conn, entries, {})
        except (pg_errors.DeadlockDetected, pg_errors.SerializationFailure) as exc:
            log.info("transaction lost a concurrency race", extra={"reason": type(exc).__name__})
            raise VersionConflict("Another request changed the same resources at the same time; try again") from None

    # -- batch --
    async def batch(self, raw: list[Any]) -> tuple[list[EntryResult], list[BundleEntry | None]]:
        """Each entry on its own (http.html#batch): its own database transaction and outcome."""
        results: list[EntryResult] = []
        parsed: list[BundleEntry | None] = []
        mapping: dict[str, str] = {}  # urn:uuid fullUrls of entries already written
        async with self.service.db.connection() as conn:
            for i, item in enumerate(raw):
                entry: BundleEntry | None = None
                try:
                    entry = parse_entry(i, item, self.base)
                    await self._authorize([entry])
                    _check_resources([entry])
                    if entry.writes:
                        try:
                            async with conn.transaction():
                                result = (await self._process(conn, [entry], mapping))[0]
                        except BaseException:
                            mapping.pop(entry.full_url or "", None)  # rolled back: nothing to refer to
                            raise
                    else:
                        result = await self._run_other(conn, entry)
                except FhirError as exc:
                    error = at_entry(exc, entry) if entry is not None else exc
                    result = EntryResult(error.status, error=error)
                except psycopg.Error as exc:
                    if conn.closed or conn.broken:
                        raise
                    log.error("batch entry failed", exc_info=exc, extra={"entry": i})
                    error = VersionConflict("The entry could not be processed; try again", expression=f"Bundle.entry[{i}]")
                    result = EntryResult(error.status if _is_race(exc) else 500, error=error)
                results.append(result)
                parsed.append(entry)
        return results, parsed

    # -- the shared core --
    async def _process(self, conn: Any, entries: list[BundleEntry], mapping: dict[str, str]) -> list[EntryResult]:
        """The entries on ``conn`` (in a transaction). The tenant's SearchParameter registry is read
        once for them all, unless they write a SearchParameter: then every write reads it again, so
        the entries after a new SearchParameter are indexed with it, as when sent one by one."""
        if any(e.writes and e.resource_type == "SearchParameter" for e in entries):
            return await self._process_entries(conn, entries, mapping, batch_creates=False)
        tenant = self.service.tenant
        with pinned_registry(tenant, await tenant_registry(conn, tenant)):
            return await self._process_entries(conn, entries, mapping, batch_creates=True)

    async def _process_entries(
        self, conn: Any, entries: list[BundleEntry], mapping: dict[str, str], *, batch_creates: bool
    ) -> list[EntryResult]:
        results: dict[int, EntryResult] = {}
        await self._lock_conditionals(conn, entries)
        ordered = sorted(entries, key=lambda e: (_PHASE.get(e.kind, _OTHER_PHASE), e.index))
        for entry in ordered:  # 1. DELETE
            if entry.kind in ("delete", "cond-delete"):
                with _entry_errors(entry):
                    results[entry.index] = await self._delete(conn, entry)
        touched: dict[tuple[str, str], int] = {}
        for entry in ordered:
            if entry.kind in ("delete", "cond-delete") and entry.target:
                _claim(touched, entry)
        seen_criteria: dict[tuple[str, str, str], int] = {}
        for entry in ordered:  # identities of the POST/PUT/PATCH entries, before anything is written
            if entry.kind in ("create", "update", "cond-update", "patch", "cond-patch"):
                with _entry_errors(entry):
                    await self._resolve_target(conn, entry, seen_criteria)
                _claim(touched, entry)
                if entry.full_url and entry.full_url.startswith(("urn:uuid:", "urn:oid:")):
                    mapping[entry.full_url] = f"{entry.resource_type}/{entry.target}"
        await self._resolve_references(conn, entries, mapping)
        if batch_creates:  # 2. POST of new resources: a few multi-row statements
            new = [e for e in ordered if e.kind == "create" and e.matched is None and not self._keeps_id(e)]
            if len(new) > 1:
                await self._create_many(conn, new, results)
        for entry in ordered:  # 2. POST (the rest), 3. PUT/PATCH
            if entry.kind in ("create", "update", "cond-update", "patch", "cond-patch") and entry.index not in results:
                with _entry_errors(entry):
                    results[entry.index] = await self._write(conn, entry)
        for entry in ordered:  # 4. GET (and other reads, operations)
            if not entry.writes:
                with _entry_errors(entry):
                    results[entry.index] = await self._run_other(conn, entry)
        return [results[e.index] for e in entries]

    def _actor(self, entry: BundleEntry) -> Actor:
        """Who the entry's audit row names: the request's agent, the entry's method and path."""
        actor = self.service.actor
        if actor.method == "SYSTEM":
            return actor
        return replace(actor, method=entry.method, path=f"/fhir/{entry.path}")  # who, role, purpose… kept

    def _on(self, conn: Any, entry: BundleEntry) -> ResourceService:
        return self.service.on(conn, self._actor(entry))

    def _keeps_id(self, entry: BundleEntry) -> bool:
        """An ``import`` entry that keeps its urn:uuid id: an upsert, not a create."""
        return self.keep_local_ids and entry.target == _local_id(entry.full_url)

    async def _create_many(self, conn: Any, entries: list[BundleEntry], results: dict[int, EntryResult]) -> None:
        """POST entries whose ids the server chose: stamped and indexed one by one, written together
        (resource, history, audit and index rows of up to ``_CREATE_CHUNK`` entries per statement)."""
        svc = self.service
        for start in range(0, len(entries), _CREATE_CHUNK):
            chunk = entries[start : start + _CREATE_CHUNK]
            versions: list[StoredVersion] = []
            rows: list[Any] = []
            for entry in chunk:
                assert entry.resource_type is not None and entry.target is not None
                with _entry_errors(entry):
                    version, index = await svc.new_version_in(conn, entry.resource_type, entry.target, entry.resource)
                versions.append(version)
                rows.append(index)
            actors: dict[tuple[str, str], Actor] = {}  # one per method and path (most entries share one)
            for e in chunk:
                if (e.method, e.path) not in actors:
                    actors[(e.method, e.path)] = self._actor(e)
            await svc.insert_many_in(conn, versions, rows, [actors[(e.method, e.path)] for e in chunk])
            for entry, version in zip(chunk, versions, strict=True):
                results[entry.index] = EntryResult(201, version, location=True, message="Created", audited=True)

    async def _lock_conditionals(self, conn: Any, entries: list[BundleEntry]) -> None:
        """The advisory locks of every conditional write, in key order (no deadlock between bundles).
        The keys are those of the single-request interactions, so both serialise alike."""
        keys = set()
        for e in entries:
            assert e.resource_type is not None or not e.writes
            if e.kind == "create" and e.if_none_exist:
                keys.add(self.service.lock_key(IF_NONE_EXIST, e.resource_type or "", e.if_none_exist))
            elif e.kind == "cond-update":
                keys.add(self.service.lock_key(COND_UPDATE, e.resource_type or "", e.query))
            elif e.kind == "cond-delete":
                keys.add(self.service.lock_key(COND_DELETE, e.resource_type or "", e.query))
        if keys:  # one round trip for all, taken in the order of the (sorted) array
            await conn.execute(
                "SELECT count(pg_advisory_xact_lock(k)) FROM unnest(%s::bigint[]) AS k",
                (sorted(keys),), prepare=True,
            )

    async def _matches(self, conn: Any, entry: BundleEntry, query: str) -> list[StoredVersion]:
        assert entry.resource_type is not None
        return await find_matches(conn, self.service.tenant, entry.resource_type, query, limit=2, access=self.service.access)

    async def _delete(self, conn: Any, entry: BundleEntry) -> EntryResult:
        assert entry.resource_type is not None
        svc = self._on(conn, entry)
        if entry.kind == "cond-delete":
            matches = await self._matches(conn, entry, entry.query)
            if len(matches) > 1:
                raise PreconditionFailed(f"The criteria '{entry.query}' match more than one {entry.resource_type}")
            if not matches:
                return EntryResult(204, message="No match; nothing deleted")
            entry.target = matches[0].id
        else:
            entry.target = entry.resource_id
        assert entry.target is not None
        version = await svc.delete_in(conn, entry.resource_type, entry.target, entry.if_match)
        if version is None:
            return EntryResult(204, message="Already deleted")
        return EntryResult(204, version, message="Deleted", audited=True)

    async def _resolve_target(self, conn: Any, entry: BundleEntry, seen: dict[tuple[str, str, str], int]) -> None:
        criteria = entry.if_none_exist if entry.kind == "create" else entry.query
        if criteria:
            key = (entry.kind, entry.resource_type or "", criteria)
            if key in seen:
                raise BadRequest(f"Bundle.entry[{seen[key]}] has the same conditional criteria '{criteria}'")
            seen[key] = entry.index
        if entry.kind == "create":
            if entry.if_none_exist:
                matches = await self._matches(conn, entry, entry.if_none_exist)
                if len(matches) > 1:
                    raise PreconditionFailed(
                        f"ifNoneExist '{entry.if_none_exist}' matches more than one {entry.resource_type}"
                    )
                if matches:
                    entry.matched, entry.target = matches[0], matches[0].id
                    return
            local = _local_id(entry.full_url) if self.keep_local_ids else None
            entry.target = local or str(uuid.uuid4())
        elif entry.kind in ("update", "patch"):
            entry.target = entry.resource_id
        else:  # cond-update, cond-patch
            matches = await self._matches(conn, entry, entry.query)
            if len(matches) > 1:
                raise PreconditionFailed(f"The criteria '{entry.query}' match more than one {entry.resource_type}")
            if entry.kind == "cond-patch":
                if not matches:
                    raise ResourceNotFound(f"No {entry.resource_type} matches '{entry.query}'")
                entry.target = matches[0].id
            elif matches:
                entry.matched = matches[0]
                if entry.resource.get("id") not in (None, matches[0].id):
                    raise BadRequest(
                        f"Resource id '{entry.resource['id']}' differs from the matched {entry.resource_type}/{matches[0].id}",
                        expression=f"{entry.resource_type}.id",
                    )
                entry.target = matches[0].id
            else:
                entry.target = entry.resource.get("id") or str(uuid.uuid4())

    async def _resolve_references(self, conn: Any, entries: list[BundleEntry], mapping: dict[str, str]) -> None:
        """Conditional references become ``Type/id`` (exactly one match, or the bundle fails, naming the
        element); then every reference to a mapped fullUrl is rewritten (http.html#trules)."""
        resolved: dict[str, str] = {}
        for entry in entries:
            if entry.kind not in ("create", "update", "cond-update") or entry.matched and entry.kind == "create":
                continue
            _collect_refs(entry.resource, entry.refs)
            for node in entry.refs:
                ref = node["reference"]
                if ref in mapping or ref in resolved:
                    continue
                cond = _CONDITIONAL_REF.fullmatch(ref)
                if cond is None or cond[1] not in RESOURCE_TYPES:
                    continue
                with _entry_errors(entry):
                    matches = await find_matches(conn, self.service.tenant, cond[1], cond[2], limit=2, access=self.service.access)
                if len(matches) != 1:
                    how = "no" if not matches else "more than one"
                    raise PreconditionFailed(
                        f"Bundle.entry[{entry.index}]: the conditional reference '{ref}' matches {how} {cond[1]}",
                        expression=_path_to(entry.resource, node, f"Bundle.entry[{entry.index}].resource"),
                    )
                resolved[ref] = f"{cond[1]}/{matches[0].id}"
        if not (mapping or resolved):
            return
        both = {**mapping, **resolved}
        for entry in entries:
            if entry.refs:
                for node in entry.refs:
                    target = both.get(node["reference"])
                    if target is not None:
                        node["reference"] = target
                _rewrite_narrative(entry.resource, both)

    async def _write(self, conn: Any, entry: BundleEntry) -> EntryResult:
        svc = self._on(conn, entry)
        rtype, target = entry.resource_type, entry.target
        assert rtype is not None and target is not None
        result: WriteResult
        if entry.kind == "create":
            if entry.matched is not None:
                return EntryResult(200, entry.matched, message="Matched an existing resource; nothing created")
            if self._keeps_id(entry):
                entry.resource["id"] = target
                result = await svc.update_in(conn, rtype, target, entry.resource, None)
            else:
                result = await svc.create_in(conn, rtype, entry.resource, resource_id=target)
        elif entry.kind in ("update", "cond-update"):
            if entry.kind == "cond-update" and entry.matched is None and "id" not in entry.resource:
                result = await svc.create_in(conn, rtype, entry.resource, resource_id=target)
            else:
                entry.resource["id"] = target
                # a conditional match was read under its lock in this transaction: no second read
                result = await svc.update_in(conn, rtype, target, entry.resource, entry.if_match, current=entry.matched)
        else:
            result = await svc.patch_in(conn, rtype, target, entry.patch, entry.if_match)
        status = 201 if result.created else 200
        message = "Created" if result.created else ("Patched" if entry.kind.endswith("patch") else "Updated")
        return EntryResult(status, result.version, location=result.created, message=message, audited=True)

    async def _run_other(self, conn: Any, entry: BundleEntry) -> EntryResult:
        if self.other is None:
            raise NotImplementedInteraction(f"{entry.method} {entry.path} is not supported here")
        return await self.other(conn, entry)


def _is_race(exc: Exception) -> bool:
    return isinstance(exc, (pg_errors.DeadlockDetected, pg_errors.SerializationFailure, pg_errors.LockNotAvailable))


def _local_id(full_url: str | None) -> str | None:
    if full_url and full_url.startswith("urn:uuid:") and _ID.fullmatch(full_url[9:]):
        return full_url[9:]
    return None


def _claim(touched: dict[tuple[str, str], int], entry: BundleEntry) -> None:
    """Two entries on the same resource make the transaction ambiguous (http.html#trules): 400."""
    key = (entry.resource_type or "", entry.target or "")
    first = touched.setdefault(key, entry.index)
    if first != entry.index:
        a, b = sorted((first, entry.index))
        raise BadRequest(
            f"Bundle.entry[{a}] and Bundle.entry[{b}] both act on {key[0]}/{key[1]}", expression=f"Bundle.entry[{b}]"
        )


def _check_resources(entries: list[BundleEntry]) -> None:
    """R4 validation of every resource before the database is touched (the CPU-heavy part)."""
    for entry in entries:
        if entry.kind in ("create", "update", "cond-update"):
            assert entry.resource_type is not None
            with _entry_errors(entry):
                check_resource(entry.resource_type, entry.resource, id_required=False)
