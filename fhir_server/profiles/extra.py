"""Rules a StructureDefinition cannot state without FHIRPath invariants (which the validator does not
evaluate, validation/README.md): the homeopathic potency per scale (``potency.py``) and its
agreement with the structured scale/number and the mother-tincture flag. Keyed by extension url
(``EXTENSION_RULES``: ``fn(value, expression) -> issues``) and by profile url (``RESOURCE_RULES``:
``fn(resource, rules) -> issues``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fhir_server.errors import Issue

from .catalog import BASE
from .potency import BadPotency, parse_potency

SD = BASE + "StructureDefinition/"
POTENCY, SCALE, NUMBER, MOTHER = (SD + n for n in (
    "medication-potency", "medication-potency-scale", "medication-potency-value", "medication-mother-tincture",
))


def _potency(value: Any, where: str) -> list[Issue]:
    if type(value) is not str:
        return []
    try:
        parse_potency(value)
    except BadPotency as exc:
        return [Issue("error", "value", str(exc), where)]
    return []


def _potency_agrees(resource: dict[str, Any], rules: Any) -> list[Issue]:
    exts = [(i, e) for i, e in enumerate(resource.get("extension") or ()) if type(e) is dict]
    found = {e.get("url"): (i, e) for i, e in exts}
    if POTENCY not in found:
        return []
    try:
        scale, number = parse_potency(found[POTENCY][1].get("valueString"))
    except (BadPotency, TypeError):
        return []  # already reported
    rt = resource["resourceType"]
    out: list[Issue] = []
    written = found[POTENCY][1]["valueString"]
    if SCALE in found and found[SCALE][1].get("valueCode") != scale:
        i = found[SCALE][0]
        out.append(Issue("error", "value", f"potency scale '{found[SCALE][1].get('valueCode')}' does not agree with the potency '{written}' (scale {scale})", f"{rt}.extension[{i}].valueCode"))
    if NUMBER in found and found[NUMBER][1].get("valuePositiveInt") != number:
        i = found[NUMBER][0]
        out.append(Issue("error", "value", f"potency number {found[NUMBER][1].get('valuePositiveInt')} does not agree with the potency '{written}' ({number})", f"{rt}.extension[{i}].valuePositiveInt"))
    mother = found.get(MOTHER, (None, {}))[1].get("valueBoolean")
    if (mother is True) != (scale == "MT") and (mother is not None or scale == "MT"):
        i = found[MOTHER][0] if MOTHER in found else found[POTENCY][0]
        key = "valueBoolean" if MOTHER in found else "valueString"
        out.append(Issue("error", "value", f"a mother tincture has the potency MT (or Ø), and only a mother tincture: potency '{written}', mother tincture {mother}", f"{rt}.extension[{i}].{key}"))
    return out


EXTENSION_RULES: dict[str, Callable[[Any, str], list[Issue]]] = {POTENCY: _potency}
RESOURCE_RULES: dict[str, list[Callable[[dict[str, Any], Any], list[Issue]]]] = {
    SD + "medication-homeopathic": [_potency_agrees],
}
