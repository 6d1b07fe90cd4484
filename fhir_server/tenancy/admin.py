"""``[base]/$tenants``: the tenant registry over the API (README "Tenants and facilities").

* ``GET [base]/$tenants`` → ``Parameters`` with one ``tenant`` parameter per tenant (parts ``id``,
  ``name``, ``status``, ``created``).
* ``POST [base]/$tenants`` with ``id`` and ``name`` (a ``Parameters`` body, or query / form
  parameters) → ``201`` with the new tenant; 400 for a bad id, 409 if it exists.

Only the ``admin`` role of the default tenant may call it (on the default tenant's base, since a
token must match the URL's tenant); anyone else gets 403. In development mode (no tokens) it is
open on the default tenant's base.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from fhir_server.api.deps import database
from fhir_server.api.operations import OperationCall, operation
from fhir_server.api.responses import base_url, fhir_response
from fhir_server.errors import BadRequest, Forbidden
from fhir_server.tenancy.store import Tenant, create_tenant, list_tenants


def _check_admin(call: OperationCall) -> None:
    request = call.request
    state = request.scope.get("state", {})
    default = request.app.state.settings.default_tenant
    principal = state.get("principal")
    if state.get("tenant", default) != default:
        raise Forbidden("Tenants are administered on the default tenant's base URL")
    if principal is None:
        if request.app.state.settings.dev_mode:
            return
        raise Forbidden("Tenant administration needs the admin role of the default tenant")
    if principal.tenant != default or principal.role != "admin":
        raise Forbidden("Tenant administration needs the admin role of the default tenant")


def _tenant_parameter(tenant: Tenant) -> dict[str, Any]:
    return {
        "name": "tenant",
        "part": [
            {"name": "id", "valueId": tenant.id},
            {"name": "name", "valueString": tenant.name},
            {"name": "status", "valueCode": tenant.status},
            {"name": "created", "valueInstant": tenant.created_at.isoformat()},
        ],
    }


@operation("tenants", levels=("system",), methods=("GET", "POST"), affects_state=True)
async def tenants_op(call: OperationCall) -> Response:
    _check_admin(call)
    request = call.request
    if request.method == "POST":
        tenant_id, name = call.text("id"), call.text("name")
        if not tenant_id or not name:
            raise BadRequest("$tenants (POST) needs the parameters 'id' and 'name'", expression="Parameters.parameter")
        async with database(request).connection() as conn:
            tenant = await create_tenant(conn, tenant_id, name)
        body = {"resourceType": "Parameters", "parameter": [_tenant_parameter(tenant)]}
        # the new tenant's FHIR base, beside this (default tenant's) one
        segment = request.scope.get("state", {}).get("tenant_segment")
        base = base_url(request).removesuffix(f"/{segment}") if segment else base_url(request)
        return fhir_response(request, body, 201, {"Location": f"{base}/{tenant.id}"})
    async with database(request).connection() as conn:
        tenants = await list_tenants(conn)
    return fhir_response(request, {"resourceType": "Parameters", "parameter": [_tenant_parameter(t) for t in tenants]})
