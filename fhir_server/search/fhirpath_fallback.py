"""Evaluate a SearchParameter expression with the ``fhirpathpy`` library (compiled once).

Same contract as ``fhirpath_compiler.compile_expression``: ``extract(resource) -> [(value, type)]``.
Types come from fhirpathpy's R4 model (``returnRawData`` keeps its typed nodes); where fhirpathpy
loses them (after ``where()``, ``as``) they are inferred from the value's shape. ``resolve()``,
which fhirpathpy lacks, is supplied as a function that returns a stub ``{"resourceType": X}`` for
the reference's type, enough for the ``where(resolve() is X)`` idiom of SearchParameters.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import fhirpathpy
from fhirpathpy.engine.nodes import ResourceNode
from fhirpathpy.models import models

from fhir_server.search.fhirpath_model import get_model
from fhir_server.search.references import reference_type

Item = tuple[Any, str]

_DATE_RE = re.compile(r"^\d{4}(-\d{2}(-\d{2}(T[\d:.]+(Z|[+-]\d{2}:\d{2})?)?)?)?$")
_SHAPES: list[tuple[frozenset[str], str]] = [
    (frozenset({"coding"}), "CodeableConcept"),
    (frozenset({"family", "given", "prefix", "suffix"}), "HumanName"),
    (frozenset({"line", "city", "district", "state", "postalCode", "country"}), "Address"),
    (frozenset({"reference", "identifier", "display"}), "Reference"),
    (frozenset({"start", "end"}), "Period"),
    (frozenset({"event", "repeat"}), "Timing"),
    (frozenset({"low", "high"}), "Range"),
    (frozenset({"currency"}), "Money"),
    (frozenset({"code", "display", "version", "userSelected"}), "Coding"),
    (frozenset({"text"}), "CodeableConcept"),
]
_CONTACT_SYSTEMS = frozenset({"phone", "fax", "email", "pager", "url", "sms", "other"})
_SYSTEM = {
    "System.String": "string",
    "System.Boolean": "boolean",
    "System.Integer": "integer",
    "System.Decimal": "decimal",
}


def _resolve(inputs: list[Any]) -> list[Any]:
    out = []
    for data in inputs:
        rtype = reference_type(data)
        if rtype:
            out.append(ResourceNode.create_node({"resourceType": rtype}))
    return out


# fhirpathpy applies FHIRPath's "singleton on the left of 'as'" rule strictly, and the core
# expressions break it (``(X.useContext.value as Quantity)`` with several useContexts): evaluate
# ``as`` as the collection-tolerant ``ofType``, which is what the expressions mean.
_AS_OPERATOR_RE = re.compile(r"(?P<lhs>[A-Za-z_][A-Za-z0-9_.]*)\s+as\s+(?P<type>[A-Za-z_][A-Za-z0-9_]*)")
_AS_FUNCTION_RE = re.compile(r"\.as\(")


def lenient(expression: str) -> str:
    expression = _AS_FUNCTION_RE.sub(".ofType(", expression)
    return _AS_OPERATOR_RE.sub(lambda m: f"{m['lhs']}.ofType({m['type']})", expression)


_OPTIONS = {"userInvocationTable": {"resolve": {"fn": _resolve, "arity": {0: []}}}, "returnRawData": True}


def _shape_type(data: Any) -> str:
    """The FHIR type a value most likely has, for values fhirpathpy returns untyped."""
    if isinstance(data, bool):
        return "boolean"
    if isinstance(data, str):
        return "dateTime" if _DATE_RE.match(data) else "string"
    if isinstance(data, int):
        return "integer"
    if isinstance(data, (float, Decimal)):
        return "decimal"
    if not isinstance(data, dict):
        return type(data).__name__
    keys = data.keys()
    value = data.get("value")
    if isinstance(value, (int, float, Decimal)) and not isinstance(value, bool):
        return "Money" if "currency" in keys else "Quantity"
    for markers, name in _SHAPES:
        if keys & markers:
            return name
    if isinstance(value, str):
        return "ContactPoint" if data.get("system") in _CONTACT_SYSTEMS else "Identifier"
    return "Element"


def _item(node: Any) -> Item | None:
    if isinstance(node, ResourceNode):
        data, path = node.data, node.path or ""
        if data is None:
            return None
        if isinstance(data, dict) and "resourceType" in data:
            return data, data["resourceType"]
        if not path:
            return data, _shape_type(data)
        if "." in path and not path.startswith("System."):
            path = get_model().canonical(path)
        return data, _SYSTEM.get(path, path)
    return node, _shape_type(node)


def compile_expression(expression: str, resource_type: str) -> Callable[[dict], list[Item]]:
    fn = fhirpathpy.compile(lenient(expression), model=models["r4"], options=_OPTIONS)

    def extract(resource: dict) -> list[Item]:
        out = []
        for node in fn(resource, {}):
            item = _item(node)
            if item is not None:
                out.append(item)
        return out

    return extract
