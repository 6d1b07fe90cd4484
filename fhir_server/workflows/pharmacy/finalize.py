"""``$finalize`` of a prescription (README "Finalize"): check completeness and allergies, then move
every item draft → active and lock it (the finalized tag, ``lock.py``), in ONE transaction.

Refused (422, one OperationOutcome issue per problem, all at once) when a check fails; a refusal
writes nothing. A drug-allergy match without ``override-reason`` refuses too (its issue names the
allergy and the item); with ``override-reason`` a DetectedIssue (final, the reason as its mitigation)
is written with the items, in the same transaction, so the overridden alert is on record.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from fhir_server.errors import Issue, UnprocessableEntity
from fhir_server.services.resources import IF_NONE_EXIST, BoundDatabase, ResourceService
from fhir_server.services.validate import check_resource
from fhir_server.storage.db import Database
from fhir_server.storage.repository import StoredVersion
from fhir_server.workflows.pharmacy.allergies import AllergyMatch, detected_issue, find_allergy_matches
from fhir_server.workflows.pharmacy.checks import check_items
from fhir_server.workflows.pharmacy.codes import CS_DETECTED_ISSUE_ID
from fhir_server.workflows.pharmacy.lock import finalized_tag, is_finalized, writing
from fhir_server.workflows.pharmacy.prescription import items_of_group, ref_id

__all__ = ["Finalized", "finalize"]


@dataclass(slots=True)
class Finalized:
    items: list[StoredVersion] = field(default_factory=list)
    detected_issues: list[StoredVersion] = field(default_factory=list)


def _medication_element(item: dict[str, Any]) -> str:
    return "MedicationRequest.medicationReference" if item.get("medicationReference") else "MedicationRequest.medicationCodeableConcept"


async def _record_issues(
    conn: Any, service: ResourceService, matches: list[AllergyMatch], patient_ref: str, override: str | None
) -> list[StoredVersion]:
    out = []
    author = service.actor.fhir_user if (service.actor.fhir_user or "").startswith(("Practitioner/", "PractitionerRole/")) else None
    for match in matches:
        issue = detected_issue(match, patient_ref, override=override, author=author)
        check_resource("DetectedIssue", issue, id_required=False)
        criteria = f"identifier={CS_DETECTED_ISSUE_ID}|{match.key}"
        existing = await service.matches_in(conn, IF_NONE_EXIST, "DetectedIssue", criteria)
        if existing and override:
            issue["id"] = existing[0].id
            out.append((await service.update_in(conn, "DetectedIssue", existing[0].id, issue, None)).version)
        elif existing:
            out.append(existing[0])
        else:
            out.append((await service.create_in(conn, "DetectedIssue", issue)).version)
    return out


async def finalize(
    db: Database | BoundDatabase, service: ResourceService, *, prescription: str | None = None, item_id: str | None = None,
    override: str | None = None,
) -> Finalized:
    """Finalize the items of group ``prescription`` (``[system|]value``), or the one item ``item_id``."""
    matches: list[AllergyMatch] = []
    patient_ref = ""
    async with db.transaction() as conn:
        svc = service.on(conn)
        # one finalize per prescription at a time
        await svc.lock_in(conn, "prescription-finalize", "MedicationRequest", prescription or f"_id={item_id}")
        if prescription is not None:
            stored = await items_of_group(conn, svc, prescription)
        else:
            assert item_id is not None
            stored = [await svc.read_in(conn, "MedicationRequest", item_id)]
        items = [orjson.loads(s.content or "{}") for s in stored]
        issues = await check_items(conn, svc, items, service.actor)
        patient_id = ref_id(items[0].get("subject"), "Patient") if items else None
        if patient_id is not None:
            patient_ref = f"Patient/{patient_id}"
            matches = await find_allergy_matches(conn, svc, patient_id, items)
        for m in matches if not override else []:
            issues.append(Issue(
                "error", "business-rule",
                f"MedicationRequest/{m.item['id']}: the patient is allergic to {m.allergy_name} "
                f"(AllergyIntolerance/{m.allergy_id}); finalize with an override-reason to prescribe it anyway",
                _medication_element(m.item),
            ))
        if not issues:
            done = Finalized()
            done.detected_issues = await _record_issues(conn, svc, matches, patient_ref, override)
            with writing("finalize"):
                for version, item in zip(stored, items, strict=True):
                    if is_finalized(item):
                        continue
                    meta = dict(item.get("meta") or {})
                    meta["tag"] = [*(meta.get("tag") or []), finalized_tag()]
                    item = {**item, "meta": meta, "status": "active"}
                    result = await svc.update_in(conn, "MedicationRequest", version.id, item, version.version_id, current=version)
                    done.items.append(result.version)
            return done
    raise UnprocessableEntity(f"The prescription cannot be finalized ({len(issues)} problem(s))", issues=issues)

