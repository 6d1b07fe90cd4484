"""Reading a request body: size limit (413), JSON parsing (400); FHIR XML bodies become JSON here."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request

from fhir_server.api.negotiation import is_xml
from fhir_server.errors import BadRequest, PayloadTooLarge
from fhir_server.formats.xml import XmlFormatError, json_number, xml_to_json


async def read_json(request: Request, limit: int | None = None) -> Any:
    """The body as JSON; ``limit`` overrides FHIR_MAX_BODY_BYTES (Binary bodies carry base64 content)."""
    if limit is None:
        limit = request.app.state.settings.max_body_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"The request body is larger than the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"The request body is larger than the limit of {limit} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        raise BadRequest("The request body is empty; a FHIR resource was expected")
    if is_xml(request.headers.get("content-type", "")):
        try:  # decimals as orjson would read them, so services see the same JSON either way
            return xml_to_json(raw, decimal=json_number)
        except XmlFormatError as exc:
            raise BadRequest(f"The request body is not valid FHIR XML: {exc}", expression=exc.expression) from None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"The request body is not valid JSON: {exc}") from None
