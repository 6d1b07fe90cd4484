"""The CapabilityStatement (https://hl7.org/fhir/R4/capabilitystatement.html), built from what runs.

Operations come from the operations framework (``fhir_server.api.operations.registered()``):
system-level ones under ``rest.operation``, type/instance-level ones under each of their resource
types' ``resource.operation``, each with the canonical URL of its OperationDefinition: a handler's
own ``operation_definition`` attribute if it sets one, else the official R4 definition for that
code and type (``Patient-everything``, ``Resource-validate``…, packaged by
``tools/build_compartments.py``), else a well-known one (``KNOWN_DEFINITIONS``), else this
server's ``[base]/OperationDefinition/[code]``.
"""

from __future__ import annotations

from typing import Any

from fhir_server import FHIR_VERSION, __version__
from fhir_server.definitions.resource_types import RESOURCE_TYPES

TYPE_INTERACTIONS = ("read", "vread", "update", "patch", "delete", "history-instance", "history-type", "create", "search-type")
UNSUPPORTED_SEARCH_TYPES = frozenset({"composite", "special"})
_BULK = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/"
# operations defined outside the core spec: (code, resource type or None for system) -> canonical
KNOWN_DEFINITIONS: dict[tuple[str, str | None], str] = {
    ("export", None): _BULK + "export",
    ("export", "Patient"): _BULK + "patient-export",
    ("export", "Group"): _BULK + "group-export",
}


def operation_definition_url(name: str, handler: Any, resource_type: str | None, base_url: str) -> str:
    from fhir_server.definitions.compartments import official_operation_url

    own = getattr(handler, "operation_definition", None)
    if isinstance(own, str):
        return own
    return (
        official_operation_url(name, resource_type)
        or KNOWN_DEFINITIONS.get((name, resource_type))
        or f"{base_url.rstrip('/')}/OperationDefinition/{name}"
    )


def _operations(base_url: str) -> tuple[list[dict[str, str]], dict[str, list[dict[str, str]]]]:
    """(system-level operations, resource type -> its type/instance-level operations)."""
    from fhir_server.api.operations import registered

    system: list[dict[str, str]] = []
    by_type: dict[str, list[dict[str, str]]] = {}
    for op in sorted(registered(), key=lambda o: o.name):
        name = op.name
        if "system" in op.levels:
            system.append({"name": name, "definition": operation_definition_url(name, op.handler, None, base_url)})
        if "type" in op.levels or "instance" in op.levels:
            for rtype in sorted(op.types if op.types is not None else RESOURCE_TYPES):
                by_type.setdefault(rtype, []).append(
                    {"name": name, "definition": operation_definition_url(name, op.handler, rtype, base_url)}
                )
    return system, by_type


def _search_params(resource_type: str) -> list[dict[str, Any]]:
    from fhir_server.search.registry import get_registry

    out = []
    for code, sp in sorted(get_registry().for_type(resource_type).items()):
        if sp.type in UNSUPPORTED_SEARCH_TYPES:
            continue
        entry = {"name": code, "type": sp.type}
        if getattr(sp, "url", None):
            entry["definition"] = sp.url
        out.append(entry)
    return out


def capability_statement(*, base_url: str, auth_required: bool, date: str) -> dict[str, Any]:
    resources = []
    system_ops, type_ops = _operations(base_url)
    for rtype in sorted(RESOURCE_TYPES):
        resources.append({
            "type": rtype,
            "profile": f"http://hl7.org/fhir/StructureDefinition/{rtype}",
            "interaction": [{"code": code} for code in TYPE_INTERACTIONS],
            "versioning": "versioned-update",
            "readHistory": True,
            "updateCreate": True,
            "conditionalCreate": True,
            "conditionalRead": "full-support",
            "conditionalUpdate": True,
            "conditionalDelete": "single",
            "searchParam": _search_params(rtype),
        })
        if rtype in type_ops:
            resources[-1]["operation"] = type_ops[rtype]
    rest: dict[str, Any] = {
        "mode": "server",
        "resource": resources,
        "interaction": [{"code": "history-system"}],
    }
    if system_ops:
        rest["operation"] = system_ops
    if auth_required:
        rest["security"] = {
            "cors": False,
            "service": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service", "code": "OAuth"}]}],
            "description": "Bearer tokens (JWT) required on every endpoint except /metadata.",
        }
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": date,
        "publisher": "fhir-server project",
        "kind": "instance",
        "software": {"name": "fhir-server", "version": __version__},
        "implementation": {"description": "FHIR R4 server on PostgreSQL", "url": base_url},
        "fhirVersion": FHIR_VERSION,
        "format": ["application/fhir+json", "json", "application/fhir+xml", "xml"],
        "patchFormat": ["application/json-patch+json"],
        "rest": [rest],
    }
