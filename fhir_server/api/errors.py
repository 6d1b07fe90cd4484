"""Every error becomes an OperationOutcome with the right status; no stack trace reaches a client."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import orjson
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response

from fhir_server.api.negotiation import error_media_type, is_xml
from fhir_server.errors import FhirError, Issue, operation_outcome
from fhir_server.formats.xml import json_to_xml

log = logging.getLogger("fhir_server.errors")

_HTTP_CODES = {
    400: "invalid", 401: "login", 403: "forbidden", 404: "not-found", 405: "not-supported",
    406: "not-supported", 409: "conflict", 410: "deleted", 412: "conflict", 413: "too-costly",
    415: "not-supported", 422: "processing", 429: "throttled",
}


def request_id(request: Request) -> str | None:
    return request.scope.get("state", {}).get("request_id")


def outcome_response(request: Request, status: int, issues: list[Issue], headers: dict[str, str] | None = None) -> Response:
    outcome = operation_outcome(issues, request_id(request))
    media_type = error_media_type(request)
    if is_xml(media_type):  # errors in the format the client negotiated (http.html#mime-type)
        body, media_type = json_to_xml(outcome), f"{media_type}; charset=utf-8"
    else:
        body, media_type = orjson.dumps(outcome), "application/fhir+json; charset=utf-8"
    return Response(body, status_code=status, headers=headers, media_type=media_type)


async def _no_body() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def send_outcome(
    scope: dict[str, Any], send: Any, status: int, issues: list[Issue], headers: Mapping[str, str] | None = None
) -> None:
    """Answer an ASGI request from a middleware (before any route runs) with an OperationOutcome,
    negotiated like every other error: FHIR XML when Accept/_format ask for it (http.html#mime-type)."""
    response = outcome_response(Request(scope), status, issues, dict(headers or {}))
    await response(scope, _no_body, send)


async def fhir_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, FhirError)
    log.info("request failed", extra={"status": exc.status, "reason": exc.diagnostics[:200]})
    return outcome_response(request, exc.status, exc.issues, exc.headers)


async def http_exception_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "exception")
    if exc.status_code == 404:
        detail = f"No FHIR endpoint at {request.url.path}"
    elif exc.status_code == 405:
        detail = f"{request.method} is not allowed on {request.url.path}"
    else:
        detail = str(exc.detail)
    return outcome_response(request, exc.status_code, [Issue("error", code, detail)], dict(exc.headers or {}))


async def validation_exception_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    issues = [
        Issue("error", "invalid", str(err.get("msg")), ".".join(str(p) for p in err.get("loc", ())))
        for err in exc.errors()
    ]
    return outcome_response(request, 400, issues or [Issue("error", "invalid", "Invalid request")])


async def unexpected_error_handler(request: Request, exc: Exception) -> Response:
    rid = request_id(request)
    log.error("unhandled error", exc_info=exc, extra={"request_id": rid})
    return outcome_response(
        request, 500, [Issue("fatal", "exception", f"Internal server error; quote request id {rid} to the operator")]
    )


def install(app: FastAPI) -> None:
    app.add_exception_handler(FhirError, fhir_error_handler)
    app.add_exception_handler(StarletteHTTPException, http_exception_handler)
    app.add_exception_handler(RequestValidationError, validation_exception_handler)
    app.add_exception_handler(Exception, unexpected_error_handler)
