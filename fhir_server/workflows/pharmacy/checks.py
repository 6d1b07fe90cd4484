"""Completeness of a prescription before it is finalized (R4 medicationrequest.html, dosage.html):
subject, encounter, a prescriber with the right to prescribe, at least one item, and per item a
medication and per dosage instruction a dose, a frequency, a duration, and a quantity to dispense.

Every problem is one ``Issue`` naming the element at fault; all are reported at once.
"""

from __future__ import annotations

from typing import Any

import orjson

from fhir_server.audit.actor import Actor
from fhir_server.errors import Issue
from fhir_server.services.resources import ResourceService
from fhir_server.workflows.pharmacy.codes import EXT_AYUSH_TIMING, PRESCRIBER_CODES
from fhir_server.workflows.pharmacy.prescription import quantity_value, read_json, ref_id, referring

__all__ = ["check_items", "prescribing_right"]


def _issue(item_id: str, expression: str, message: str, code: str = "required") -> Issue:
    return Issue("error", code, f"MedicationRequest/{item_id}: {message}", expression)


def _has_prescriber_code(role: dict[str, Any]) -> bool:
    if role.get("active") is False:
        return False
    return any(
        (c.get("system"), c.get("code")) in PRESCRIBER_CODES
        for cc in role.get("code") or [] for c in cc.get("coding") or []
    )


async def prescribing_right(conn: Any, service: ResourceService, requester: Any) -> tuple[str | None, str | None]:
    """(the prescriber's Practitioner id, None) when ``requester`` may prescribe, else (…, the reason).

    A PractitionerRole with a prescriber code (``codes.PRESCRIBER_CODES``), or a Practitioner who
    has an active one."""
    role_id, practitioner_id = ref_id(requester, "PractitionerRole"), ref_id(requester, "Practitioner")
    if role_id is not None:
        role = await read_json(conn, service, "PractitionerRole", role_id)
        if role is None:
            return None, f"the requester PractitionerRole/{role_id} is not known"
        who = ref_id(role.get("practitioner"), "Practitioner")
        if not _has_prescriber_code(role):
            return who, f"PractitionerRole/{role_id} has no prescribing role (e.g. practitioner-role#doctor)"
        return who, None
    if practitioner_id is not None:
        if await read_json(conn, service, "Practitioner", practitioner_id) is None:
            return practitioner_id, f"the requester Practitioner/{practitioner_id} is not known"
        roles = await referring(conn, service, "PractitionerRole", "practitioner", "Practitioner", practitioner_id, 50)
        if any(_has_prescriber_code(orjson.loads(r.content or "{}")) for r in roles):
            return practitioner_id, None
        return practitioner_id, f"Practitioner/{practitioner_id} has no PractitionerRole with a prescribing role"
    return None, "the requester must be a Practitioner or PractitionerRole with the right to prescribe"


def _has_frequency(timing: dict[str, Any]) -> bool:
    repeat = timing.get("repeat") or {}
    return bool(
        timing.get("code") or repeat.get("frequency") or repeat.get("when") or repeat.get("timeOfDay")
        or any(e.get("url") == EXT_AYUSH_TIMING for e in repeat.get("extension") or [])
    )


def _has_duration(item: dict[str, Any], timing: dict[str, Any]) -> bool:
    repeat = timing.get("repeat") or {}
    bounds = repeat.get("boundsDuration") or {}
    period = repeat.get("boundsPeriod") or {}
    supply = (item.get("dispenseRequest") or {}).get("expectedSupplyDuration") or {}
    return (bounds.get("value") is not None or (period.get("start") and period.get("end")) or repeat.get("count") is not None
            or supply.get("value") is not None)


async def check_items(
    conn: Any, service: ResourceService, items: list[dict[str, Any]], actor: Actor
) -> list[Issue]:
    issues: list[Issue] = []
    if not items:
        return [Issue("error", "required", "The prescription has no items (MedicationRequest)",
                      "Parameters.parameter.where(name='prescription')")]
    shared: dict[str, str] = {}  # element → the value of the first item where it is valid
    checked_people: dict[str, str | None] = {}
    rights: dict[str, tuple[str | None, str | None]] = {}
    for item in items:
        iid = item.get("id", "?")
        if item.get("status") != "draft":
            issues.append(_issue(iid, "MedicationRequest.status", f"only a draft can be finalized (status is {item.get('status')})", "business-rule"))
        # who, where, by whom: present, resolvable, the same across the prescription
        for element, rtype in (("subject", "Patient"), ("encounter", "Encounter")):
            rid = ref_id(item.get(element), rtype)
            if rid is None:
                issues.append(_issue(iid, f"MedicationRequest.{element}", f"{element} must reference a {rtype}"))
                continue
            key = f"{rtype}/{rid}"
            if key not in checked_people:
                checked_people[key] = None if await read_json(conn, service, rtype, rid) is not None else f"{key} is not known"
            if checked_people[key]:
                issues.append(_issue(iid, f"MedicationRequest.{element}", str(checked_people[key]), "not-found"))
            elif shared.setdefault(element, key) != key:
                issues.append(_issue(iid, f"MedicationRequest.{element}", f"all items of a prescription share one {element} ({shared[element]})", "business-rule"))
        requester = item.get("requester")
        if not isinstance(requester, dict) or not requester.get("reference"):
            issues.append(_issue(iid, "MedicationRequest.requester", "the prescriber (requester) is missing"))
        else:
            ref = requester["reference"]
            if ref not in rights:
                rights[ref] = await prescribing_right(conn, service, requester)
            who, problem = rights[ref]
            if problem:
                issues.append(_issue(iid, "MedicationRequest.requester", problem, "business-rule"))
            elif shared.setdefault("requester", ref) != ref:
                issues.append(_issue(iid, "MedicationRequest.requester", f"all items of a prescription share one prescriber ({shared['requester']})", "business-rule"))
            elif actor.fhir_user and actor.fhir_user.startswith("Practitioner/") and who and actor.fhir_user != f"Practitioner/{who}":
                issues.append(_issue(iid, "MedicationRequest.requester",
                                     f"{actor.fhir_user} may not finalize a prescription of Practitioner/{who}", "business-rule"))
        # what
        medication_ref = item.get("medicationReference")
        if not item.get("medicationCodeableConcept") and not medication_ref:
            issues.append(_issue(iid, "MedicationRequest.medication[x]", "the medication is missing"))
        elif isinstance(medication_ref, dict) and not str(medication_ref.get("reference") or "").startswith("#"):
            mid = ref_id(medication_ref, "Medication")
            if mid is None or await read_json(conn, service, "Medication", mid) is None:
                issues.append(_issue(iid, "MedicationRequest.medicationReference",
                                     f"the medication {medication_ref.get('reference')} is not known", "not-found"))
        dosages = item.get("dosageInstruction") or []
        if not dosages:
            issues.append(_issue(iid, "MedicationRequest.dosageInstruction", "the dosage instruction (dose, frequency, duration) is missing"))
        for j, dosage in enumerate(dosages):
            at = f"MedicationRequest.dosageInstruction[{j}]"
            if not any(dr.get("doseQuantity") or dr.get("doseRange") for dr in dosage.get("doseAndRate") or []):
                issues.append(_issue(iid, f"{at}.doseAndRate", "the dose is missing"))
            timing = dosage.get("timing") or {}
            if not _has_frequency(timing):
                issues.append(_issue(iid, f"{at}.timing", "the frequency is missing (timing.repeat.frequency/period, when, or timing.code)"))
            if not _has_duration(item, timing):
                issues.append(_issue(iid, f"{at}.timing.repeat.bounds[x]",
                                     "the duration is missing (timing.repeat.boundsDuration or dispenseRequest.expectedSupplyDuration)"))
        quantity = (item.get("dispenseRequest") or {}).get("quantity")
        value = quantity_value(quantity)
        if value is None or value <= 0:
            issues.append(_issue(iid, "MedicationRequest.dispenseRequest.quantity", "the quantity to dispense is missing"))
    return issues
