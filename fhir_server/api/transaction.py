"""``POST [base]`` with a transaction or batch Bundle (https://hl7.org/fhir/R4/http.html#transaction,
#batch): parse, run through ``services.bundles``, answer a transaction-response / batch-response.

Writes run in the bundle service. GET entries (read, vread, search, history) and operations run
through the ordinary handlers (``routes.dispatch``) on a sub-request whose ``state["db"]`` is the
bundle's connection, so they see the transaction's own writes and share every rule of the REST API.
``Prefer: return=minimal|representation|OperationOutcome`` decides what write entries carry.
"""

from __future__ import annotations

from datetime import datetime
from http import HTTPStatus
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from fhir_server.api.authorize import authorize_entry
from fhir_server.api.body import read_json
from fhir_server.api.bundles import bundle_bytes
from fhir_server.api.deps import service
from fhir_server.api.negotiation import check_request_media_type
from fhir_server.api.responses import base_url, fhir_response, prefer_return
from fhir_server.errors import BadRequest, Issue, operation_outcome
from fhir_server.services.bundles import BundleEntry, BundleService, EntryResult
from fhir_server.services.resources import BoundDatabase
from fhir_server.timeutil import format_instant, http_date, parse_http_date

_PASSED_HEADERS = (b"accept", b"host")


def _status(code: int) -> str:
    try:
        return f"{code} {HTTPStatus(code).phrase}"
    except ValueError:
        return str(code)


def _http_date(entry: BundleEntry) -> str | None:
    """Bundle.entry.request.ifModifiedSince is an instant; the handler reads an HTTP date."""
    value = entry.if_modified_since
    if not value:
        return None
    try:
        return http_date(datetime.fromisoformat(value))
    except ValueError:
        raise BadRequest(
            f"Bundle.entry[{entry.index}]: ifModifiedSince '{value}' is not an instant",
            expression=f"Bundle.entry[{entry.index}].request.ifModifiedSince",
        ) from None


def _sub_scope(request: Request, entry: BundleEntry, conn: Any | None) -> dict[str, Any]:
    """The scope of the entry as if it had come alone (method, path, query), bound to ``conn``."""
    outer = request.scope
    headers = [(k, v) for k, v in outer["headers"] if k in _PASSED_HEADERS]
    if entry.if_none_match:
        headers.append((b"if-none-match", entry.if_none_match.encode()))
    since = _http_date(entry)
    if since:
        headers.append((b"if-modified-since", since.encode()))
    if entry.method == "POST":
        search = entry.path.endswith("/_search")
        headers.append((b"content-type", b"application/x-www-form-urlencoded" if search else b"application/fhir+json"))
    state = {k: v for k, v in outer.get("state", {}).items() if k in ("principal", "request_id", "tenant", "tenant_segment")}
    if conn is not None:
        state["db"] = BoundDatabase(conn)
    path = "/fhir/" + entry.path
    return {
        "type": "http", "http_version": outer.get("http_version", "1.1"), "method": entry.method,
        "scheme": outer.get("scheme", "http"), "server": outer.get("server"), "client": outer.get("client"),
        "root_path": outer.get("root_path", ""), "path": path, "raw_path": path.encode(),
        "query_string": entry.query.encode(), "headers": headers, "app": outer["app"], "state": state,
    }


async def _run_other(request: Request, conn: Any, entry: BundleEntry) -> EntryResult:
    """A GET (or search, history, operation) entry through the ordinary handler, on ``conn``."""
    from fhir_server.api import routes  # routes imports this module

    body = b""
    if entry.method == "POST" and isinstance(entry.resource, dict):
        body = orjson.dumps(entry.resource)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    sub = Request(_sub_scope(request, entry, conn), receive)
    response = await routes.dispatch(sub)
    return EntryResult(response.status_code, body=bytes(response.body) or None, headers=dict(response.headers))


def _entry(base: str, mode: str, result: EntryResult) -> tuple[dict[str, Any], bytes | None]:
    """One response entry (bundle.html#transaction-response): status, location, etag, lastModified;
    ``resource``/``outcome`` after Prefer for writes, the handler's answer for reads."""
    response: dict[str, Any] = {"status": _status(result.status)}
    entry: dict[str, Any] = {}
    resource: bytes | None = None
    if result.error is not None:
        response["outcome"] = operation_outcome(result.error.issues)
        return {"response": response}, None
    v = result.version
    if v is not None:
        if result.location:
            response["location"] = f"{v.resource_type}/{v.id}/_history/{v.version_id}"
        response["etag"] = f'W/"{v.version_id}"'
        response["lastModified"] = format_instant(v.last_updated)
        if not v.deleted:
            entry["fullUrl"] = f"{base}/{v.resource_type}/{v.id}"
            if mode == "representation" and v.content is not None:
                resource = v.content.encode()
    elif result.body is not None or result.headers:
        headers = result.headers
        if "location" in headers:
            response["location"] = headers["location"]
        if "etag" in headers:
            response["etag"] = headers["etag"]
        modified = parse_http_date(headers.get("last-modified", ""))
        if modified is not None:
            response["lastModified"] = format_instant(modified)
        resource = result.body
    if mode == "OperationOutcome" and result.body is None and result.message:
        response["outcome"] = operation_outcome([Issue("information", "informational", result.message)])
    entry["response"] = response
    return entry, resource


def _audit(request: Request, entries: list[BundleEntry | None], results: list[EntryResult]) -> None:
    """Entries whose own statement wrote no audit row (reads, searches, no-op writes, failed batch
    entries) get one through the audit sink, as if they had come alone."""
    from fhir_server.audit.middleware import _record as record_audit  # it imports api.routes

    for entry, result in zip(entries, results, strict=True):
        if entry is not None and not result.audited:
            scope = _sub_scope(request, entry, None)
            record_audit(scope, scope["state"], result.status)


async def transaction_or_batch(request: Request) -> Response:
    """``POST [base]`` (http.html#transaction, #batch): HTTP 200 with the response Bundle; a failed
    transaction answers the failing entry's status and an OperationOutcome naming it."""
    check_request_media_type(request)
    mode = prefer_return(request)  # 400 before anything is written
    bundle = await read_json(request)
    base = base_url(request)

    async def other(conn: Any, entry: BundleEntry) -> EntryResult:
        return await _run_other(request, conn, entry)

    async def authorize(entry: BundleEntry) -> None:  # role ∩ scopes, per entry (api/authorize.py)
        await authorize_entry(request, entry.method, entry.path, entry.query)

    bundles = BundleService(service(request), base=base, other=other, authorize=authorize)
    btype, results, entries = await bundles.run(bundle)
    _audit(request, entries, results)
    parts = [_entry(base, mode, r) for r in results]
    return fhir_response(request, bundle_bytes(request, {"type": f"{btype}-response"}, parts))
