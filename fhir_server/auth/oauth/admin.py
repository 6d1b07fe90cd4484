"""A small admin API for users and OAuth clients of the caller's tenant (role ``admin``).

    GET    /admin/users                     list
    POST   /admin/users                     {"username", "password", "role", "fhirUser"?, "facilities"?}
    PATCH  /admin/users/{username}          {"active"?: bool, "password"?: str}
    GET    /admin/clients                   list
    POST   /admin/clients                   {"client_id", "type", "redirect_uris"?, "scope"?, "jwks"?,
                                             "grant_types"?, "role"?, "fhirUser"?, "name"?}
    DELETE /admin/clients/{client_id}

Errors are OperationOutcomes like the FHIR API's. The same operations exist on the command line
(``fhir-server user …``, ``fhir-server client …``).
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from fhir_server.auth.oauth import clients, users
from fhir_server.auth.oauth.runtime import OAuthRuntime
from fhir_server.errors import BadRequest, Forbidden, ResourceNotFound, Unauthorized

__all__ = ["ROUTES"]


def _tenant(request: Request) -> str:
    principal = request.scope.get("state", {}).get("principal")
    if principal is None:
        if request.app.state.settings.dev_mode:
            return str(request.app.state.settings.default_tenant)
        raise Unauthorized("Authentication required")
    if principal.role != "admin":
        raise Forbidden("The admin API needs the admin role")
    return str(principal.tenant)


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadRequest("The body must be a JSON object") from None
    if not isinstance(body, dict):
        raise BadRequest("The body must be a JSON object")
    return body


def _rt(request: Request) -> OAuthRuntime:
    rt: OAuthRuntime = request.app.state.oauth
    return rt


async def _body_with(request: Request, required: tuple[str, ...], message: str) -> dict[str, Any]:
    """The JSON object body; BadRequest(``message``) unless each of ``required`` is a string in it."""
    body = await _body(request)
    if not all(isinstance(body.get(k), str) for k in required):
        raise BadRequest(message)
    return body


async def _call(request: Request, fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return await _rt(request).with_conn(lambda conn: fn(conn, *args, **kwargs))
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


async def list_users(request: Request) -> Response:
    found = await _call(request, users.list_users, _tenant(request))
    return JSONResponse([u.to_json() for u in found])


async def add_user(request: Request) -> Response:
    tenant = _tenant(request)
    body = await _body_with(request, ("username", "password", "role"), "username, password and role are required strings")
    user = await _call(request, users.add_user, tenant=tenant, username=body["username"], password=body["password"],
                       role=body["role"], fhir_user=body.get("fhirUser"), facilities=body.get("facilities"))
    return JSONResponse(user.to_json(), status_code=201)


async def change_user(request: Request) -> Response:
    tenant = _tenant(request)
    username = request.path_params["username"]
    body = await _body(request)
    found = True
    if isinstance(body.get("password"), str):
        found = await _call(request, users.set_password, tenant, username, body["password"])
    if isinstance(body.get("active"), bool):
        found = await _call(request, users.set_active, tenant, username, body["active"]) and found
    if not found:
        raise ResourceNotFound(f"No user {username!r}")
    user = await _call(request, users.get_user, tenant, username)
    if user is None:
        raise ResourceNotFound(f"No user {username!r}")
    return JSONResponse(user.to_json())


async def list_clients(request: Request) -> Response:
    found = await _call(request, clients.list_clients, _tenant(request))
    return JSONResponse([c.to_json() for c in found])


async def add_client(request: Request) -> Response:
    tenant = _tenant(request)
    b = await _body_with(request, ("client_id", "type"), "client_id and type are required strings")
    client = await _call(
        request, clients.add_client, tenant=tenant, client_id=b["client_id"], client_type=b["type"],
        name=str(b.get("name", "")), redirect_uris=b.get("redirect_uris"), scope=str(b.get("scope", "")),
        jwks=b.get("jwks"), grant_types=b.get("grant_types"), role=b.get("role"), fhir_user=b.get("fhirUser"),
    )
    return JSONResponse(client.to_json(), status_code=201)


async def remove_client(request: Request) -> Response:
    tenant = _tenant(request)
    if not await _call(request, clients.remove_client, tenant, request.path_params["client_id"]):
        raise ResourceNotFound("No such client")
    return Response(status_code=204)


ROUTES: list[tuple[str, Any, list[str]]] = [
    ("/admin/users", list_users, ["GET"]),
    ("/admin/users", add_user, ["POST"]),
    ("/admin/users/{username}", change_user, ["PATCH"]),
    ("/admin/clients", list_clients, ["GET"]),
    ("/admin/clients", add_client, ["POST"]),
    ("/admin/clients/{client_id}", remove_client, ["DELETE"]),
]
