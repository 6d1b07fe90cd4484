"""AuditEvent: the audit trail read as FHIR resources (auditevent.html), by auditors only.

``GET [base]/AuditEvent?…`` (and ``POST [base]/AuditEvent/_search``), ``GET [base]/AuditEvent/{id}``
and its only version ``…/_history/1`` are served from ``audit_event`` (``fhir_server.audit.query``,
``fhir_server.audit.resource``), not from the resource table. Anyone but an audit reader
(``fhir_server.audit.access``) gets 403, which the audit trail records like any refusal. The audit
trail is written by the server only: every write interaction on AuditEvent is 405.
"""

from __future__ import annotations

from datetime import datetime
from urllib.parse import parse_qsl
from uuid import UUID

import orjson
from starlette.requests import Request
from starlette.responses import Response

from fhir_server.api.bundles import bundle_bytes, decode_cursor, encode_cursor, page_links
from fhir_server.api.deps import database, tenant_of
from fhir_server.api.paging import parse_count
from fhir_server.api.responses import base_url, fhir_response
from fhir_server.audit import query
from fhir_server.audit.access import may_read_audit_trail
from fhir_server.audit.resource import build, parse_resource_id
from fhir_server.errors import (
    BadRequest,
    Forbidden,
    InvalidSearch,
    Issue,
    MethodNotAllowed,
    ResourceNotFound,
    operation_outcome,
)

TYPE = "AuditEvent"
PAGE_PARAM = "_page"
RESULT_PARAMS = frozenset({"_count", PAGE_PARAM, "_format", "_pretty", "_summary", "_elements", "_total", "_sort"})
_KEPT = ("_format", "_pretty")


def _check_access(request: Request) -> None:
    principal = request.scope.get("state", {}).get("principal")
    if not may_read_audit_trail(principal, request.app.state.settings):
        raise Forbidden("The audit trail (AuditEvent) can be read by auditors only")


def _source_id(request: Request) -> str:
    return str(getattr(request.app.state.settings, "audit_source_id", "fhir-server"))


async def _search(request: Request, pairs: list[tuple[str, str]]) -> Response:
    _check_access(request)
    tenant = tenant_of(request)
    q = query.build(tenant, pairs, RESULT_PARAMS)
    for name, value in pairs:
        if name == "_sort" and value not in ("-date", "-_lastUpdated"):
            q.warnings.append(Issue("warning", "not-supported", "AuditEvents are sorted newest first only", "_sort"))
    if q.warnings and "handling=strict" in request.headers.get("prefer", "").replace(" ", ""):
        raise InvalidSearch("Unknown or unsupported search parameters", issues=q.warnings)
    raw_count = next((v for k, v in reversed(pairs) if k == "_count"), None)
    count = parse_count(request, raw_count)
    applied = list(q.applied)
    if count is None:
        count = int(request.app.state.settings.default_page_size)
    else:
        applied.append(("_count", str(count)))
    applied += [(k, v) for k, v in pairs if k in _KEPT]
    raw_page = next((v for k, v in reversed(pairs) if k == PAGE_PARAM), None)
    after = None
    if raw_page:
        recorded, audit_id = decode_cursor(raw_page, (datetime, str))
        try:
            after = (recorded, UUID(audit_id))
        except ValueError:
            raise BadRequest("The paging token is not valid", expression=PAGE_PARAM) from None
    sql, binds = query.page_sql(q, count, after)
    async with database(request).connection() as conn:
        cur = await conn.execute(sql, binds)
        rows = await cur.fetchall()
    next_token = None
    if len(rows) > count:
        rows = rows[:count]
        next_token = encode_cursor((rows[-1][1], str(rows[-1][0]))) if rows else None
    base, source = base_url(request), _source_id(request)
    entries: list[tuple[dict, bytes | None]] = []
    for row in rows:
        event = build(row, tenant=tenant, source_id=source)
        entries.append(({"fullUrl": f"{base}/{TYPE}/{event['id']}", "search": {"mode": "match"}}, orjson.dumps(event)))
    if q.warnings:
        entries.append(({"search": {"mode": "outcome"}}, orjson.dumps(operation_outcome(q.warnings))))
    links = page_links(request, next_token, applied + ([(PAGE_PARAM, raw_page)] if raw_page else []), with_first=True)
    return fhir_response(request, bundle_bytes(request, {"type": "searchset", "link": links}, entries))


async def search_type(request: Request) -> Response:
    """``GET [base]/AuditEvent?…``"""
    return await _search(request, request.query_params.multi_items())


async def search_post(request: Request) -> Response:
    """``POST [base]/AuditEvent/_search`` with a form body."""
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        raise BadRequest("POST _search needs an application/x-www-form-urlencoded body")
    body = (await request.body()).decode()
    return await _search(request, request.query_params.multi_items() + parse_qsl(body, keep_blank_values=True))


async def read(resource_id: str, request: Request, version: str | None = None) -> Response:
    """``GET [base]/AuditEvent/{id}`` (an audit row never changes: its only version is 1)."""
    _check_access(request)
    tenant = tenant_of(request)
    key = parse_resource_id(resource_id)
    row = None
    if key is not None and version in (None, "1"):
        async with database(request).connection() as conn:
            cur = await conn.execute(*query.read_sql(tenant, *key))
            row = await cur.fetchone()
    if row is None:
        raise ResourceNotFound(f"{TYPE}/{resource_id}" + (f" has no version {version}" if version else " is not known"))
    event = build(row, tenant=tenant, source_id=_source_id(request))
    headers = {"ETag": 'W/"1"'}
    return fhir_response(request, orjson.dumps(event), 200, headers)


async def refuse_write(*_args: object) -> Response:
    raise MethodNotAllowed(
        "The audit trail is written by the server only: AuditEvent cannot be created, changed or deleted",
        headers={"Allow": "GET, HEAD"},
    )


def handler(shape: str, method: str, params: list[str]):
    """The handler for an AuditEvent path, or None to let the ordinary table decide (operations)."""
    if shape == "T" and method == "GET":
        return lambda _type, request: search_type(request)
    if shape == "T/_search" and method == "POST":
        return lambda _type, request: search_post(request)
    if shape == "T/I" and method == "GET":
        return lambda _type, rid, request: read(rid, request)
    if shape == "T/I/_history/V" and method == "GET":
        return lambda _type, rid, vid, request: read(rid, request, vid)
    if shape.endswith("$"):
        return None
    if method == "GET":
        return refuse_history
    return refuse_write


async def refuse_history(*_args: object) -> Response:
    raise MethodNotAllowed(
        "AuditEvent has no history: an audit record has exactly one version (read it, or search)",
        headers={"Allow": "GET"},
    )
