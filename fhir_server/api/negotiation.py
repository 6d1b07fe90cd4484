"""Content negotiation (https://hl7.org/fhir/R4/http.html#mime-type): FHIR JSON and FHIR XML.

``_format`` overrides Accept. Other formats are answered 406 (response) or 415 (request).
"""

from __future__ import annotations

from starlette.requests import Request

from fhir_server.errors import NotAcceptable, UnsupportedMediaType

FHIR_JSON = "application/fhir+json"
FHIR_XML = "application/fhir+xml"
JSON_TYPES = {FHIR_JSON, "application/json", "application/json+fhir", "text/json"}
XML_TYPES = {"application/fhir+xml", "application/xml", "application/xml+fhir", "text/xml"}
_FORMAT_ALIASES = {"json": FHIR_JSON, "xml": "application/fhir+xml", "html": "text/html", "ttl": "text/turtle"}
JSON_PATCH = "application/json-patch+json"


def _media_type(value: str) -> str:
    return value.split(";", 1)[0].strip().lower()


def response_media_type(request: Request) -> str:
    """The media type to answer in; 406 when the client accepts nothing we produce."""
    fmt = request.query_params.get("_format")
    if fmt:
        mt = _FORMAT_ALIASES.get(fmt.strip().lower(), _media_type(fmt.replace(" ", "+")))
        if mt in JSON_TYPES:
            return "application/json" if mt == "application/json" else FHIR_JSON
        if mt in XML_TYPES:
            return _xml_answer(mt)
        raise NotAcceptable(f"_format '{fmt}' is not supported; this server answers in {FHIR_JSON} or {FHIR_XML}")
    accept = request.headers.get("accept")
    if not accept:
        return FHIR_JSON
    ranges = [_media_type(part) for part in accept.split(",")]
    for mt in ranges:
        if mt in (FHIR_JSON, "application/json+fhir"):
            return FHIR_JSON
        if mt in ("application/json", "text/json"):
            return "application/json"
        if mt in XML_TYPES:
            return _xml_answer(mt)
        if mt in ("*/*", "application/*"):
            return FHIR_JSON
    raise NotAcceptable(f"None of the accepted media types ({accept}) is supported; use {FHIR_JSON} or {FHIR_XML}")


def _xml_answer(mt: str) -> str:
    return mt if mt in ("application/xml", "text/xml") else FHIR_XML


def is_xml(media_type: str) -> bool:
    return _media_type(media_type) in XML_TYPES


def error_media_type(request: Request) -> str:
    """The format of an error OperationOutcome: as negotiated, FHIR JSON when negotiation fails."""
    try:
        return response_media_type(request)
    except NotAcceptable:
        return FHIR_JSON


def check_request_media_type(request: Request, *, allow_patch: bool = False) -> str:
    """The body's media type must be FHIR JSON or XML (or JSON Patch on PATCH); otherwise 415."""
    ct = request.headers.get("content-type")
    if ct is None:
        return FHIR_JSON  # be liberal: a JSON body without Content-Type is read as FHIR JSON
    mt = _media_type(ct)
    if mt in JSON_TYPES:
        return mt
    if allow_patch and mt == JSON_PATCH:
        return mt
    if mt in XML_TYPES:
        return mt  # read_json converts FHIR XML to JSON
    raise UnsupportedMediaType(f"Content-Type '{ct}' is not supported; send {FHIR_JSON} or {FHIR_XML}")
