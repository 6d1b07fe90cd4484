"""search (https://hl7.org/fhir/R4/http.html#search, https://hl7.org/fhir/R4/search.html)."""

from __future__ import annotations

from datetime import datetime
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import Response

from fhir_server.api.bundles import PAGE_PARAM, decode_cursor, encode_cursor, searchset_bundle
from fhir_server.api.deps import checked_type, tenant_of
from fhir_server.api.paging import page_size
from fhir_server.api.responses import fhir_response
from fhir_server.errors import BadRequest, InvalidSearch, Issue, operation_outcome
from fhir_server.storage.search import SearchQuery, run_search

RESULT_PARAMS = frozenset(
    {"_count", "_summary", "_elements", "_format", "_pretty", "_total", PAGE_PARAM, "_sort", "_include",
     "_revinclude", "_contained", "_containedType"}
)
_NOT_YET = ("_sort", "_include", "_revinclude", "_contained", "_containedType")


def _strict(request: Request) -> bool:
    return "handling=strict" in request.headers.get("prefer", "").replace(" ", "")


async def _search(request: Request, resource_type: str, pairs: list[tuple[str, str]]) -> Response:
    checked_type(resource_type)
    criteria = [(k, v) for k, v in pairs if k not in RESULT_PARAMS]
    from fhir_server.search.compile import build_where

    where = build_where(resource_type, criteria)
    warnings = list(where.warnings)
    for name in _NOT_YET:
        if any(k == name for k, _ in pairs):
            warnings.append(InvalidSearch(f"{name} is not supported yet and was ignored").issues[0])
    if warnings and _strict(request):
        raise InvalidSearch("Unknown or unsupported search parameters", issues=warnings)
    summary = dict(pairs).get("_summary")
    count = 0 if summary == "count" else page_size(request)
    after = None
    page = dict(pairs).get(PAGE_PARAM)
    if page:
        after = decode_cursor(page, (datetime, str))
    q = SearchQuery(
        tenant_of(request), resource_type, where.sql, where.binds, count, after,  # type: ignore[arg-type]
        with_total=dict(pairs).get("_total") != "none",
    )
    async with request.app.state.db.connection() as conn:
        rows, total, cursor = await run_search(conn, q)
    outcome = None
    if warnings:
        outcome = operation_outcome([Issue("warning", w.code, w.diagnostics, w.expression) for w in warnings])
    token = encode_cursor(cursor) if cursor else None
    return fhir_response(request, searchset_bundle(request, rows, total, token, outcome))


async def search_type(resource_type: str, request: Request) -> Response:
    return await _search(request, resource_type, request.query_params.multi_items())


async def search_post(resource_type: str, request: Request) -> Response:
    ct = request.headers.get("content-type", "")
    if not ct.startswith("application/x-www-form-urlencoded"):
        raise BadRequest("POST _search needs an application/x-www-form-urlencoded body")
    body = (await request.body()).decode()
    pairs = request.query_params.multi_items() + parse_qsl(body, keep_blank_values=True)
    return await _search(request, resource_type, pairs)
