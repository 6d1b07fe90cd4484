"""capabilities (https://hl7.org/fhir/R4/http.html#capabilities)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from fhir_server.api.responses import base_url, fhir_response
from fhir_server.capabilities import capability_statement
from fhir_server.timeutil import format_instant


async def metadata(request: Request) -> Response:
    state = request.app.state
    base = base_url(request)  # per tenant: /fhir/{tenant}/metadata names the tenant's base
    statements = getattr(state, "capability_statements", None)
    if statements is None:
        statements = state.capability_statements = {}
    cached = statements.get(base)
    if cached is None:
        if len(statements) > 1000:  # bases are few (one per tenant and host name); never unbounded
            statements.clear()
        cached = statements[base] = capability_statement(
            base_url=base, auth_required=not state.settings.dev_mode, date=format_instant(state.started_at)
        )
    mode = request.query_params.get("mode", "full")
    if mode not in ("full", "normative", "terminology"):
        from fhir_server.errors import BadRequest

        raise BadRequest("mode must be full, normative or terminology", expression="mode")
    return fhir_response(request, cached)
