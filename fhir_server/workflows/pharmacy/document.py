"""The prescription as an ABDM-style document (R4 documents.html; NRCeS ABDM IG ``PrescriptionRecord``):
a ``document`` Bundle whose first entry is a Composition (type SNOMED CT 440545006 "Prescription
record") with one section listing the MedicationRequests, followed by the resources it references.
Built on demand from the stored items (README "ABDM Prescription Composition"); nothing is stored.
"""

from __future__ import annotations

import uuid
from typing import Any

from fhir_server.timeutil import format_instant, now
from fhir_server.workflows.pharmacy.codes import SNOMED
from fhir_server.workflows.pharmacy.lock import is_finalized

__all__ = ["prescription_record"]

PRESCRIPTION_RECORD = {"coding": [{"system": SNOMED, "code": "440545006", "display": "Prescription record"}],
                       "text": "Prescription record"}


def prescription_record(
    base: str, items: list[dict[str, Any]], related: list[dict[str, Any]], *, custodian: str | None = None,
) -> dict[str, Any]:
    """The document Bundle of ``items`` (one prescription) and the ``related`` resources they reference
    (Patient, Practitioner/PractitionerRole, Organization, Encounter, Medications)."""
    first = items[0]
    when = format_instant(now())
    gid = first.get("groupIdentifier") or {}
    composition: dict[str, Any] = {
        "resourceType": "Composition",
        "id": str(uuid.uuid4()),
        "status": "final" if all(is_finalized(i) for i in items) else "preliminary",
        "type": PRESCRIPTION_RECORD,
        "subject": first.get("subject"),
        "date": str(first.get("authoredOn") or when),
        "author": [first["requester"]] if first.get("requester") else [{"display": "unknown prescriber"}],
        "title": "Prescription record",
        "section": [{"title": "Prescription record", "code": PRESCRIPTION_RECORD,
                     "entry": [{"reference": f"MedicationRequest/{i['id']}"} for i in items]}],
    }
    if gid.get("value"):
        composition["identifier"] = {k: v for k, v in gid.items() if k in ("system", "value")}
    if first.get("encounter"):
        composition["encounter"] = first["encounter"]
    if custodian:
        composition["custodian"] = {"reference": custodian}
    entries = [{"fullUrl": f"urn:uuid:{composition['id']}", "resource": composition}]
    seen = set()
    for resource in [*related, *items]:
        key = (resource.get("resourceType"), resource.get("id"))
        if key in seen or not all(key):
            continue
        seen.add(key)
        entries.append({"fullUrl": f"{base}/{key[0]}/{key[1]}", "resource": resource})
    return {
        "resourceType": "Bundle",
        "identifier": {"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{uuid.uuid4()}"},
        "type": "document",
        "timestamp": when,
        "entry": entries,
    }
