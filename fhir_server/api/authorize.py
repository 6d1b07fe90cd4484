"""Authorization of a FHIR request: which interaction or operation a path is, and whether the
caller's role and scopes allow it (``fhir_server.auth.permissions``). A refusal is a 403
OperationOutcome naming what is missing (``doctor may not delete Patient``); the audit trail
records it like any answer.

Entry points: ``authorize`` (``routes.dispatch``, so every single request and every GET/operation
entry of a bundle), ``authorize_entry`` (each write entry of a transaction or batch, before
anything is written), ``permission_of`` (handlers that narrow results: ``_include``, ``$everything``,
``$export`` use ``readable_types``). Without a principal (development mode) everything is allowed.
"""

from __future__ import annotations

from starlette.requests import Request

from fhir_server.api.deps import tenant_of
from fhir_server.auth.permissions import Permission
from fhir_server.auth.role_overrides import PermissionStore
from fhir_server.auth.scopes import parse_scopes
from fhir_server.definitions.resource_types import RESOURCE_TYPES
from fhir_server.errors import Forbidden
from fhir_server.search.query_values import split_list

__all__ = ["authorize", "authorize_entry", "permission_of", "readable_types", "require_operation"]

_UNRESTRICTED = Permission("", None)

# (shape, method) → the interaction (fine vocabulary of permissions/scopes); None: not checked here
_INTERACTION: dict[tuple[str, str], str | None] = {
    ("", "GET"): "search-system",
    ("", "POST"): None,  # transaction/batch: each entry is checked
    ("metadata", "GET"): None,
    ("_history", "GET"): "history-system",
    ("T", "GET"): "search-type",
    ("T", "POST"): "create",
    ("T", "PUT"): "update",
    ("T", "PATCH"): "patch",
    ("T", "DELETE"): "delete",
    ("T/_search", "POST"): "search-type",
    ("T/_history", "GET"): "history-type",
    ("T/I", "GET"): "read",
    ("T/I", "PUT"): "update",
    ("T/I", "PATCH"): "patch",
    ("T/I", "DELETE"): "delete",
    ("T/I/_history", "GET"): "history-instance",
    ("T/I/_history/V", "GET"): "vread",
}


def _store(request: Request) -> PermissionStore:
    state = request.app.state
    store: PermissionStore | None = getattr(state, "permission_store", None)
    if store is None:
        store = state.permission_store = PermissionStore(state.settings.database_url)
    return store


async def permission_of(request: Request) -> Permission:
    """The request's ``Permission`` (computed once per request, kept in ``scope["state"]``)."""
    state = request.scope.setdefault("state", {})
    found: Permission | None = state.get("permission")
    if found is not None:
        return found
    principal = state.get("principal")
    if principal is None:
        perm = _UNRESTRICTED
    else:
        policy = await _store(request).policy(request.app.state.db, tenant_of(request), principal.role)
        perm = Permission(principal.role, policy, parse_scopes(principal.scope), principal.scope)
    state["permission"] = perm
    return perm


def readable_types(request: Request) -> frozenset[str] | None:
    """Types the caller may read (None: all). Only after ``authorize`` ran for this request."""
    perm: Permission | None = request.scope.get("state", {}).get("permission")
    return None if perm is None else perm.readable_types()


def narrow_types(request: Request, types: list[str], *, asked: bool) -> list[str]:
    """``types`` the caller may read: types it asked for by name must all be readable (403 naming
    the others); a default list (every type) is narrowed silently."""
    readable = readable_types(request)
    if readable is None:
        return types
    if asked:
        refused = [t for t in types if t not in readable]
        if refused:
            perm: Permission = request.scope["state"]["permission"]
            raise Forbidden("; ".join(perm.why_not("read", t) for t in refused), expression="_type")
    return [t for t in types if t in readable]


def _operation_read_only(name: str, level: str, resource_type: str | None) -> bool | None:
    from fhir_server.api.operations import find

    op = find(name, level, resource_type)  # type: ignore[arg-type]
    return None if op is None else not op.affects_state


def require_operation(perm: Permission, name: str, resource_type: str | None, *, read_only: bool) -> None:
    if not perm.may_operation(name, resource_type, read_only=read_only):
        raise Forbidden(perm.why_not_operation(name, resource_type, read_only=read_only))


def require(perm: Permission, interaction: str, resource_type: str | None) -> None:
    if not perm.may(interaction, resource_type):
        raise Forbidden(perm.why_not(interaction, resource_type))


def check(perm: Permission, shape: str, params: list[str], method: str, types: list[str]) -> None:
    """Raise ``Forbidden`` unless ``perm`` allows (shape, method); ``types``: a system search's ``_type``."""
    if perm.unrestricted:
        return
    if shape.endswith("$"):
        name = params[-1].lstrip("$")
        level = ("system", "type", "instance")[min(len(params), 3) - 1]
        rtype = params[0] if len(params) > 1 else None
        read_only = _operation_read_only(name, level, rtype) if rtype is None or rtype in RESOURCE_TYPES else None
        if read_only is None:
            return  # not an operation of this server: the handler answers 404
        require_operation(perm, name, rtype, read_only=read_only)
        return
    interaction = _INTERACTION.get((shape, method))
    if interaction is None or (params and params[0] not in RESOURCE_TYPES):
        return  # not checked here (transaction, metadata), or not a type: the handler answers 404
    if shape == "" and types:
        for t in types:
            if t in RESOURCE_TYPES:  # an unknown one is the handler's 400
                require(perm, interaction, t)
        return
    require(perm, interaction, params[0] if params else None)


async def authorize(request: Request, shape: str, params: list[str], method: str) -> None:
    """``routes.dispatch``: the request's interaction (or operation) must be allowed."""
    state = request.scope.get("state")
    if not state or state.get("principal") is None:
        return
    perm = await permission_of(request)
    types = split_list(request.query_params.getlist("_type")) if shape == "" and method == "GET" else []
    check(perm, shape, params, method, types)


async def authorize_entry(request: Request, method: str, path: str, query: str) -> None:
    """A transaction/batch entry (its method and URL relative to the base), as if it came alone."""
    from urllib.parse import parse_qsl

    from fhir_server.api.routes import shape_of

    state = request.scope.get("state")
    if not state or state.get("principal") is None:
        return
    perm = await permission_of(request)
    shape, params = shape_of("/fhir/" + path)
    types = split_list([v for k, v in parse_qsl(query) if k == "_type"]) if shape == "" and method == "GET" else []
    check(perm, shape, params, "GET" if method == "HEAD" else method, types)
