"""The FHIR URL space (https://hl7.org/fhir/R4/http.html#summary) and its dispatch.

One Starlette route takes every ``/fhir/...`` request; the interaction is chosen from the
shape of the path and the method in a dict lookup. FastAPI's own router matched ~20 path
regexes and solved dependencies for each read (~90 µs of a ~310 µs read, profiled in
bench/README.md); this does the same in a few µs. Unknown shapes are 404, known shapes with
another method 405 (with ``Allow``), both as OperationOutcomes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from fhir_server.api import (  # noqa: F401  (operations register on import)
    auditevents,
    binary,
    history,
    metadata,
    operations,
    ops_appointments,  # $book, $confirm, $cancel, $reschedule, $check-in, $complete, $no-show, $queue
    ops_availability,  # Appointment/$find, Schedule/$generate-slots
    ops_everything,
    ops_export,  # $export, $export-status, $export-file
    ops_meta,
    ops_pharmacy,  # MedicationRequest/$finalize, $print, $prescription-record, $dispense
    ops_reindex,  # $reindex, $reindex-status, $reindex-cancel
    ops_roles,  # $roles, $role-grant, $role-revoke, $role-reset
    ops_validate,
    read,
    search,
    transaction,
    write,
)
from fhir_server.api.authorize import authorize
from fhir_server.errors import MethodNotAllowed, ResourceNotFound
from fhir_server.profiles import fuzzy as medication_fuzzy  # noqa: F401  (Medication/$fuzzy-search)
from fhir_server.profiles.catalog import SERVED_TYPES
from fhir_server.profiles.serving import ensure_seeded
from fhir_server.tenancy import admin as tenancy_admin  # noqa: F401  ($tenants)

Handler = Callable[..., Awaitable[Response]]


async def _system_search(request: Request) -> Response:
    return await search.search_system(request)


# shape → {method: handler}; a shape names the literal segments, "T" a type, "I" an id, "V" a version
_TABLE: dict[str, dict[str, Handler]] = {
    "": {"GET": _system_search, "POST": transaction.transaction_or_batch},
    "metadata": {"GET": metadata.metadata},
    "_history": {"GET": history.system_history},
    "T": {
        "GET": search.search_type,
        "POST": write.create,
        "PUT": write.conditional_update,
        "PATCH": write.conditional_patch,
        "DELETE": write.conditional_delete,
    },
    "T/_search": {"POST": search.search_post},
    "T/_history": {"GET": history.type_history},
    "T/I": {"GET": read.read, "PUT": write.update, "PATCH": write.patch, "DELETE": write.delete},
    "T/I/_history": {"GET": history.instance_history},
    "T/I/_history/V": {"GET": read.vread},
    "$": {m: operations.system_operation for m in ("GET", "POST", "DELETE")},
    "T/$": {m: operations.type_operation for m in ("GET", "POST")},
    "T/I/$": {m: operations.instance_operation for m in ("GET", "POST")},
}
_LITERALS = frozenset({"_search", "_history"})


def _shape(segments: list[str]) -> tuple[str, list[str]]:
    """``['Patient', '12', '_history']`` → ``('T/I/_history', ['Patient', '12'])``."""
    n = len(segments)
    if n == 0:
        return "", []
    if n == 1 and segments[0] in ("metadata", "_history"):
        return segments[0], []
    if n == 1 and segments[0].startswith("$"):
        return "$", [segments[0]]
    shape = ["T"]
    params = [segments[0]]
    for i, seg in enumerate(segments[1:], start=1):
        if seg.startswith("$") and i == len(segments) - 1 and i <= 2:
            shape.append("$")  # an operation (operations.html): [type]/$op, [type]/[id]/$op
            params.append(seg)
        elif seg in _LITERALS:
            shape.append(seg)
        elif i == 1:
            shape.append("I")
            params.append(seg)
        elif i == 3 and shape[-1] == "_history":
            shape.append("V")
            params.append(seg)
        else:
            return "?", []
    return "/".join(shape), params


def shape_of(path: str) -> tuple[str, list[str]]:
    """The shape and parameters of a ``/fhir/...`` path."""
    rest = path[len("/fhir") :].strip("/")
    return _shape(rest.split("/") if rest else [])


async def dispatch(request: Request) -> Response:
    path: str = request.scope["path"]
    shape, params = shape_of(path)
    methods = _TABLE.get(shape)
    if methods is None:
        raise ResourceNotFound(f"No FHIR endpoint at {path}")
    method = request.method if request.method != "HEAD" else "GET"
    handler = methods.get(method)
    if params and params[0] == "Binary":  # raw content in and out (http.html#binary)
        handler = binary.HANDLERS.get((shape, method), handler)
    elif params and params[0] == "AuditEvent":  # served from the audit trail, read-only (api/auditevents.py)
        handler = auditevents.handler(shape, method, params) or handler
    if handler is None:
        raise MethodNotAllowed(
            f"{request.method} is not allowed on {path}", headers={"Allow": ", ".join(sorted(methods))}
        )
    await authorize(request, shape, params, method)  # role ∩ SMART scopes (api/authorize.py): 403 if not
    if params and params[0] in SERVED_TYPES:  # packaged project definitions, seeded on first use (fhir_server/profiles)
        await ensure_seeded(request, params[0])
    return await handler(*params, request)


ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]


def install(app: Any) -> None:
    app.add_route("/fhir", dispatch, methods=ALL_METHODS)
    app.add_route("/fhir/{path:path}", dispatch, methods=ALL_METHODS)
