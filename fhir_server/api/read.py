"""read and vread (https://hl7.org/fhir/R4/http.html#read, #vread)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from fhir_server.api.deps import checked_type, service
from fhir_server.api.responses import fhir_response, resource_body, version_headers
from fhir_server.storage.repository import StoredVersion
from fhir_server.timeutil import parse_http_date


def _not_modified(request: Request, version: StoredVersion) -> bool:
    """If-None-Match / If-Modified-Since (http.html#cread)."""
    inm = request.headers.get("if-none-match")
    if inm is not None:
        tags = {t.strip().removeprefix("W/").strip('"') for t in inm.split(",")}
        return str(version.version_id) in tags or "*" in tags
    ims = request.headers.get("if-modified-since")
    if ims is not None:
        since = parse_http_date(ims)
        return since is not None and version.last_updated.replace(microsecond=0) <= since
    return False


async def read(resource_type: str, resource_id: str, request: Request) -> Response:
    version = await service(request).read(checked_type(resource_type), resource_id)
    request.scope.setdefault("state", {})["audit_version"] = version  # its patient goes in the audit row
    headers = version_headers(version)
    if _not_modified(request, version):
        return Response(status_code=304, headers=headers)
    return fhir_response(request, resource_body(request, version), 200, headers)


async def vread(resource_type: str, resource_id: str, version_id: str, request: Request) -> Response:
    version = await service(request).vread(checked_type(resource_type), resource_id, version_id)
    request.scope.setdefault("state", {})["audit_version"] = version  # its patient goes in the audit row
    headers = version_headers(version)
    if _not_modified(request, version):
        return Response(status_code=304, headers=headers)
    return fhir_response(request, resource_body(request, version), 200, headers)
