"""A tenant's own SearchParameters (R4 searchparameter.html, search.html#custom).

A ``SearchParameter`` resource with ``status = active`` written to a tenant adds a parameter to
that tenant's registry: the core R4 parameters overlaid with the tenant's active ones
(``SearchParamRegistry.overlay``). ``draft``, ``retired`` and ``unknown`` ones are stored but do
not apply; retiring or deleting one removes it. A resource whose ``url`` is a core parameter's
(a copy of an R4 definition) is accepted and changes nothing.

Freshness across processes: the registry of a tenant is tagged with its *generation*, the newest
``last_updated`` of the tenant's SearchParameter rows (deleted ones included, so a delete counts).
Every write and every search reads it (``tenant_registry``: one prepared primary-key-index lookup on
the connection the request already holds) and reloads the overlay when it changed, so a
SearchParameter applies to every write that starts after it was committed, in every process.

Only active parameters are checked on write (``check_search_parameter``): code, base types, a
supported type, an expression the FHIRPath translator (or fhirpathpy) compiles for every base and
that selects an element of it, reference targets, and no clash with a core or another custom
parameter code on the same base. Failures are 422 naming the element.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from psycopg import AsyncConnection

from fhir_server.definitions.resource_types import RESOURCE_TYPES
from fhir_server.errors import Issue, UnprocessableEntity
from fhir_server.search import fhirpath_compiler, fhirpath_fallback
from fhir_server.search.expressions import expression_for_type
from fhir_server.search.extract import IndexRows, extract_index_rows
from fhir_server.search.fhirpath_model import get_model
from fhir_server.search.fhirpath_parser import FhirPathSyntaxError
from fhir_server.search.registry import SearchParam, SearchParamRegistry, get_registry
from fhir_server.search.rows import NO_NARRATIVE

__all__ = ["CUSTOM_TYPES", "check_search_parameter", "index_rows", "pinned_registry", "tenant_registry"]

log = logging.getLogger(__name__)

CUSTOM_TYPES = frozenset({"number", "date", "string", "token", "reference", "quantity", "uri"})
PREFIXES = frozenset({"eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"})
_CODE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
_ABSTRACT = {"Resource": "Basic", "DomainResource": "Basic"}  # checked on a representative type

# the generation: newest change to any SearchParameter of the tenant (index resource_type_updated)
_GENERATION_SQL = (
    "SELECT max(last_updated) FROM resource WHERE tenant_id = %s AND resource_type = 'SearchParameter'"
)
_LOAD_SQL = (
    "SELECT id, last_updated, deleted, content::text FROM resource "
    "WHERE tenant_id = %s AND resource_type = 'SearchParameter' ORDER BY last_updated, id"
)


def applies_to(sp: SearchParam) -> list[str]:
    """The concrete resource types a parameter applies to."""
    types: list[str] = []
    for base in sp.base:
        if base == "Resource":
            types += RESOURCE_TYPES
        elif base == "DomainResource":
            types += [t for t in RESOURCE_TYPES if t not in NO_NARRATIVE]
        elif base in RESOURCE_TYPES:
            types.append(base)
    return list(dict.fromkeys(types))


def _strings(resource: dict[str, Any], key: str) -> list[Any]:
    value = resource.get(key)
    return value if isinstance(value, list) else []


def to_param(resource: dict[str, Any]) -> SearchParam:
    """A SearchParameter resource as the registry's ``SearchParam`` (not checked)."""
    return SearchParam(
        url=str(resource.get("url") or f"urn:uuid:{resource.get('id')}"),
        code=str(resource.get("code") or ""),
        base=tuple(b for b in _strings(resource, "base") if isinstance(b, str)),
        type=str(resource.get("type") or ""),
        expression=resource.get("expression") if isinstance(resource.get("expression"), str) else None,
        target=tuple(t for t in _strings(resource, "target") if isinstance(t, str)),
        modifier=tuple(m for m in _strings(resource, "modifier") if isinstance(m, str)),
        comparator=tuple(c for c in _strings(resource, "comparator") if isinstance(c, str)),
        multiple_or=resource.get("multipleOr"),
        multiple_and=resource.get("multipleAnd"),
    )


def _expression_issue(expression: str, resource_type: str) -> str | None:
    """Why ``expression`` (narrowed to ``resource_type``) cannot serve as an index, or None."""
    narrowed = expression_for_type(expression, resource_type, frozenset(get_model().parents))
    if narrowed is None:
        return f"the expression has no branch for {resource_type}"
    try:
        types = fhirpath_compiler.static_types(narrowed, resource_type)
    except (fhirpath_compiler.Unsupported, FhirPathSyntaxError):
        types = None  # outside the translator's subset: fhirpathpy evaluates it
    if types is not None:
        fhirpath_compiler.compile_expression(narrowed, resource_type)
        return None if types else f"'{narrowed}' selects no element of {resource_type}"
    try:
        fhirpath_fallback.compile_expression(narrowed, resource_type)({"resourceType": resource_type, "id": "x"})
    except Exception as exc:  # noqa: BLE001  (fhirpathpy's errors have no common base)
        return f"'{narrowed}' cannot be evaluated: {exc}"
    return None


def check_search_parameter(resource: dict[str, Any], registry: SearchParamRegistry) -> SearchParam | None:
    """The parameter ``resource`` adds to its tenant's registry, or None (not active, or a copy of
    a core definition). Raises ``UnprocessableEntity`` with one issue per fault."""
    if resource.get("status") != "active":
        return None
    core = get_registry()
    sp = to_param(resource)
    if sp.url in core.by_url:
        return None
    rid = resource.get("id")
    issues: list[Issue] = []

    def fault(message: str, element: str) -> None:
        issues.append(Issue("error", "business-rule", message, f"SearchParameter.{element}"))

    if not _CODE_RE.match(sp.code):
        fault(f"code '{sp.code}' must be a letter followed by letters, digits, '-' or '_'", "code")
    if not sp.base:
        fault("base is required", "base")
    for i, base in enumerate(sp.base):
        if base not in RESOURCE_TYPES and base not in _ABSTRACT:
            fault(f"base '{base}' is not a FHIR R4 resource type", f"base[{i}]")
    if sp.type not in CUSTOM_TYPES:
        fault(f"type '{sp.type}' is not supported for custom parameters (use one of {', '.join(sorted(CUSTOM_TYPES))})", "type")
    for i, target in enumerate(sp.target):
        if target not in RESOURCE_TYPES:
            fault(f"target '{target}' is not a FHIR R4 resource type", f"target[{i}]")
    for i, prefix in enumerate(sp.comparator):
        if prefix not in PREFIXES:
            fault(f"comparator '{prefix}' is not a search prefix", f"comparator[{i}]")
    if not sp.expression:
        fault("expression is required: it says what the parameter indexes", "expression")
    else:
        for base in sp.base:
            if base in RESOURCE_TYPES or base in _ABSTRACT:
                problem = _expression_issue(sp.expression, _ABSTRACT.get(base, base))
                if problem:
                    fault(problem, "expression")
    if not issues:
        others = {k: v for k, v in registry.custom.items() if k != rid}
        for other_id, other in others.items():
            if other.url == sp.url:
                fault(f"url '{sp.url}' is already used by SearchParameter/{other_id}", "url")
        for t in applies_to(sp):
            if core.get(t, sp.code) is not None:
                fault(f"code '{sp.code}' is a core search parameter of {t}", "code")
                break
            clash = next((k for k, o in others.items() if o.code == sp.code and t in applies_to(o)), None)
            if clash is not None:
                fault(f"code '{sp.code}' is already defined for {t} by SearchParameter/{clash}", "code")
                break
    if issues:
        raise UnprocessableEntity(issues[0].diagnostics, issues=issues)
    return sp


@dataclass(slots=True)
class _Entry:
    generation: datetime | None
    registry: SearchParamRegistry


class TenantRegistries:
    """One registry per tenant in this process, reloaded when the tenant's generation changes."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}

    async def get(self, conn: AsyncConnection, tenant: str) -> SearchParamRegistry:
        cur = await conn.execute(_GENERATION_SQL, (tenant,), prepare=True)
        row = await cur.fetchone()
        generation = row[0] if row else None
        entry = self._entries.get(tenant)
        if entry is not None and entry.generation == generation:
            return entry.registry
        if generation is None:
            registry = get_registry()
        else:
            generation, registry = await self._load(conn, tenant)
        self._entries[tenant] = _Entry(generation, registry)
        return registry

    async def _load(self, conn: AsyncConnection, tenant: str) -> tuple[datetime | None, SearchParamRegistry]:
        cur = await conn.execute(_LOAD_SQL, (tenant,))
        rows = await cur.fetchall()
        generation = max((r[1] for r in rows), default=None)  # the same snapshot as the rows
        core = registry = get_registry()
        for rid, _, deleted, content in rows:
            if deleted or content is None:
                continue
            try:
                sp = check_search_parameter(orjson.loads(content), registry)
            except UnprocessableEntity as exc:  # stored by another path (import): skipped, not fatal
                log.warning("SearchParameter/%s of tenant %s is not applied: %s", rid, tenant, exc.diagnostics)
                continue
            if sp is not None:
                registry = core.overlay({**registry.custom, rid: sp})
        log.info("search parameters of tenant %s: %d custom", tenant, len(registry.custom))
        return generation, registry

    def forget(self, tenant: str | None = None) -> None:
        if tenant is None:
            self._entries.clear()
        else:
            self._entries.pop(tenant, None)


REGISTRIES = TenantRegistries()


# (tenant, registry) pinned by ``pinned_registry`` for the work of the current task
_PINNED: ContextVar[tuple[str, SearchParamRegistry] | None] = ContextVar("fhir_pinned_registry", default=None)


async def tenant_registry(conn: AsyncConnection, tenant: str) -> SearchParamRegistry:
    """The core parameters plus ``tenant``'s active SearchParameters, current as of this call
    (or as of the start of the enclosing ``pinned_registry`` block)."""
    pinned = _PINNED.get()
    if pinned is not None and pinned[0] == tenant:
        return pinned[1]
    return await REGISTRIES.get(conn, tenant)


@contextmanager
def pinned_registry(tenant: str, registry: SearchParamRegistry) -> Iterator[None]:
    """Freshness checked once for a unit of work: inside the block ``tenant_registry(…, tenant)``
    answers ``registry`` without asking the database. For work that reads one snapshot of the
    registry anyway, e.g. a transaction Bundle that writes no SearchParameter (its writes all start
    after the registry was read, like a request that began just before a SearchParameter commit)."""
    token = _PINNED.set((tenant, registry))
    try:
        yield
    finally:
        _PINNED.reset(token)


async def index_rows(conn: AsyncConnection, tenant: str, resource: dict[str, Any]) -> IndexRows:
    """The write path's index rows, with the tenant's registry; a SearchParameter is checked first."""
    registry = await tenant_registry(conn, tenant)
    if resource.get("resourceType") == "SearchParameter":
        check_search_parameter(resource, registry)
    return extract_index_rows(resource, registry=registry)
