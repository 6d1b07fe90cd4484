"""``_include`` / ``_revinclude`` (https://hl7.org/fhir/R4/search.html#include).

``_include=Type:param[:Target]`` adds the resources the page's matches reference through
``param``; ``_include=*`` follows every reference parameter; ``_revinclude=Type:param[:Target]``
adds the ``Type`` resources whose ``param`` references a match; ``_revinclude=*`` adds every
resource that references a match through any reference parameter. ``:iterate`` (R3 ``:recurse``)
applies the clause again to what was included, at most ``MAX_ITERATIONS`` more rounds. Joins use
``idx_reference`` (``target_type``, ``target_id``) and only local (relative) references; every
query carries ``tenant_id = %(tenant)s`` and skips deleted resources. Each resource appears once
(never both as match and include). At most ``MAX_INCLUDES`` included resources per page; beyond
that the rest is left out and a warning issue says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection

from fhir_server.auth.visibility import Access, visible_binds
from fhir_server.definitions.resource_types import RESOURCE_TYPES
from fhir_server.errors import Issue
from fhir_server.search.registry import SearchParamRegistry, get_registry
from fhir_server.storage.repository import StoredVersion

MAX_ITERATIONS = 3
MAX_INCLUDES = 1000
_COLS = "r2.resource_type, r2.id, r2.version_id, r2.last_updated, r2.deleted, r2.content::text"


@dataclass(frozen=True, slots=True)
class IncludeSpec:
    rev: bool
    source_type: str | None  # _include: the referencing type (None for *); _revinclude: the referencing type
    param: str | None  # None for *
    target: str | None
    iterate: bool
    name: str  # the query parameter as given (for the self link)
    value: str


def parse_includes(
    pairs: list[tuple[str, str]], search_types: list[str] | None, registry: SearchParamRegistry | None = None
) -> tuple[list[IncludeSpec], list[Issue]]:
    registry = registry or get_registry()
    specs: list[IncludeSpec] = []
    warnings: list[Issue] = []

    def warn(name: str, value: str, why: str) -> None:
        warnings.append(Issue("warning", "not-supported", f"{name}={value}: {why}: ignored", name))

    for name, value in pairs:
        base, _, modifier = name.partition(":")
        if base not in ("_include", "_revinclude"):
            continue
        if modifier not in ("", "iterate", "recurse"):
            warn(name, value, f"unknown modifier ':{modifier}'")
            continue
        rev, iterate = base == "_revinclude", modifier != ""
        if value == "*":
            specs.append(IncludeSpec(rev, None, None, None, iterate, name, value))
            continue
        parts = value.split(":")
        if len(parts) not in (2, 3) or parts[0] not in RESOURCE_TYPES:
            warn(name, value, "the value is Type:parameter[:TargetType]")
            continue
        source, code, target = parts[0], parts[1], (parts[2] if len(parts) == 3 else None)
        sp = registry.get(source, code)
        if sp is None or sp.type != "reference":
            warn(name, value, f"'{code}' is not a reference parameter of {source}")
            continue
        if target is not None and (target not in RESOURCE_TYPES or (sp.target and target not in sp.target)):
            warn(name, value, f"{target} is not a target type of {source}.{code}")
            continue
        if search_types is not None and not iterate:
            if not rev and source not in search_types:
                warn(name, value, f"{source} is not the searched type")
                continue
            targets = [target] if target else list(sp.target)
            if rev and targets and not set(targets) & set(search_types):
                warn(name, value, f"{source}.{code} cannot reference the searched type")
                continue
        specs.append(IncludeSpec(rev, source, code, target, iterate, name, value))
    return specs, warnings


async def load_includes(
    conn: AsyncConnection, tenant: str, matches: list[StoredVersion], specs: list[IncludeSpec], cap: int = MAX_INCLUDES,
    access: Access | None = None, readable: frozenset[str] | None = None,
) -> tuple[list[StoredVersion], Issue | None]:
    """The resources ``specs`` add to ``matches``: only those the caller (``access``) may see, and
    only of the types its role and scopes may read (``readable``, None: every type); the others
    are left out silently, so nothing is read through an include that could not be read directly."""
    seen = {(v.resource_type, v.id) for v in matches}
    included: list[StoredVersion] = []
    current = matches
    for round_no in range(1 + MAX_ITERATIONS):
        active = specs if round_no == 0 else [s for s in specs if s.iterate]
        if not active or not current:
            break
        by_type: dict[str, list[str]] = {}
        for v in current:
            by_type.setdefault(v.resource_type, []).append(v.id)
        new: list[StoredVersion] = []
        for spec in active:
            for sql, binds in _queries(spec, by_type):
                binds.update(tenant=tenant, lim=cap + 1)
                visible = visible_binds(access, "r2", binds)
                if visible:
                    sql += f" AND {visible}"
                if readable is not None:
                    binds["readable"] = sorted(readable)
                    sql += " AND r2.resource_type = ANY(%(readable)s)"
                cur = await conn.execute(sql + " ORDER BY r2.resource_type, r2.id LIMIT %(lim)s", binds)
                for row in await cur.fetchall():
                    key = (row[0], row[1])
                    if key not in seen:
                        seen.add(key)
                        new.append(StoredVersion(*row))
                if len(included) + len(new) > cap:
                    included += new
                    msg = f"More than {cap} resources to include: only the first {cap} are in this page"
                    return included[:cap], Issue("warning", "too-costly", msg)
        included += new
        current = new
    return included, None


def _queries(spec: IncludeSpec, by_type: dict[str, list[str]]) -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    live = "r2.tenant_id = %(tenant)s AND NOT r2.deleted"
    if not spec.rev:
        for st, ids in by_type.items():
            if spec.source_type is not None and st != spec.source_type:
                continue
            binds: dict[str, Any] = {"st": st, "ids": ids}
            link = (
                "SELECT l.target_type, l.target_id FROM idx_reference l WHERE l.tenant_id = %(tenant)s"
                " AND l.resource_type = %(st)s AND l.resource_id = ANY(%(ids)s) AND l.url IS NULL"
                " AND l.target_type IS NOT NULL"
            )
            if spec.param is not None:
                link += " AND l.param = %(param)s"
                binds["param"] = spec.param
            if spec.target is not None:
                link += " AND l.target_type = %(target)s"
                binds["target"] = spec.target
            out.append((f"SELECT {_COLS} FROM resource r2 WHERE {live} AND (r2.resource_type, r2.id) IN ({link})", binds))
        return out
    for tt, ids in by_type.items():
        if spec.target is not None and tt != spec.target:
            continue
        if spec.param is None:  # _revinclude=*: whatever references it, through any parameter
            link = (
                "SELECT l.resource_type, l.resource_id FROM idx_reference l WHERE l.tenant_id = %(tenant)s"
                " AND l.url IS NULL AND l.target_type = %(tt)s AND l.target_id = ANY(%(ids)s)"
            )
            out.append((f"SELECT {_COLS} FROM resource r2 WHERE {live} AND (r2.resource_type, r2.id) IN ({link})", {"tt": tt, "ids": ids}))
            continue
        binds = {"st": spec.source_type, "param": spec.param, "tt": tt, "ids": ids}
        link = (
            "SELECT l.resource_id FROM idx_reference l WHERE l.tenant_id = %(tenant)s AND l.resource_type = %(st)s"
            " AND l.param = %(param)s AND l.url IS NULL AND l.target_type = %(tt)s AND l.target_id = ANY(%(ids)s)"
        )
        out.append((f"SELECT {_COLS} FROM resource r2 WHERE {live} AND r2.resource_type = %(st)s AND r2.id IN ({link})", binds))
    return out
