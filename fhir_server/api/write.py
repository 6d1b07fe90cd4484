"""create, update, patch, delete and their conditional forms (https://hl7.org/fhir/R4/http.html)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from fhir_server.api.body import read_json
from fhir_server.api.deps import checked_type, service
from fhir_server.api.negotiation import JSON_PATCH, check_request_media_type, response_media_type
from fhir_server.api.responses import fhir_response, parse_if_match, write_response
from fhir_server.errors import BadRequest, Issue, NotImplementedInteraction, operation_outcome


def _criteria(request: Request) -> str:
    return request.url.query


async def _resource_body(request: Request) -> object:
    check_request_media_type(request)
    response_media_type(request)  # 406 before any write happens
    return await read_json(request)


async def create(resource_type: str, request: Request) -> Response:
    checked_type(resource_type)
    body = await _resource_body(request)
    if_none_exist = request.headers.get("if-none-exist")
    result = await service(request).create(resource_type, body, if_none_exist=if_none_exist)  # type: ignore[arg-type]
    if not result.created:
        return write_response(request, result.version, 200, location=False, message="Matched an existing resource; nothing created")
    _audited(request)
    return write_response(request, result.version, 201, location=True, message="Created")


async def update(resource_type: str, resource_id: str, request: Request) -> Response:
    checked_type(resource_type)
    body = await _resource_body(request)
    result = await service(request).update(resource_type, resource_id, body, if_match=parse_if_match(request))  # type: ignore[arg-type]
    _audited(request)
    status = 201 if result.created else 200
    return write_response(request, result.version, status, location=result.created, message="Created" if result.created else "Updated")


async def conditional_update(resource_type: str, request: Request) -> Response:
    checked_type(resource_type)
    if not _criteria(request):
        raise BadRequest("PUT on a type needs search criteria (conditional update) or an id in the URL")
    body = await _resource_body(request)
    result = await service(request).conditional_update(resource_type, _criteria(request), body, if_match=parse_if_match(request))  # type: ignore[arg-type]
    _audited(request)
    status = 201 if result.created else 200
    return write_response(request, result.version, status, location=result.created, message="Created" if result.created else "Updated")


async def _patch_body(request: Request) -> object:
    media = check_request_media_type(request, allow_patch=True)
    response_media_type(request)
    body = await read_json(request)
    if media != JSON_PATCH:
        if isinstance(body, dict) and body.get("resourceType") == "Parameters":
            raise NotImplementedInteraction("FHIRPath Patch is not supported yet; send application/json-patch+json")
        raise BadRequest("PATCH needs a JSON Patch document with Content-Type application/json-patch+json")
    return body


async def patch(resource_type: str, resource_id: str, request: Request) -> Response:
    checked_type(resource_type)
    body = await _patch_body(request)
    result = await service(request).patch(resource_type, resource_id, body, if_match=parse_if_match(request))
    _audited(request)
    return write_response(request, result.version, 200, location=False, message="Patched")


async def conditional_patch(resource_type: str, request: Request) -> Response:
    checked_type(resource_type)
    if not _criteria(request):
        raise BadRequest("PATCH on a type needs search criteria (conditional patch)")
    body = await _patch_body(request)
    result = await service(request).conditional_patch(resource_type, _criteria(request), body)
    _audited(request)
    return write_response(request, result.version, 200, location=False, message="Patched")


def _audited(request: Request) -> None:
    """The write's own statement recorded its audit row; the audit middleware need not."""
    request.scope.setdefault("state", {})["audited"] = True


def _deleted(request: Request, version_id: int | None, message: str) -> Response:
    if version_id:
        _audited(request)
    headers = {"ETag": f'W/"{version_id}"'} if version_id else {}
    if request.headers.get("prefer", "").replace(" ", "").find("return=OperationOutcome") >= 0:
        return fhir_response(request, operation_outcome([Issue("information", "informational", message)]), 200, headers)
    return Response(status_code=204, headers=headers)


async def delete(resource_type: str, resource_id: str, request: Request) -> Response:
    version = await service(request).delete(checked_type(resource_type), resource_id)
    return _deleted(request, version.version_id if version else None, "Deleted" if version else "Already deleted")


async def conditional_delete(resource_type: str, request: Request) -> Response:
    checked_type(resource_type)
    if not _criteria(request):
        raise BadRequest("DELETE on a type needs search criteria (conditional delete)")
    version = await service(request).conditional_delete(resource_type, _criteria(request))
    return _deleted(request, version.version_id if version else None, "Deleted" if version else "No match; nothing deleted")
