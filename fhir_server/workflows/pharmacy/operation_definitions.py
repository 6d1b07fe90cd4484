"""The OperationDefinitions of the pharmacy operations (R4 operationdefinition.html), as data.

``fhir_server.api.ops_pharmacy`` sets each handler's ``operation_definition`` to the canonical URL
here, so the CapabilityStatement names it (``fhir_server.capabilities``).
"""

from __future__ import annotations

from typing import Any

from fhir_server.workflows.pharmacy.codes import BASE

__all__ = ["DEFINITIONS", "url_of"]


def _p(name: str, use: str, min_: int, max_: str, type_: str | None, doc: str, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "use": use, "min": min_, "max": max_, "documentation": doc}
    if type_:
        out["type"] = type_
    out.update(extra)
    return out


def _definition(code: str, title: str, description: str, *, type_: bool, instance: bool, affects_state: bool,
                parameters: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "resourceType": "OperationDefinition",
        "id": f"MedicationRequest-{code}",
        "url": f"{BASE}/OperationDefinition/MedicationRequest-{code}",
        "version": "1.0.0",
        "name": "".join(w.capitalize() for w in code.split("-")),
        "title": title,
        "status": "active",
        "kind": "operation",
        "date": "2026-11-29",
        "publisher": "fhir-server project",
        "description": description,
        "affectsState": affects_state,
        "code": code,
        "resource": ["MedicationRequest"],
        "system": False,
        "type": type_,
        "instance": instance,
        "parameter": parameters,
    }


_PRESCRIPTION = _p("prescription", "in", 0, "1", "string",
                   "The prescription number: [system|]value of MedicationRequest.groupIdentifier. Required at type level.")

def _view(code: str, title: str, description: str, return_type: str, return_doc: str) -> dict[str, Any]:
    """A read-only rendering of a prescription, at type (with ``prescription``) or instance level."""
    return _definition(code, title, description, type_=True, instance=True, affects_state=False,
                       parameters=[_PRESCRIPTION, _p("return", "out", 1, "1", return_type, return_doc)])


DEFINITIONS: dict[str, dict[str, Any]] = {
    "finalize": _definition(
        "finalize", "Finalize a prescription",
        "Checks completeness (patient, encounter, prescriber with the right to prescribe, at least one item, each with "
        "medication, dose, frequency, duration and quantity) and allergies (refused on a match unless overridden; an override is recorded as a DetectedIssue), then moves every "
        "item draft -> active and locks it (meta.tag workflow|finalized), in one transaction. 422 with one issue per problem.",
        type_=True, instance=True, affects_state=True, parameters=[
            _PRESCRIPTION,
            _p("override-reason", "in", 0, "1", "string", "Finalize despite drug-allergy alerts; recorded as the DetectedIssue mitigation."),
            _p("return", "out", 1, "1", "Bundle", "A collection Bundle: the finalized items and the DetectedIssues written."),
        ]),
    "print": _view(
        "print", "Printable prescription", "The prescription as a printable HTML page (text/html).",
        "Binary", "The HTML page (returned as text/html, not wrapped)."),
    "prescription-record": _view(
        "prescription-record", "Prescription record document",
        "The prescription as an ABDM-style document Bundle: a Composition (SNOMED CT 440545006 Prescription record) "
        "listing the items, then the resources they reference.",
        "Bundle", "The document Bundle."),
    "dispense": _definition(
        "dispense", "Dispense against a prescription item",
        "Writes a MedicationDispense against a finalized item, tracked against dispenseRequest.quantity (no over-dispensing "
        "without override-reason); the item becomes completed when fully dispensed; one transaction.",
        type_=False, instance=True, affects_state=True, parameters=[
            _p("quantity", "in", 0, "1", "Quantity", "How much (the prescribed unit); a bare number is taken in that unit. Default: what is left."),
            _p("medication", "in", 0, "1", "Element", "A substitute medication (CodeableConcept or Reference(Medication)).",
               extension=[{"url": "http://hl7.org/fhir/StructureDefinition/operationdefinition-allowed-type", "valueUri": "CodeableConcept"},
                          {"url": "http://hl7.org/fhir/StructureDefinition/operationdefinition-allowed-type", "valueUri": "Reference"}]),
            _p("substitution-type", "in", 0, "1", "Coding", "v3-substanceAdminSubstitution (e.g. G generic, E equivalent); a code is accepted."),
            _p("substitution-reason", "in", 0, "1", "Coding", "v3-ActReason (e.g. FP formulary policy, OS out of stock); a code or text is accepted."),
            _p("override-reason", "in", 0, "1", "string", "Allows dispensing beyond the prescribed quantity; recorded on the dispense."),
            _p("location", "in", 0, "1", "Reference", "Where it is dispensed from (Location)."),
            _p("status", "in", 0, "1", "code", "completed (default), in-progress or preparation."),
            _p("dispense", "out", 1, "1", "MedicationDispense", "The dispense written."),
            _p("request", "out", 1, "1", "MedicationRequest", "The item after the dispense."),
            _p("dispensed", "out", 1, "1", "Quantity", "Total of the item's completed dispenses."),
            _p("remaining", "out", 1, "1", "Quantity", "What is left to dispense."),
        ]),
}


def url_of(code: str) -> str:
    return str(DEFINITIONS[code]["url"])
