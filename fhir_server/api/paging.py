"""_count (https://hl7.org/fhir/R4/search.html#count)."""

from __future__ import annotations

from starlette.requests import Request

from fhir_server.errors import BadRequest


def page_size(request: Request) -> int:
    settings = request.app.state.settings
    raw = request.query_params.get("_count")
    if raw is None:
        return int(settings.default_page_size)
    if not raw.isdigit():
        raise BadRequest(f"_count must be a non-negative integer, not '{raw}'", expression="_count")
    return min(int(raw), int(settings.max_page_size))
