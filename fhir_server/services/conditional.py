"""Matching conditional criteria (``Patient?identifier=…``) to stored resources."""

from __future__ import annotations

from functools import partial
from urllib.parse import parse_qsl

from psycopg import AsyncConnection

from fhir_server.auth.visibility import Access, visible_binds
from fhir_server.errors import BadRequest, PreconditionFailed
from fhir_server.search.compile import build_where
from fhir_server.search.custom import tenant_registry
from fhir_server.search.normalize import token_key
from fhir_server.search.registry import get_registry
from fhir_server.storage import repository as repo
from fhir_server.storage.repository import StoredVersion
from fhir_server.storage.search import load_conformance
from terminology import stored

_RESULT_PARAMS = frozenset({"_format", "_pretty", "_summary", "_elements", "_count", "_sort"})


def parse_criteria(query: str) -> list[tuple[str, str]]:
    query = query.split("?", 1)[1] if "?" in query else query
    pairs = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k not in _RESULT_PARAMS]
    return pairs


def exact_identifier(resource_type: str, params: list[tuple[str, str]]) -> tuple[str, str] | None:
    """(system, code) when ``params`` are exactly ``identifier=system|code`` (no escapes, no OR, no
    modifier, no ``$``) on a type whose core ``identifier`` is a token (search.html#token): criteria
    ``repository.match_token`` answers the same as the generic search builder (exact
    ``t.system``/``t.code``), in one indexed lookup.

    The core registry is enough here, without the tenant's: a custom SearchParameter may not reuse a
    code that is a core parameter of one of its bases (``check_search_parameter``), so on a type whose
    core ``identifier`` exists, every tenant registry answers that same parameter."""
    if len(params) != 1 or params[0][0] != "identifier":
        return None
    value = params[0][1]
    if any(ch in value for ch in "\\,$"):
        return None
    parts = value.split("|")
    if len(parts) != 2 or not parts[0] or not parts[1]:
        return None
    sp = get_registry().get(resource_type, "identifier")
    if sp is None or sp.type != "token":
        return None
    system, code = token_key(parts[0]), token_key(parts[1])
    if system is None or code is None:
        return None
    return system, code


async def find_matches(
    conn: AsyncConnection, tenant: str, resource_type: str, query: str, *, limit: int, access: Access | None = None
) -> list[StoredVersion]:
    """Up to ``limit`` live resources matching ``query``, among those the caller (``access``) may see:
    a resource hidden from it matches no criteria (a conditional create then creates)."""
    params = parse_criteria(query)
    if not params:
        raise PreconditionFailed("Conditional criteria must name at least one search parameter")
    if access is None or access.unrestricted:
        exact = exact_identifier(resource_type, params)
        if exact is not None:  # one indexed lookup; the same matches as the generic path below
            return await repo.match_token(conn, tenant, resource_type, "identifier", exact[0], exact[1], limit)
    registry = await tenant_registry(conn, tenant)
    codes = stored(partial(load_conformance, conn, tenant))  # token :in etc. may name a stored ValueSet
    where = await codes.run(partial(build_where, resource_type, params, registry=registry, access=access))
    if where.warnings:
        # an ignored criterion would widen the match and touch the wrong resource
        raise BadRequest(
            "Conditional criteria contain parameters this server cannot apply: "
            + "; ".join(w.diagnostics for w in where.warnings),
        )
    binds = dict(where.binds, tenant=tenant, rtype=resource_type, limit=limit)
    visible = visible_binds(access, "r", binds, resource_type=resource_type)
    cur = await conn.execute(
        "SELECT r.resource_type, r.id, r.version_id, r.last_updated, r.deleted, r.content::text "
        "FROM resource r WHERE r.tenant_id = %(tenant)s AND r.resource_type = %(rtype)s AND NOT r.deleted "
        f"AND ({where.sql}){' AND ' + visible if visible else ''} ORDER BY r.id LIMIT %(limit)s",
        binds,
    )
    return [StoredVersion(*row) for row in await cur.fetchall()]
