"""Extended operations (https://hl7.org/fhir/R4/operations.html): ``$name`` at system, type and
instance level, and the registry every operation module adds itself to.

An operation handler gets an ``OperationCall``: where it was invoked (type, id), and its input
parameters, read from the query string (GET, or POST form) and/or a ``Parameters`` body (POST),
as operations.html#request says. Handlers return a Starlette ``Response``.

Register with::

    @operation("everything", levels=("type", "instance"), types=("Patient",), methods=("GET", "POST"))
    async def everything(call: OperationCall) -> Response: ...

Operation modules are imported by ``fhir_server.api.routes`` so that their registrations run.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import Response

from fhir_server.api.body import read_json
from fhir_server.api.deps import checked_type
from fhir_server.errors import BadRequest, MethodNotAllowed, ResourceNotFound

Level = str  # "system" | "type" | "instance"


@dataclass(slots=True)
class OperationCall:
    request: Request
    name: str
    level: Level
    resource_type: str | None
    resource_id: str | None
    # input parameters in order: (name, value); a value is a str (query) or a Parameters.parameter
    # element (dict) for values given in a body
    params: list[tuple[str, Any]] = field(default_factory=list)
    body: Any = None  # the request body as parsed JSON (a Parameters resource, or a resource)

    def first(self, name: str) -> Any:
        return next((v for k, v in self.params if k == name), None)

    def all(self, name: str) -> list[Any]:
        return [v for k, v in self.params if k == name]

    def text(self, name: str) -> str | None:
        """A primitive parameter as text, from a query string or a ``value[x]`` in the body."""
        value = self.first(name)
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, dict):
            for key, v in value.items():
                if key.startswith("value") and not isinstance(v, dict | list):
                    return str(v).lower() if isinstance(v, bool) else str(v)
        raise BadRequest(f"Parameter '{name}' must be a primitive value", expression=f"Parameters.parameter.where(name='{name}')")

    def texts(self, name: str) -> list[str]:
        out = []
        for value in self.all(name):
            if isinstance(value, str):
                out.append(value)
            elif isinstance(value, dict):
                text = next((str(v) for k, v in value.items() if k.startswith("value") and not isinstance(v, dict | list)), None)
                if text is not None:
                    out.append(text)
        return out

    def resource(self, name: str) -> dict[str, Any] | None:
        """A parameter whose value is a resource (``Parameters.parameter.resource``)."""
        value = self.first(name)
        if isinstance(value, dict) and isinstance(value.get("resource"), dict):
            return value["resource"]
        return None


Handler = Callable[[OperationCall], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class Operation:
    name: str
    handler: Handler
    levels: tuple[Level, ...]
    types: tuple[str, ...] | None  # None: every type
    methods: tuple[str, ...]
    affects_state: bool


    def applies(self, level: Level, resource_type: str | None) -> bool:
        if level not in self.levels:
            return False
        return level == "system" or self.types is None or resource_type in self.types


# several operations may share a name on different types (Appointment/$check-in, Encounter/$check-in
# from other modules): one list per name; two registrations that overlap fail at import
_REGISTRY: dict[str, list[Operation]] = {}


def operation(
    name: str,
    *,
    levels: tuple[Level, ...],
    types: tuple[str, ...] | None = None,
    methods: tuple[str, ...] = ("GET", "POST"),
    affects_state: bool = False,
) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        new = Operation(name, handler, levels, types, methods, affects_state)
        for old in _REGISTRY.get(name, ()):
            shared = set(old.levels) & set(levels)
            if "system" in shared or (shared and (old.types is None or types is None or set(old.types) & set(types))):
                raise RuntimeError(f"${name} is registered twice for the same level and type "
                                   f"({old.handler.__module__} and {handler.__module__})")
        _REGISTRY.setdefault(name, []).append(new)
        return handler

    return register


def registered() -> list[Operation]:
    """Every registered operation (one name may appear several times, for different types)."""
    return [op for ops in _REGISTRY.values() for op in ops]


def find(name: str, level: Level, resource_type: str | None) -> Operation | None:
    """The operation ``name`` at ``level`` on ``resource_type`` (None: the system level)."""
    return next((op for op in _REGISTRY.get(name, ()) if op.applies(level, resource_type)), None)


async def _params(request: Request) -> tuple[list[tuple[str, Any]], Any]:
    params: list[tuple[str, Any]] = list(parse_qsl(request.url.query, keep_blank_values=True))
    body: Any = None
    if request.method == "POST":
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("application/x-www-form-urlencoded"):
            raw = (await request.body()).decode()
            params += parse_qsl(raw, keep_blank_values=True)
        elif request.headers.get("content-length", "") not in ("", "0") or "transfer-encoding" in request.headers:
            body = await read_json(request)
            if isinstance(body, dict) and body.get("resourceType") == "Parameters":
                for i, p in enumerate(body.get("parameter") or []):
                    if not isinstance(p, dict) or not isinstance(p.get("name"), str):
                        raise BadRequest("A Parameters.parameter needs a name", expression=f"Parameters.parameter[{i}]")
                    params.append((p["name"], p))
    return params, body


async def invoke(request: Request, name: str, level: Level, resource_type: str | None, resource_id: str | None) -> Response:
    where = f"{resource_type or ''}{'/' + resource_id if resource_id else ''}/${name}".lstrip("/")
    if resource_type is not None:
        checked_type(resource_type)
    op = find(name, level, resource_type)
    if op is None:
        raise ResourceNotFound(f"The operation ${name} is not known at {where}")
    method = request.method if request.method != "HEAD" else "GET"
    if method not in op.methods:
        raise MethodNotAllowed(f"${name} is invoked with {' or '.join(op.methods)}", headers={"Allow": ", ".join(op.methods)})
    params, body = await _params(request)
    call = OperationCall(request, name, level, resource_type, resource_id, params, body)
    return await op.handler(call)


async def system_operation(op: str, request: Request) -> Response:
    return await invoke(request, op[1:], "system", None, None)


async def type_operation(resource_type: str, op: str, request: Request) -> Response:
    return await invoke(request, op[1:], "type", resource_type, None)


async def instance_operation(resource_type: str, resource_id: str, op: str, request: Request) -> Response:
    return await invoke(request, op[1:], "instance", resource_type, resource_id)
