"""Binary over REST (https://hl7.org/fhir/R4/http.html#binary, binary.html).

Writes: a body in a FHIR format (``application/fhir+json``, ``application/json``…) is a Binary
resource with base64 ``data``; any other Content-Type is the content itself, streamed to storage
(``X-Security-Context`` → ``Binary.securityContext``). Reads: the raw bytes with their own
Content-Type, unless Accept or ``_format`` asks for a FHIR format; then the Binary resource with
``data``. ``Range: bytes=…`` is honoured on raw reads. PATCH is refused (PUT the new content).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from fhir_server.api.body import read_json
from fhir_server.api.deps import service
from fhir_server.api.negotiation import JSON_TYPES, check_request_media_type, is_xml, response_media_type
from fhir_server.api.read import _not_modified
from fhir_server.api.responses import fhir_response, parse_if_match, resource_body, version_headers, write_response
from fhir_server.api.write import _audited
from fhir_server.errors import BadRequest, FhirError, MethodNotAllowed
from fhir_server.services.binary import BinaryService, BinaryVersion
from fhir_server.services.resources import WriteResult

# Content-Types that make a request body (or an Accept) mean "the Binary resource"; every other
# one is the content itself. application/xml and text/xml are content here, not FHIR XML.
_FHIR_XML = frozenset({"application/fhir+xml", "application/xml+fhir"})
FHIR_FORMATS = frozenset(JSON_TYPES) | _FHIR_XML
_SUMMARY_WITHOUT_DATA = frozenset({"true", "text", "count"})


class RangeNotSatisfiable(FhirError):
    status, code = 416, "invalid"


def binary_service(request: Request) -> BinaryService:
    state = request.app.state
    return BinaryService(service(request), state.blobs, state.binary_policy)


def _media(value: str) -> str:
    return value.split(";", 1)[0].strip().lower()


def _fhir_body(request: Request) -> bool:
    ct = request.headers.get("content-type")
    return ct is None or _media(ct) in FHIR_FORMATS  # no Content-Type: read as FHIR JSON, like other types


def wants_fhir(request: Request) -> bool:
    """http.html#binary: native content unless the client asks for a FHIR format."""
    if request.query_params.get("_format"):
        return True
    accept = request.headers.get("accept") or ""
    return any(_media(part) in FHIR_FORMATS for part in accept.split(","))


# ---- writes ----------------------------------------------------------------------------------
async def _fhir_resource(request: Request) -> object:
    check_request_media_type(request)
    response_media_type(request)  # 406 before any write happens
    policy = request.app.state.binary_policy
    limit = max(request.app.state.settings.max_body_bytes, policy.max_bytes * 4 // 3 + 64 * 1024)
    resource = await read_json(request, limit)
    if not isinstance(resource, dict) or resource.get("resourceType") != "Binary":
        got = resource.get("resourceType") if isinstance(resource, dict) else type(resource).__name__
        raise BadRequest(f"The body is a {got!r} resource but the URL is for Binary", expression="resourceType")
    return resource


async def _raw_resource(request: Request, svc: BinaryService, resource_id: str | None = None) -> dict[str, object]:
    response_media_type(request)
    content_type = request.headers["content-type"].strip()
    svc.policy.check_content_type(content_type)
    declared = request.headers.get("content-length")
    if declared and declared.isdigit():
        svc.policy.check_size(int(declared))
    security_context = request.headers.get("x-security-context") or None
    return await svc.store_bytes(
        request.stream(), content_type, security_context=security_context, resource_id=resource_id
    )


async def _write(
    request: Request,
    svc: BinaryService,
    fhir_write: Callable[[object], Awaitable[WriteResult]],
    raw_write: Callable[[dict[str, object]], Awaitable[WriteResult]],
    resource_id: str | None = None,
) -> Response:
    """A write of the request body: ``fhir_write`` of a FHIR Binary, ``raw_write`` of raw content."""
    if _fhir_body(request):
        result = await fhir_write(await _fhir_resource(request))
    else:
        result = await raw_write(await _raw_resource(request, svc, resource_id))
    return _written(request, result)


def _written(request: Request, result: WriteResult) -> Response:
    if not result.created and request.method == "POST":
        return write_response(request, result.version, 200, location=False, message="Matched an existing resource; nothing created")
    _audited(request)
    status = 201 if result.created else 200
    return write_response(request, result.version, status, location=result.created, message="Created" if result.created else "Updated")


async def create(resource_type: str, request: Request) -> Response:
    """create (http.html#create, #binary): FHIR Binary or raw content."""
    svc = binary_service(request)
    if_none_exist = request.headers.get("if-none-exist")
    return await _write(
        request, svc,
        lambda resource: svc.create(resource, if_none_exist=if_none_exist),  # type: ignore[arg-type]
        lambda stored: svc.create_stored(stored, if_none_exist=if_none_exist),
    )


async def update(resource_type: str, resource_id: str, request: Request) -> Response:
    """update (http.html#update, #binary): FHIR Binary or raw content under a known id."""
    svc = binary_service(request)
    if_match = parse_if_match(request)
    return await _write(
        request, svc,
        lambda resource: svc.update(resource_id, resource, if_match=if_match),  # type: ignore[arg-type]
        lambda stored: svc.update_stored(resource_id, stored, if_match=if_match),
        resource_id,
    )


async def conditional_update(resource_type: str, request: Request) -> Response:
    """Conditional update (http.html#cond-update) of a Binary."""
    criteria = request.url.query
    if not criteria:
        raise BadRequest("PUT on a type needs search criteria (conditional update) or an id in the URL")
    svc = binary_service(request)
    if_match = parse_if_match(request)
    return await _write(
        request, svc,
        lambda resource: svc.conditional_update(criteria, resource, if_match=if_match),  # type: ignore[arg-type]
        lambda stored: svc.conditional_update(criteria, stored, if_match=if_match, stored=True),
    )


async def refuse_patch(*args: object) -> Response:
    raise MethodNotAllowed(
        "PATCH is not supported on Binary; PUT the new content instead", headers={"Allow": "GET, PUT, DELETE"}
    )


# ---- reads -----------------------------------------------------------------------------------
def _byte_range(request: Request, size: int) -> tuple[int, int] | None:
    """A single ``bytes=a-b`` / ``bytes=a-`` / ``bytes=-n`` range (RFC 9110 §14.2) as (start, length)."""
    header = request.headers.get("range")
    if not header or size == 0:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None  # other units and multiple ranges: answer the whole content (RFC 9110 allows it)
    first, dash, last = spec.strip().partition("-")
    if not dash or not (first.isdigit() or last.isdigit()) or (first and not first.isdigit()) or (last and not last.isdigit()):
        return None
    if not first:
        start = max(size - int(last), 0)
        end = size - 1
    else:
        start = int(first)
        end = min(int(last), size - 1) if last else size - 1
    if start >= size or end < start:
        raise RangeNotSatisfiable(f"Range '{header}' is outside the {size} bytes", headers={"Content-Range": f"bytes */{size}"})
    return start, end - start + 1


async def _raw_response(request: Request, svc: BinaryService, binary: BinaryVersion, headers: dict[str, str]) -> Response:
    size = binary.size
    headers["Content-Type"] = binary.content_type
    headers["X-Content-Type-Options"] = "nosniff"  # never let a browser guess active content from uploaded bytes
    headers["Accept-Ranges"] = "bytes"
    if binary.security_context:
        headers["X-Security-Context"] = binary.security_context
    status, start, length = 200, 0, size
    byte_range = _byte_range(request, size)
    if byte_range is not None:
        status, (start, length) = 206, byte_range
        headers["Content-Range"] = f"bytes {start}-{start + length - 1}/{size}"
    headers["Content-Length"] = str(length)
    stream = await svc.open(binary, start, length if byte_range else None)
    return StreamingResponse(stream, status_code=status, headers=headers)


async def _fhir_response(request: Request, svc: BinaryService, binary: BinaryVersion, headers: dict[str, str]) -> Response:
    media_type = response_media_type(request)
    params = request.query_params
    summary, elements = params.get("_summary"), params.get("_elements")
    if not binary.external or summary in _SUMMARY_WITHOUT_DATA:
        return fhir_response(request, resource_body(request, binary.version), 200, headers)
    if summary or elements or params.get("_pretty", "").lower() == "true" or is_xml(media_type):
        return fhir_response(request, resource_body(request, await svc.inflated(binary)), 200, headers)
    stream, length = await svc.json_stream(binary)
    headers["Content-Type"] = f"{media_type}; charset=utf-8"
    headers["Content-Length"] = str(length)
    return StreamingResponse(stream, status_code=200, headers=headers)


async def _answer(request: Request, svc: BinaryService, binary: BinaryVersion) -> Response:
    headers = version_headers(binary.version)
    if _not_modified(request, binary.version):
        return Response(status_code=304, headers=headers)
    if request.scope.get("state", {}).get("db") is not None:
        # an entry of a batch/transaction Bundle (api/transaction.py): the resource, whole, in the Bundle
        return fhir_response(request, resource_body(request, await svc.inflated(binary)), 200, headers)
    if wants_fhir(request):
        return await _fhir_response(request, svc, binary, headers)
    return await _raw_response(request, svc, binary, headers)


async def read(resource_type: str, resource_id: str, request: Request) -> Response:
    """read (http.html#read, #binary)."""
    svc = binary_service(request)
    return await _answer(request, svc, await svc.read(resource_id))


async def vread(resource_type: str, resource_id: str, version_id: str, request: Request) -> Response:
    """vread (http.html#vread): the bytes of that version."""
    svc = binary_service(request)
    return await _answer(request, svc, await svc.vread(resource_id, version_id))


# (path shape, method) → handler, taking over from the generic ones for Binary (api/routes.py)
HANDLERS = {
    ("T", "POST"): create,
    ("T", "PUT"): conditional_update,
    ("T", "PATCH"): refuse_patch,
    ("T/I", "GET"): read,
    ("T/I", "PUT"): update,
    ("T/I", "PATCH"): refuse_patch,
    ("T/I/_history/V", "GET"): vread,
}
