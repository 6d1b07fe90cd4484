"""history at instance, type and system level (https://hl7.org/fhir/R4/http.html#history)."""

from __future__ import annotations

from datetime import datetime

from starlette.requests import Request
from starlette.responses import Response

from fhir_server.api.bundles import PAGE_PARAM, decode_cursor, encode_cursor, history_bundle
from fhir_server.api.deps import access_of, checked_type, database, tenant_of
from fhir_server.api.paging import page_size
from fhir_server.api.responses import fhir_response
from fhir_server.errors import BadRequest, ResourceNotFound
from fhir_server.storage import repository as repo
from fhir_server.storage.history import HistoryQuery, fetch_history
from fhir_server.timeutil import parse_range


def _query(request: Request, resource_type: str | None = None, resource_id: str | None = None) -> HistoryQuery:
    q = HistoryQuery(tenant_of(request), resource_type, resource_id, count=page_size(request), access=access_of(request))
    params = request.query_params
    if "_since" in params:
        since = params["_since"]
        if "T" in since and not (since.endswith("Z") or "+" in since[10:] or "-" in since[10:]):
            raise BadRequest("_since must be an instant with a time zone", expression="_since")
        q.since = parse_range(since, "_since")[0]
    if "_at" in params:
        q.at = parse_range(params["_at"], "_at")
    if PAGE_PARAM in params:
        q.after = decode_cursor(params[PAGE_PARAM], (datetime, str, str, int))  # type: ignore[assignment]
    return q


async def _answer(request: Request, q: HistoryQuery) -> Response:
    async with database(request).connection() as conn:
        if (
            q.resource_id is not None
            and q.resource_type is not None
            and not await repo.exists_any_version(conn, q.tenant, q.resource_type, q.resource_id, access=q.access)
        ):
            raise ResourceNotFound(f"{q.resource_type}/{q.resource_id} is not known")
        versions, cursor = await fetch_history(conn, q)
    token = encode_cursor(cursor) if cursor else None
    return fhir_response(request, history_bundle(request, versions, token))


async def system_history(request: Request) -> Response:
    return await _answer(request, _query(request))


async def type_history(resource_type: str, request: Request) -> Response:
    return await _answer(request, _query(request, checked_type(resource_type)))


async def instance_history(resource_type: str, resource_id: str, request: Request) -> Response:
    return await _answer(request, _query(request, checked_type(resource_type), resource_id))
