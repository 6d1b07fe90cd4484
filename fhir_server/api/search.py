"""search (https://hl7.org/fhir/R4/http.html#search, https://hl7.org/fhir/R4/search.html).

Type-level ``GET [type]?…`` / ``POST [type]/_search`` and system-level ``GET [base]?_type=…``.
Criteria go to ``build_where``; the result parameters are handled here: ``_sort`` (``search.sort``),
``_count`` (capped at ``settings.max_page_size``), ``_page`` (keyset tokens, ``search.paging``),
``_total``, ``_include``/``_revinclude`` (``search.include``), ``_summary``, ``_elements``, and
``_explain=true`` (the ``explain`` permission, admin by default: an OperationOutcome with the query
plans instead of the bundle). Included resources are only of types the caller may read.
The bundle's ``self`` link lists only what was applied.
"""

from __future__ import annotations

from functools import partial
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import Response

from fhir_server.api.authorize import readable_types, require_operation
from fhir_server.api.bundles import page_links, searchset_bundle
from fhir_server.api.deps import access_of, checked_type, database, tenant_of
from fhir_server.api.paging import parse_count
from fhir_server.api.responses import fhir_response, prefer_strict
from fhir_server.definitions.resource_types import RESOURCE_TYPES
from fhir_server.errors import BadRequest, InvalidSearch, Issue, operation_outcome
from fhir_server.search.compile import build_where
from fhir_server.search.custom import tenant_registry
from fhir_server.search.include import MAX_INCLUDES, load_includes, parse_includes
from fhir_server.search.paging import PAGE_PARAM, decode_page, encode_page
from fhir_server.search.sort import build_sort, common_param_type
from fhir_server.storage.search import SearchQuery, explain_search, load_conformance, run_search
from terminology import StoredTerminology, stored

RESULT_PARAMS = frozenset(
    {"_count", "_summary", "_elements", "_format", "_pretty", "_total", PAGE_PARAM, "_sort", "_include",
     "_revinclude", "_contained", "_containedType", "_explain"}
)
_NOT_YET = ("_contained", "_containedType")
_KEPT = ("_summary", "_elements", "_format", "_pretty")  # applied as given, kept in the links
# search.html#all: without _type only these (all of them Resource-level) may be used
SYSTEM_PARAMS = frozenset({"_id", "_lastUpdated", "_tag", "_profile", "_security", "_source"})
TOTAL_MODES = ("none", "estimate", "accurate")


def _base_name(name: str) -> str:
    return name.split(".", 1)[0].split(":", 1)[0]


def _is_result(name: str) -> bool:
    return name in RESULT_PARAMS or _base_name(name) in ("_include", "_revinclude")


def _warning(message: str, expression: str | None = None) -> Issue:
    return Issue("warning", "not-supported", message, expression)


def stored_terminology(request: Request) -> StoredTerminology:
    """The packaged terminology plus the tenant's stored CodeSystems / ValueSets, read only when a
    token ``:in``/``:not-in``/``:below``/``:above`` names one that is not packaged."""
    tenant = tenant_of(request)

    async def fetch(resource_type: str, *, url: str | None = None, id: str | None = None) -> list[dict]:
        async with database(request).connection() as conn:
            return await load_conformance(conn, tenant, resource_type, url=url, id=id)

    return stored(fetch)


def _count(request: Request, pairs: list[tuple[str, str]]) -> int | None:
    return parse_count(request, next((v for k, v in reversed(pairs) if k == "_count"), None))


def _explain(request: Request, pairs: list[tuple[str, str]]) -> bool:
    """``_explain=true`` (this server's own switch, not in the spec): the ``explain`` permission
    (granted like an operation; by default the admin role), or dev mode."""
    raw = next((v for k, v in reversed(pairs) if k == "_explain"), None)
    if raw is None or raw == "false":
        return False
    if raw != "true":
        raise BadRequest(f"_explain must be true or false, not '{raw}'", expression="_explain")
    perm = request.scope.get("state", {}).get("permission")
    if perm is not None:  # set by routes.dispatch (api/authorize.py); absent: development mode
        require_operation(perm, "explain", None, read_only=True)
    return True


async def _search(
    request: Request, types: list[str] | None, pairs: list[tuple[str, str]], system: bool = False
) -> Response:
    explain = _explain(request, pairs)
    async with database(request).connection() as conn:  # the core parameters + the tenant's own
        registry = await tenant_registry(conn, tenant_of(request))
    codes = stored_terminology(request)
    warnings: list[Issue] = []
    applied: list[tuple[str, str]] = []
    if system and types is not None:
        applied.append(("_type", ",".join(types)))
    compile_type = types[0] if types else "Patient"  # Resource-level parameters compile alike for every type
    access = access_of(request)  # facility / patient-context narrowing: main rows, chains, _has, includes
    criteria: list[tuple[str, str]] = []
    for name, value in pairs:
        if _is_result(name) or (system and name == "_type"):
            continue
        if system:
            base = _base_name(name)
            allowed = (
                base in SYSTEM_PARAMS
                if types is None
                else not name.startswith("_has") and common_param_type(types, base, registry) is not None
            )
            if not allowed:
                why = "only _id, _lastUpdated, _tag, _profile, _security, _source" if types is None else (
                    f"not a parameter common to {', '.join(types)}"
                )
                warnings.append(_warning(f"Search parameter '{name}' is {why}: ignored", name))
                continue
        one = await codes.run(partial(build_where, compile_type, [(name, value)], registry=registry))
        warnings += one.warnings
        if one.sql != "TRUE":
            criteria.append((name, value))
    where = await codes.run(partial(build_where, compile_type, criteria, registry=registry, access=access))
    applied += criteria

    binds = dict(where.binds)

    def bind(v: object) -> str:
        key = f"srt{len(binds)}"
        binds[key] = v
        return f"%({key})s"

    sort = build_sort(types or [], [v for k, v in pairs if k == "_sort"], bind, registry)
    warnings += sort.warnings
    if sort.applied:
        applied.append(("_sort", sort.value))

    count = _count(request, pairs)
    if count is not None:
        applied.append(("_count", str(count)))
    total_mode = "accurate"
    total_raw = next((v for k, v in reversed(pairs) if k == "_total"), None)
    if total_raw is not None:
        if total_raw in TOTAL_MODES:
            total_mode = total_raw
            applied.append(("_total", total_raw))
        else:
            warnings.append(_warning(f"_total={total_raw} is not one of none, estimate, accurate: ignored", "_total"))
    includes, include_warnings = parse_includes(pairs, types, registry)
    warnings += include_warnings
    applied += [(s.name, s.value) for s in includes]
    for name, value in pairs:
        if name in _KEPT:
            applied.append((name, value))
        elif name in _NOT_YET:
            warnings.append(_warning(f"{name} is not supported yet and was ignored", name))
    if warnings and prefer_strict(request):
        raise InvalidSearch("Unknown or unsupported search parameters", issues=warnings)

    summary_count = any(k == "_summary" and v == "count" for k, v in pairs)
    if count is None:
        count = int(request.app.state.settings.default_page_size)
    if summary_count:
        count, total_mode = 0, "accurate"
    raw_page = next((v for k, v in reversed(pairs) if k == PAGE_PARAM), None)
    token = decode_page(raw_page, sort.keys) if raw_page else None
    q = SearchQuery(tenant_of(request), types, where.sql, binds, count, sort.keys, token, total_mode, access)
    if explain:
        async with database(request).connection() as conn:
            plans = await explain_search(conn, q)
        notes = [Issue("information", "informational", f"{name} query plan:\n{plan}") for name, plan in plans]
        return fhir_response(request, operation_outcome(notes + warnings))
    included = []
    async with database(request).connection() as conn:
        page = await run_search(conn, q)
        if includes and page.rows:
            included, capped = await load_includes(
                conn, q.tenant, page.rows, includes, MAX_INCLUDES, access, readable_types(request)
            )
            if capped is not None:
                warnings.append(capped)
    outcome = operation_outcome(warnings) if warnings else None
    self_params = applied + ([(PAGE_PARAM, raw_page)] if raw_page else [])
    links = page_links(
        request,
        encode_page(page.next) if page.next else None,
        self_params,
        encode_page(page.previous) if page.previous else None,
        with_first=True,
    )
    return fhir_response(request, searchset_bundle(request, page.rows, page.total, links, outcome, included))


async def search_type(resource_type: str, request: Request) -> Response:
    checked_type(resource_type)
    return await _search(request, [resource_type], request.query_params.multi_items())


async def search_post(resource_type: str, request: Request) -> Response:
    checked_type(resource_type)
    ct = request.headers.get("content-type", "")
    if not ct.startswith("application/x-www-form-urlencoded"):
        raise BadRequest("POST _search needs an application/x-www-form-urlencoded body")
    body = (await request.body()).decode()
    pairs = request.query_params.multi_items() + parse_qsl(body, keep_blank_values=True)
    return await _search(request, [resource_type], pairs)


async def search_system(request: Request) -> Response:
    """``GET [base]?_type=A,B&…`` (search.html#all, http.html#search): parameters common to the
    listed types; without ``_type`` only the Resource-level ones in ``SYSTEM_PARAMS``."""
    pairs = request.query_params.multi_items()
    raw_types = [t for k, v in pairs if k == "_type" for t in v.split(",") if t.strip()]
    types = None
    if raw_types:
        unknown = [t for t in raw_types if t.strip() not in RESOURCE_TYPES]
        if unknown:
            raise InvalidSearch(f"_type: {', '.join(unknown)} is not a FHIR R4 resource type")
        types = list(dict.fromkeys(t.strip() for t in raw_types))
    return await _search(request, types, pairs, system=True)
