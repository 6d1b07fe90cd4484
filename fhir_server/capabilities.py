"""The CapabilityStatement (https://hl7.org/fhir/R4/capabilitystatement.html), built from what runs."""

from __future__ import annotations

from typing import Any

from fhir_server import FHIR_VERSION, __version__
from fhir_server.definitions.resource_types import RESOURCE_TYPES

TYPE_INTERACTIONS = ("read", "vread", "update", "patch", "delete", "history-instance", "history-type", "create", "search-type")
UNSUPPORTED_SEARCH_TYPES = frozenset({"composite", "special"})


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
    rest: dict[str, Any] = {
        "mode": "server",
        "resource": resources,
        "interaction": [{"code": "history-system"}],
    }
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
        "format": ["application/fhir+json", "json"],
        "patchFormat": ["application/json-patch+json"],
        "rest": [rest],
    }
