"""Building FHIR responses: media type, _pretty, ETag, Last-Modified, Location, Prefer."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from fhir_server.api.negotiation import is_xml, response_media_type
from fhir_server.api.subsetting import select_elements, summarize
from fhir_server.errors import BadRequest, Issue, operation_outcome
from fhir_server.formats.xml import json_body_to_xml
from fhir_server.storage.repository import StoredVersion
from fhir_server.timeutil import http_date

PREFER_RETURN = frozenset({"minimal", "representation", "OperationOutcome"})


def base_url(request: Request) -> str:
    """The FHIR base of the request: ``FHIR_BASE_URL`` (or the request's own ``…/fhir``), plus
    ``/{tenant}`` when the URL named the tenant (``fhir_server.tenancy.middleware``)."""
    configured = request.app.state.settings.base_url
    base = configured.rstrip("/") if configured else str(request.base_url).rstrip("/") + "/fhir"
    segment = request.scope.get("state", {}).get("tenant_segment")
    return f"{base}/{segment}" if segment else base


def wants_pretty(request: Request) -> bool:
    return request.query_params.get("_pretty", "").lower() == "true"


def json_bytes(request: Request, body: Any) -> bytes:
    if wants_pretty(request):
        return orjson.dumps(body, option=orjson.OPT_INDENT_2)
    return orjson.dumps(body)


def fhir_response(request: Request, body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    media_type = response_media_type(request)
    if is_xml(media_type):  # http.html#mime-type: the same resource in FHIR XML
        content = json_body_to_xml(body, pretty=wants_pretty(request))
    else:
        content = body if isinstance(body, bytes) else json_bytes(request, body)
    return Response(content, status_code=status, headers=headers, media_type=f"{media_type}; charset=utf-8")


def version_headers(version: StoredVersion) -> dict[str, str]:
    return {"ETag": f'W/"{version.version_id}"', "Last-Modified": http_date(version.last_updated)}


def resource_body(request: Request, version: StoredVersion) -> bytes:
    """The stored JSON as it is, unless the client asked for a subset or pretty printing."""
    summary = request.query_params.get("_summary")
    elements = request.query_params.get("_elements")
    pretty = wants_pretty(request)
    assert version.content is not None
    if not (summary or elements or pretty):
        return version.content.encode()
    resource = orjson.loads(version.content)
    if summary:
        resource = summarize(resource, summary)
    elif elements:
        resource = select_elements(resource, elements)
    return json_bytes(request, resource)


def prefer_strict(request: Request) -> bool:
    """``Prefer: handling=strict``: refuse what lenient handling would ignore (http.html#prefer)."""
    return "handling=strict" in request.headers.get("prefer", "").replace(" ", "")


def prefer_return(request: Request) -> str:
    prefer = request.headers.get("prefer", "")
    for part in prefer.split(";"):
        for item in part.split(","):
            key, _, value = item.strip().partition("=")
            if key.strip().lower() == "return":
                value = value.strip().strip('"')
                if value not in PREFER_RETURN:
                    raise BadRequest(f"Prefer: return={value} is not one of {sorted(PREFER_RETURN)}")
                return value
    return "representation"


def write_response(
    request: Request, version: StoredVersion, status: int, *, location: bool, message: str
) -> Response:
    """The answer to create/update/patch, honouring Prefer: return (http.html#ops)."""
    headers = version_headers(version)
    if location:
        headers["Location"] = f"{base_url(request)}/{version.resource_type}/{version.id}/_history/{version.version_id}"
    mode = prefer_return(request)
    if mode == "minimal":
        return Response(status_code=status, headers=headers)
    if mode == "OperationOutcome":
        outcome = operation_outcome([Issue("information", "informational", message)])
        return fhir_response(request, outcome, status, headers)
    return fhir_response(request, resource_body(request, version), status, headers)


def parse_if_match(request: Request) -> int | None:
    value = request.headers.get("if-match")
    if value is None:
        return None
    tag = value.strip().removeprefix("W/").strip('"')
    if not tag.isdigit():
        raise BadRequest(f"If-Match '{value}' is not a version ETag like W/\"3\"")
    return int(tag)
