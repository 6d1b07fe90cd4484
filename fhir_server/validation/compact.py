"""StructureDefinition -> compact element table (the packaged form the validator compiles).

Used both by ``tools/build_validation_defs.py`` (for the base R4 definitions) and at run time by
``Validator.add_structure_definition`` (for profiles), so the two never drift apart.

A compact definition is a small JSON object::

    {"url": ..., "name": ..., "type": "Patient", "kind": "resource", "derivation": "specialization",
     "abstract": false, "base": "http://.../DomainResource",
     "elements": [[relpath, min, max, types, targets, valueset, contentref], ...]}

* ``relpath``  path below the root, e.g. ``"contact.name"`` or ``"value[x]"``;
* ``max``      ``"*"`` or an int (``None``/``[]``: not stated, in a differential);
* ``types``    FHIR type codes (``"string"``, ``"Reference"``, ``"BackboneElement"``...);
* ``targets``  resource types a Reference may point at (``None``: any);
* ``valueset`` canonical of a *required* binding (version stripped), else ``None``;
* ``contentref`` relpath of the element whose definition is reused (``#Questionnaire.item``).

Only elements of the snapshot (or, lacking one, of the differential) are kept; slices
(``id`` containing ``:``) are dropped — slicing is not validated (see README).
"""

from __future__ import annotations

from typing import Any

FHIR_TYPE_EXT = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type"
SD_PREFIX = "http://hl7.org/fhir/StructureDefinition/"


def _type_code(t: dict[str, Any], base_path: str | None) -> str:
    code = t.get("code", "")
    if code.startswith("http://hl7.org/fhirpath/System."):
        for ext in t.get("extension", ()):
            if ext.get("url") == FHIR_TYPE_EXT:
                code = ext.get("valueUrl") or ext.get("valueUri") or code
                break
        else:
            code = code.rsplit(".", 1)[1].lower()
    # R4 quirk: the snapshots type Resource.id as System.String/string, resource.html says ``id``.
    if base_path == "Resource.id":
        code = "id"
    return code


def _targets(types: list[dict[str, Any]]) -> list[str] | None:
    out: list[str] = []
    for t in types:
        if t.get("code") != "Reference":
            continue
        profiles = t.get("targetProfile")
        if not profiles:
            return None
        for p in profiles:
            name = p.split("|")[0].rsplit("/", 1)[-1]
            if name in ("Resource", "DomainResource") or not p.startswith(SD_PREFIX):
                return None  # any resource, or a profile we cannot map to a type by name
            out.append(name)
    return sorted(set(out)) if out else None


def _max(value: Any) -> int | str | None:
    if value is None or value == "*":
        return value
    return int(value)


def compact_element(el: dict[str, Any], root: str) -> list[Any] | None:
    eid = el.get("id") or el.get("path", "")
    if ":" in eid:
        return None  # slice: not validated
    path = el["path"]
    if path == root:
        return None
    rel = path[len(root) + 1 :] if path.startswith(root + ".") else path
    types = el.get("type") or []
    base_path = (el.get("base") or {}).get("path")
    codes = [_type_code(t, base_path) for t in types]
    binding = el.get("binding") or {}
    vs = None
    if binding.get("strength") == "required" and binding.get("valueSet"):
        vs = binding["valueSet"].split("|")[0]
    cref = el.get("contentReference")
    if cref:
        cref = cref.split("#", 1)[1]
        cref = cref[len(root) + 1 :] if cref.startswith(root + ".") else cref
    mn = el.get("min")
    mx = el.get("max")
    return [rel, mn, _max(mx), codes, _targets(types), vs, cref]


def compact_structure_definition(sd: dict[str, Any], use_differential: bool = False) -> dict[str, Any]:
    """Compact one StructureDefinition. Elements from the snapshot unless asked for the differential."""
    root = sd.get("type") or sd.get("id")
    source = sd.get("differential" if use_differential else "snapshot") or {}
    elements = []
    for el in source.get("element", ()):
        c = compact_element(el, root)
        if c is not None:
            elements.append(c)
    return {
        "url": sd.get("url"),
        "name": sd.get("name") or sd.get("id"),
        "type": root,
        "kind": sd.get("kind"),
        "derivation": sd.get("derivation"),
        "abstract": bool(sd.get("abstract")),
        "base": sd.get("baseDefinition"),
        "elements": elements,
    }
