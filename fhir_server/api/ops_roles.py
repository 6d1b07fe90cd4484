"""The tenant's role permissions, as this server's own system-level operations (README "Roles and
permissions"); the same as ``fhir-server role show|grant|revoke|reset``.

* ``GET [base]/$roles[?role=R]``: the effective permissions (shipped defaults + the tenant's
  overrides) of every role, or of one, as JSON (``application/json``).
* ``POST [base]/$role-grant`` / ``$role-revoke``: parameters ``role``, ``type`` (an R4 type or
  ``*``), ``interaction`` and/or ``operation`` (repeatable or comma-separated) → the role's
  effective permissions after the change. Takes effect on the next request in every process.
* ``POST [base]/$role-reset``: ``role`` [, ``type``] → back to the defaults.

Like every operation they are governed by the permission matrix: by default only ``admin``
(whose rule grants every operation) may call them.
"""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response

from fhir_server.api.deps import database, tenant_of
from fhir_server.api.operations import OperationCall, operation
from fhir_server.auth import role_overrides
from fhir_server.errors import BadRequest


def _requester(request: Request) -> str:
    principal = request.scope.get("state", {}).get("principal")
    return str(principal.subject) if principal is not None else "development-mode"


def _list(call: OperationCall, name: str) -> list[str]:
    return [x.strip() for v in call.texts(name) for x in v.split(",") if x.strip()]


def _required(call: OperationCall, name: str) -> str:
    value = call.text(name)
    if not value:
        raise BadRequest(f"The parameter '{name}' is required", expression=name)
    return value.strip()


async def _answer(request: Request, role: str | None) -> Response:
    async with database(request).connection() as conn:
        shown = await role_overrides.show(conn, tenant_of(request), role)
    return Response(orjson.dumps(shown), 200, media_type="application/json")


@operation("roles", levels=("system",), methods=("GET",))
async def roles(call: OperationCall) -> Response:
    return await _answer(call.request, call.text("role") or None)


async def _change(call: OperationCall, action: str) -> Response:
    request = call.request
    role = _required(call, "role")
    async with database(request).connection() as conn:
        await role_overrides.change(
            conn, tenant_of(request), action, role, _required(call, "type"),
            _list(call, "interaction"), _list(call, "operation"), _requester(request),
        )
    return await _answer(request, role)


@operation("role-grant", levels=("system",), methods=("POST",), affects_state=True)
async def role_grant(call: OperationCall) -> Response:
    return await _change(call, "grant")


@operation("role-revoke", levels=("system",), methods=("POST",), affects_state=True)
async def role_revoke(call: OperationCall) -> Response:
    return await _change(call, "revoke")


@operation("role-reset", levels=("system",), methods=("POST",), affects_state=True)
async def role_reset(call: OperationCall) -> Response:
    request = call.request
    role = _required(call, "role")
    async with database(request).connection() as conn:
        await role_overrides.reset(conn, tenant_of(request), role, call.text("type") or None)
    return await _answer(request, role)
