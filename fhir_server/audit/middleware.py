"""Records one audit row per FHIR request that did not already record its own (successful writes do)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import orjson

from fhir_server.api.routes import shape_of
from fhir_server.audit import switch
from fhir_server.audit.actor import actor_from_scope
from fhir_server.audit.patient import patient_from_query, patient_of_resource
from fhir_server.audit.rows import TYPE_USER_AUTHENTICATION, event_row

# (path shape, method) -> (AuditEvent.action, interaction)
_INTERACTIONS: dict[tuple[str, str], tuple[str, str]] = {
    ("T/I", "GET"): ("R", "read"),
    ("T/I/_history/V", "GET"): ("R", "vread"),
    ("T", "GET"): ("E", "search-type"),
    ("T/_search", "POST"): ("E", "search-type"),
    ("", "GET"): ("E", "search-system"),
    ("T/_history", "GET"): ("E", "history-type"),
    ("T/I/_history", "GET"): ("E", "history-instance"),
    ("_history", "GET"): ("E", "history-system"),
    ("T", "POST"): ("C", "create"),
    ("T/I", "PUT"): ("U", "update"),
    ("T", "PUT"): ("U", "update"),
    ("T/I", "PATCH"): ("U", "patch"),
    ("T", "PATCH"): ("U", "patch"),
    ("T/I", "DELETE"): ("D", "delete"),
    ("T", "DELETE"): ("D", "delete"),
    ("", "POST"): ("E", "transaction"),
}
for _shape in ("$", "T/$", "T/I/$"):
    for _method in ("GET", "POST", "DELETE"):
        _INTERACTIONS[(_shape, _method)] = ("E", "operation")
_PUBLIC = frozenset({"/fhir/metadata"})
# the OAuth endpoints (fhir_server/auth/oauth): AuditEvent type 110114 User Authentication.
# Their handlers may name who it was (they know the user / client; this middleware does not read
# bodies): state["audit_agent"], state["audit_client_id"], state["audit_fhir_user"], and
# state["audit_status"] when the HTTP status is not the outcome (a login page re-shown with 200).
_AUTH_EVENTS = {
    ("/auth/login", "POST"): ("E", "login"),
    ("/auth/token", "POST"): ("E", "token"),
    ("/auth/revoke", "POST"): ("E", "revoke"),
    ("/auth/introspect", "POST"): ("E", "introspect"),
}


class AuditTrail:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path: str = scope.get("path", "")
        if scope["type"] != "http" or path in _PUBLIC or not (
            path.startswith("/fhir") or (path, scope["method"]) in _AUTH_EVENTS
        ):
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_wrapper(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            state = scope.get("state", {})
            if not state.get("audited"):
                _record(scope, state, status)


def _record(scope: dict[str, Any], state: dict[str, Any], status: int) -> None:
    app = scope.get("app")
    sink = getattr(getattr(app, "state", None), "audit_sink", None)
    if sink is None or not switch.enabled():
        return
    auth_event = _AUTH_EVENTS.get((scope["path"], scope["method"]))
    if auth_event is not None:
        _record_auth(sink, app, scope, state, status, *auth_event)
        return
    method = "GET" if scope["method"] == "HEAD" else scope["method"]
    shape, params = shape_of(scope["path"])
    action, interaction = _INTERACTIONS.get((shape, method), ("E", "unknown"))
    if shape.endswith("$"):
        params = params[:-1]  # the operation name is in the path; type and id are what precede it
    resource_type = params[0] if params else None
    resource_id = params[1] if len(params) > 1 else None
    version = int(params[2]) if len(params) > 2 and params[2].isdigit() else None
    sink.add(event_row(
        state.get("tenant") or app.state.settings.default_tenant,
        datetime.now(UTC),
        actor_from_scope(scope, status),
        action=action, interaction=interaction, status=status,
        resource_type=resource_type, resource_id=resource_id, version_id=version,
        patient=_patient(scope, state, shape, resource_type, resource_id, status),
    ))


def _record_auth(
    sink: Any, app: Any, scope: dict[str, Any], state: dict[str, Any], status: int, action: str, interaction: str
) -> None:
    actor = actor_from_scope(scope, status)
    if state.get("audit_agent") or state.get("audit_client_id"):
        actor = replace(
            actor, agent=str(state.get("audit_agent") or state.get("audit_client_id")),
            client_id=state.get("audit_client_id") or actor.client_id,
            fhir_user=state.get("audit_fhir_user") or actor.fhir_user,
        )
    sink.add(event_row(
        state.get("tenant") or app.state.settings.default_tenant, datetime.now(UTC), actor,
        action=action, interaction=interaction, status=int(state.get("audit_status") or status),
        type=TYPE_USER_AUTHENTICATION,
    ))


def _patient(
    scope: dict[str, Any], state: dict[str, Any], shape: str, resource_type: str | None,
    resource_id: str | None, status: int,
) -> str | None:
    """The patient whose data was touched: the Patient itself, the resource read (the read handler
    leaves it in ``state["audit_version"]``), or a search's ``patient``/``subject`` criterion."""
    if resource_type == "Patient" and resource_id:
        return resource_id
    version = state.get("audit_version")
    if version is not None and status < 400 and version.content:
        try:
            return patient_of_resource(orjson.loads(version.content))
        except orjson.JSONDecodeError:
            return None
    if shape in ("T", "", "T/_search"):
        return patient_from_query(resource_type, scope.get("query_string", b""))
    return None
