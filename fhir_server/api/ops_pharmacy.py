"""Pharmacy operations (fhir_server/workflows/pharmacy/README.md; R4 operations.html):

* ``MedicationRequest/$finalize`` (type level, ``prescription`` = the group identifier ``[system|]value``;
  or ``MedicationRequest/[id]/$finalize`` for one item), POST, optional ``override-reason``:
  completeness and allergy checks, then every item draft → active and locked, in one transaction.
  Answers a ``collection`` Bundle of the finalized items and their DetectedIssues; 422 otherwise.
* ``MedicationRequest/$print?prescription=…`` (or ``MedicationRequest/[id]/$print``), GET: the printable
  prescription as ``text/html``.
* ``MedicationRequest/$prescription-record?prescription=…`` (or on one item), GET: the prescription as an
  ABDM-style ``document`` Bundle (Composition "Prescription record" first).
* ``MedicationRequest/[id]/$dispense``, POST: a MedicationDispense against the item (``quantity``,
  default what is left; ``medication`` + ``substitution-type``/``substitution-reason`` for a substitution;
  ``override-reason`` to over-dispense; ``location``; ``status``), through the same after-write rules as
  a plain POST of a MedicationDispense. Answers ``Parameters``: dispense, request, dispensed, remaining.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

import orjson
from starlette.responses import Response

from fhir_server.api.deps import database, service, tenant_of
from fhir_server.api.operations import OperationCall, operation
from fhir_server.api.responses import base_url, fhir_response
from fhir_server.errors import BadRequest, ResourceNotFound
from fhir_server.services.resources import ResourceService
from fhir_server.services.validate import check_resource
from fhir_server.storage.repository import StoredVersion
from fhir_server.workflows.pharmacy.codes import SUBSTITUTION_REASON, SUBSTITUTION_TYPE
from fhir_server.workflows.pharmacy.dispensing import build_dispense, dispensed_total, substitution_concept
from fhir_server.workflows.pharmacy.document import prescription_record
from fhir_server.workflows.pharmacy.finalize import finalize
from fhir_server.workflows.pharmacy.operation_definitions import url_of
from fhir_server.workflows.pharmacy.prescription import (
    group_key,
    items_of_group,
    medication_terms,
    quantity_value,
    read_json,
    ref_id,
)
from fhir_server.workflows.pharmacy.printing import PrintContext, render_prescription

_PRESCRIPTION = "Parameters.parameter.where(name='prescription')"


def _param(name: str) -> str:
    return f"Parameters.parameter.where(name='{name}')"


def _entry(request: Any, version: StoredVersion) -> dict[str, Any]:
    return {"fullUrl": f"{base_url(request)}/{version.resource_type}/{version.id}", "resource": orjson.loads(version.content or "{}")}


@operation("finalize", levels=("type", "instance"), types=("MedicationRequest",), methods=("POST",), affects_state=True)
async def finalize_op(call: OperationCall) -> Response:
    request = call.request
    prescription = call.text("prescription")
    if call.resource_id is None and not prescription:
        raise BadRequest("$finalize at type level needs the 'prescription' parameter (the groupIdentifier)", expression=_PRESCRIPTION)
    override = (call.text("override-reason") or "").strip() or None
    done = await finalize(
        database(request), service(request), prescription=prescription if call.resource_id is None else None,
        item_id=call.resource_id, override=override,
    )
    bundle = {
        "resourceType": "Bundle", "type": "collection",
        "entry": [_entry(request, v) for v in [*done.items, *done.detected_issues]],
    }
    return fhir_response(request, bundle)


async def _print_items(call: OperationCall, svc: ResourceService, conn: Any) -> list[dict[str, Any]]:
    if call.resource_id is not None:
        return [orjson.loads((await svc.read_in(conn, "MedicationRequest", call.resource_id)).content or "{}")]
    prescription = call.text("prescription")
    if not prescription:
        raise BadRequest("$print at type level needs the 'prescription' parameter (the groupIdentifier)", expression=_PRESCRIPTION)
    items = [orjson.loads(v.content or "{}") for v in await items_of_group(conn, svc, prescription)]
    if not items:
        raise ResourceNotFound(f"No prescription '{prescription}'", expression=_PRESCRIPTION)
    return items


async def _gather(call: OperationCall) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The items of the prescription (or the one item) and what the printed/exchanged form names:
    patient, prescriber (Practitioner), their PractitionerRole, encounter, facility, medication names."""
    request = call.request
    svc = service(request)
    async with database(request).connection() as conn:
        items = await _print_items(call, svc, conn)
        items.sort(key=lambda i: (str(i.get("authoredOn") or ""), str(i.get("id"))))
        first = items[0]
        requester = first.get("requester")
        role = await read_json(conn, svc, "PractitionerRole", ref_id(requester, "PractitionerRole"))
        prescriber_id = ref_id(role.get("practitioner"), "Practitioner") if role else ref_id(requester, "Practitioner")
        encounter = await read_json(conn, svc, "Encounter", ref_id(first.get("encounter"), "Encounter"))
        organization: dict[str, Any] | None = None
        for ref in ((encounter or {}).get("serviceProvider"), (role or {}).get("organization")):
            organization = organization or await read_json(conn, svc, "Organization", ref_id(ref, "Organization"))
        medications = []
        names = {}
        for item in items:
            names[str(item.get("id"))] = (await medication_terms(conn, svc, item))[2]
            medication = await read_json(conn, svc, "Medication", ref_id(item.get("medicationReference"), "Medication"))
            if medication:
                medications.append(medication)
        context = {
            "patient": await read_json(conn, svc, "Patient", ref_id(first.get("subject"), "Patient")),
            "prescriber": await read_json(conn, svc, "Practitioner", prescriber_id),
            "role": role, "encounter": encounter, "organization": organization, "names": names, "medications": medications,
        }
    return items, context


@operation("print", levels=("type", "instance"), types=("MedicationRequest",), methods=("GET",))
async def print_op(call: OperationCall) -> Response:
    request = call.request
    items, ctx = await _gather(call)
    first = items[0]
    prescriber = ctx["prescriber"]
    requester = first.get("requester")
    if prescriber is None and isinstance(requester, dict) and requester.get("display"):
        prescriber = {"name": [{"text": requester["display"]}]}
    facility = str((ctx["organization"] or {}).get("name") or tenant_of(request))
    html = render_prescription(items, PrintContext(facility, ctx["patient"], prescriber, ctx["names"], group_key(first)))
    return Response(html.encode(), media_type="text/html; charset=utf-8")


@operation("prescription-record", levels=("type", "instance"), types=("MedicationRequest",), methods=("GET",))
async def prescription_record_op(call: OperationCall) -> Response:
    """The prescription as an ABDM-style document Bundle (Composition "Prescription record" first)."""
    request = call.request
    items, ctx = await _gather(call)
    related = [r for r in (ctx["patient"], ctx["prescriber"], ctx["role"], ctx["organization"], ctx["encounter"]) if r]
    org = ctx["organization"]
    custodian = f"Organization/{org['id']}" if org and org.get("id") else None
    bundle = prescription_record(base_url(request), items, related + ctx["medications"], custodian=custodian)
    return fhir_response(request, bundle)


def _quantity(call: OperationCall, prescribed: dict[str, Any]) -> dict[str, Any] | None:
    value = call.first("quantity")
    if value is None:
        return None
    if isinstance(value, dict) and isinstance(value.get("valueQuantity"), dict):
        return dict(value["valueQuantity"])
    text = call.text("quantity")
    try:
        number = Decimal(str(text))
    except (InvalidOperation, TypeError):
        raise BadRequest("'quantity' must be a Quantity or a number (in the prescribed unit)", expression=_param("quantity")) from None
    unit = {k: v for k, v in prescribed.items() if k in ("unit", "system", "code")}
    return {"value": int(number) if number == number.to_integral_value() else float(number), **unit}


def _reference(call: OperationCall, name: str) -> str | None:
    value = call.first(name)
    if isinstance(value, dict) and isinstance(value.get("valueReference"), dict):
        return value["valueReference"].get("reference")
    return call.text(name) if value is not None else None


def _medication(call: OperationCall) -> dict[str, Any] | None:
    value = call.first("medication")
    if value is None:
        return None
    if isinstance(value, dict):
        if isinstance(value.get("valueCodeableConcept"), dict):
            return {"medicationCodeableConcept": value["valueCodeableConcept"]}
        if isinstance(value.get("valueReference"), dict):
            return {"medicationReference": value["valueReference"]}
    text = call.text("medication") or ""
    if text.startswith("Medication/"):
        return {"medicationReference": {"reference": text}}
    if text:
        return {"medicationCodeableConcept": {"text": text}}
    raise BadRequest("'medication' must be a CodeableConcept, a Reference or a text", expression=_param("medication"))


@operation("dispense", levels=("instance",), types=("MedicationRequest",), methods=("POST",), affects_state=True)
async def dispense_op(call: OperationCall) -> Response:
    request = call.request
    assert call.resource_id is not None
    svc = service(request)
    rid = call.resource_id
    status = call.text("status") or "completed"
    if status not in ("completed", "in-progress", "preparation"):
        raise BadRequest("'status' is completed, in-progress or preparation", expression=_param("status"))
    async with database(request).transaction() as conn:
        bound = svc.on(conn)
        current = orjson.loads((await bound.read_in(conn, "MedicationRequest", rid)).content or "{}")
        prescribed = (current.get("dispenseRequest") or {}).get("quantity") or {}
        quantity = _quantity(call, prescribed)
        if quantity is None:  # what is left (the after-write rules check it again under the lock)
            left = (quantity_value(prescribed) or Decimal(0)) - await dispensed_total(conn, svc.tenant, rid)
            if left <= 0:
                raise BadRequest("Nothing is left to dispense; give 'quantity' (and 'override-reason')", expression=_param("quantity"))
            quantity = {**{k: v for k, v in prescribed.items() if k != "value"}, "value": int(left) if left == left.to_integral_value() else float(left)}
        actor = svc.actor.fhir_user
        dispense = build_dispense(
            rid, current, quantity, medication=_medication(call),
            substitution_type=substitution_concept(call.first("substitution-type"), SUBSTITUTION_TYPE),
            substitution_reason=substitution_concept(call.first("substitution-reason"), SUBSTITUTION_REASON),
            override=(call.text("override-reason") or "").strip() or None,
            performer=actor if actor and actor.startswith(("Practitioner/", "PractitionerRole/")) else None,
            location=_reference(call, "location"), status=status,
        )
        check_resource("MedicationDispense", dispense, id_required=False)
        written = (await bound.create_in(conn, "MedicationDispense", dispense)).version
        after = await bound.read_in(conn, "MedicationRequest", rid)
        total = await dispensed_total(conn, svc.tenant, rid)
    updated = orjson.loads(after.content or "{}")
    unit = {k: v for k, v in prescribed.items() if k != "value"}
    remaining = max((quantity_value(prescribed) or Decimal(0)) - total, Decimal(0))
    out = {"resourceType": "Parameters", "parameter": [
        {"name": "dispense", "resource": orjson.loads(written.content or "{}")},
        {"name": "request", "resource": updated},
        {"name": "dispensed", "valueQuantity": {**unit, "value": float(total)}},
        {"name": "remaining", "valueQuantity": {**unit, "value": float(remaining)}},
    ]}
    return fhir_response(request, out)


for _handler, _code in ((finalize_op, "finalize"), (print_op, "print"), (prescription_record_op, "prescription-record"),
                        (dispense_op, "dispense")):
    _handler.operation_definition = url_of(_code)  # type: ignore[attr-defined]  (capabilities.py names it)
