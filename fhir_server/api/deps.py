"""What every handler needs from the request: the tenant-bound service, a checked resource type."""

from __future__ import annotations

from starlette.requests import Request

from fhir_server.audit.actor import Actor, actor_from_scope
from fhir_server.auth.visibility import Access
from fhir_server.definitions.resource_types import RESOURCE_TYPES
from fhir_server.errors import Forbidden, ResourceNotFound
from fhir_server.services.resources import BoundDatabase, ResourceService
from fhir_server.storage.db import Database


def tenant_of(request: Request) -> str:
    """The tenant of the request: from the URL (``/fhir/{tenant}/…``, set by
    ``fhir_server.tenancy.middleware``), else the default tenant. The token must be for it."""
    state = request.scope.get("state", {})
    tenant: str = state.get("tenant") or request.app.state.settings.default_tenant
    principal = state.get("principal")
    if principal is not None and principal.tenant != tenant:
        raise Forbidden("The token was issued for another tenant")
    return tenant


def access_of(request: Request) -> Access:
    """What the caller may see inside its tenant (facilities, SMART patient context)."""
    return Access.of(request.scope.get("state", {}).get("principal"))


def actor_of(request: Request) -> Actor:
    """Who acts: the token's subject, with its FHIR identity (``Principal.fhir_user``), client and
    role, as the audit trail records them (``audit.actor.actor_from_scope``)."""
    return actor_from_scope(request.scope)


def database(request: Request) -> Database | BoundDatabase:
    """The pool, or the one connection a bundle entry runs on (``state["db"]``, set by api.transaction)."""
    bound: BoundDatabase | None = request.scope.get("state", {}).get("db")
    return bound if bound is not None else request.app.state.db


def service(request: Request) -> ResourceService:
    return ResourceService(database(request), tenant_of(request), actor_of(request), access_of(request))


def checked_type(resource_type: str) -> str:
    if resource_type not in RESOURCE_TYPES:
        raise ResourceNotFound(f"'{resource_type}' is not a FHIR R4 resource type", expression="type")
    return resource_type
