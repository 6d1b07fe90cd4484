"""_summary and _elements (https://hl7.org/fhir/R4/search.html#summary, #elements)."""

from __future__ import annotations

from typing import Any

from fhir_server.definitions.elements import top_level_elements
from fhir_server.errors import BadRequest

SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"}
SUMMARY_MODES = frozenset({"true", "false", "text", "data", "count"})
_ALWAYS = ("resourceType", "id", "meta")


def _element_of(resource_type: str, key: str) -> str | None:
    """The element a JSON key belongs to: ``valueQuantity`` → ``value``, ``_birthDate`` → ``birthDate``."""
    key = key.removeprefix("_")
    elements = top_level_elements().get(resource_type, {})
    if key in elements:
        return key
    for name, (_, _, choice) in elements.items():
        if choice and key.startswith(name) and key[len(name) : len(name) + 1].isupper():
            return name
    return None


def _mark_subsetted(out: dict[str, Any]) -> None:
    meta = dict(out.get("meta") or {})
    tags = [t for t in meta.get("tag", []) if t.get("code") != "SUBSETTED"]
    meta["tag"] = tags + [SUBSETTED]
    out["meta"] = meta


def summarize(resource: dict[str, Any], mode: str) -> dict[str, Any]:
    if mode not in SUMMARY_MODES:
        raise BadRequest(f"_summary must be one of {sorted(SUMMARY_MODES)}", expression="_summary")
    if mode == "false":
        return resource
    rtype = resource.get("resourceType", "")
    elements = top_level_elements().get(rtype, {})
    out: dict[str, Any] = {}
    for key, value in resource.items():
        name = _element_of(rtype, key)
        if key in _ALWAYS:
            keep = True
        elif mode == "data":
            keep = name != "text"
        elif mode == "text":
            keep = name == "text" or (name is not None and elements[name][1])
        else:  # true / count
            keep = name is not None and (elements[name][0] or elements[name][1])
        if keep:
            out[key] = value
    _mark_subsetted(out)
    return out


def select_elements(resource: dict[str, Any], elements_param: str) -> dict[str, Any]:
    wanted = {e.strip() for e in elements_param.split(",") if e.strip()}
    rtype = resource.get("resourceType", "")
    # _elements may be written with or without the type prefix (Patient.name or name)
    wanted = {w.split(".", 1)[1] if w.startswith(rtype + ".") else w for w in wanted}
    mandatory = {n for n, (_, m, _) in top_level_elements().get(rtype, {}).items() if m}
    out: dict[str, Any] = {}
    for key, value in resource.items():
        name = _element_of(rtype, key)
        if key in _ALWAYS or (name is not None and (name in wanted or name in mandatory)):
            out[key] = value
    _mark_subsetted(out)
    return out
