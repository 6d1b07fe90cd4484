"""A prescription: the MedicationRequests of one encounter by one prescriber, sharing a
``groupIdentifier`` (the prescription number; R4 request.html#compound "groupIdentifier").

Finding the items of a prescription (the project SearchParameter ``group-identifier``), and small
readers of an item's parts that the checks, the printable form and dispensing share.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import urlencode

import orjson

from fhir_server.errors import FhirError
from fhir_server.services.conditional import find_matches
from fhir_server.services.resources import ResourceService
from fhir_server.storage import repository as repo
from fhir_server.storage.repository import StoredVersion
from fhir_server.workflows.references import ref_id

__all__ = [
    "Coding", "group_key", "items_of_group", "medication_terms", "quantity_value", "read_json", "ref_id", "referring", "same_unit",
]

MAX_ITEMS = 200

Coding = tuple[str | None, str | None]


def concept_terms(concepts: list[dict[str, Any]]) -> tuple[set[Coding], set[str]]:
    """The (system, code) pairs and the lower-cased texts/displays of some CodeableConcepts."""
    codings: set[Coding] = set()
    texts: set[str] = set()
    for cc in concepts:
        if cc.get("text"):
            texts.add(str(cc["text"]).strip().lower())
        for c in cc.get("coding") or []:
            if c.get("code"):
                codings.add((c.get("system"), c.get("code")))
            if c.get("display"):
                texts.add(str(c["display"]).strip().lower())
    return codings, texts


def group_key(item: dict[str, Any]) -> str | None:
    gid = item.get("groupIdentifier") or {}
    value = gid.get("value")
    if not value:
        return None
    return f"{gid['system']}|{value}" if gid.get("system") else str(value)


async def items_of_group(conn: Any, service: ResourceService, prescription: str) -> list[StoredVersion]:
    """The live MedicationRequests whose groupIdentifier matches the token ``[system|]value``."""
    system, bar, value = prescription.partition("|")
    if bar and system and value and service.access.unrestricted:  # one indexed lookup (idx_token)
        return await repo.match_token(conn, service.tenant, "MedicationRequest", "group-identifier", system, value, MAX_ITEMS)
    query = urlencode({"group-identifier": prescription})
    return await find_matches(conn, service.tenant, "MedicationRequest", query, limit=MAX_ITEMS, access=service.access)


async def referring(
    conn: Any, service: ResourceService, resource_type: str, param: str, target_type: str, target_id: str, limit: int,
) -> list[StoredVersion]:
    """Live ``resource_type`` resources whose reference search parameter ``param`` points at
    ``target_type/target_id`` (the index directly for an unrestricted caller; else the search, which
    applies the caller's visibility)."""
    if service.access.unrestricted:
        return await repo.referring(conn, service.tenant, resource_type, param, target_type, target_id, limit)
    query = urlencode({param: f"{target_type}/{target_id}"})
    return await find_matches(conn, service.tenant, resource_type, query, limit=limit, access=service.access)


async def medication_terms(conn: Any, service: ResourceService, item: dict[str, Any]) -> tuple[set[Coding], set[str], str]:
    """The codings and lower-cased texts naming an item's medication, and a display name.

    ``medicationCodeableConcept``, or the referenced Medication's ``code`` (and its ingredients'
    ``itemCodeableConcept``); a contained Medication (``#id``) is looked up in ``contained``."""
    concepts: list[dict[str, Any]] = []
    if isinstance(item.get("medicationCodeableConcept"), dict):
        concepts.append(item["medicationCodeableConcept"])
    ref = item.get("medicationReference")
    medication: dict[str, Any] | None = None
    if isinstance(ref, dict):
        target = ref.get("reference") or ""
        if target.startswith("#"):
            medication = next((c for c in item.get("contained") or [] if c.get("id") == target[1:]), None)
        else:
            mid = ref_id(ref, "Medication")
            if mid is not None:
                medication = await read_json(conn, service, "Medication", mid)
        if medication:
            if isinstance(medication.get("code"), dict):
                concepts.append(medication["code"])
            for ing in medication.get("ingredient") or []:
                if isinstance(ing.get("itemCodeableConcept"), dict):
                    concepts.append(ing["itemCodeableConcept"])
        if ref.get("display"):
            concepts.append({"text": ref["display"]})
    codings, texts = concept_terms(concepts)
    name = next((cc.get("text") for cc in concepts if cc.get("text")), None) or next(
        (c.get("display") or c.get("code") for cc in concepts for c in cc.get("coding") or []), None) or "medication"
    return codings, texts, str(name)


async def read_json(conn: Any, service: ResourceService, resource_type: str, resource_id: str | None) -> dict[str, Any] | None:
    """The current content of a resource the caller may see, or None (unknown, deleted, hidden)."""
    if not resource_id:
        return None
    try:
        stored = await service.read_in(conn, resource_type, resource_id)
    except FhirError:
        return None
    return orjson.loads(stored.content or "{}")


def quantity_value(quantity: Any) -> Decimal | None:
    if not isinstance(quantity, dict) or quantity.get("value") is None:
        return None
    try:
        return Decimal(str(quantity["value"]))
    except InvalidOperation:
        return None


def same_unit(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Two Quantities in the same unit: the same system|code when both are coded, else the same unit text."""
    if a.get("code") and b.get("code"):
        return (a.get("system"), a["code"]) == (b.get("system"), b["code"])
    return (a.get("unit") or a.get("code") or "").strip().lower() == (b.get("unit") or b.get("code") or "").strip().lower()
