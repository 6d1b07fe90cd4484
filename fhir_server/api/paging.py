"""_count (https://hl7.org/fhir/R4/search.html#count): a non-negative integer, capped by the server."""

from __future__ import annotations

from starlette.requests import Request

from fhir_server.errors import BadRequest


def parse_count(request: Request, raw: str | None) -> int | None:
    """The page size asked for, capped at ``max_page_size``; None when ``_count`` is absent."""
    if raw is None:
        return None
    if not raw.isdigit():
        raise BadRequest(f"_count must be a non-negative integer, not '{raw}'", expression="_count")
    return min(int(raw), int(request.app.state.settings.max_page_size))


def page_size(request: Request) -> int:
    """``_count`` of the query string, or the default page size."""
    count = parse_count(request, request.query_params.get("_count"))
    return int(request.app.state.settings.default_page_size) if count is None else count
