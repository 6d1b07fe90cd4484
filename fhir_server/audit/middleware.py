"""Records one audit row per FHIR request that did not already record its own (successful writes do)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fhir_server.api.routes import shape_of

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


class AuditTrail:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path: str = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith("/fhir") or path in _PUBLIC:
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
    if sink is None:
        return
    method = "GET" if scope["method"] == "HEAD" else scope["method"]
    shape, params = shape_of(scope["path"])
    action, interaction = _INTERACTIONS.get((shape, method), ("E", "unknown"))
    principal = state.get("principal")
    if principal is not None:
        agent = principal.subject
    else:
        agent = "anonymous" if status == 401 else "development-mode"
    if shape.endswith("$"):
        params = params[:-1]  # the operation name is in the path; type and id are what precede it
    version = int(params[2]) if len(params) > 2 and params[2].isdigit() else None
    sink.add((
        app.state.settings.default_tenant,
        datetime.now(UTC),
        action,
        interaction,
        "0" if status < 400 else ("4" if status < 500 else "8"),
        status,
        agent,
        state.get("request_id"),
        scope["method"],
        scope["path"],
        params[0] if params else None,
        params[1] if len(params) > 1 else None,
        version,
    ))
