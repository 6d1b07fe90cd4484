"""Dispensing against finalized prescription items (R4 medicationdispense.html, medicationrequest.html
"dispenseRequest"): one rule set for a plain REST/Bundle write of a MedicationDispense and for
``MedicationRequest/$dispense``, as an ``@after_write("MedicationDispense")`` hook in the write's own
transaction.

For each MedicationRequest a dispense names in ``authorizingPrescription`` (before or after the write):

1. lock the request's row (``SELECT … FOR UPDATE``): concurrent dispenses and edits of one request
   run one after another, and the sum below (a new statement, READ COMMITTED) sees every committed one;
2. a live dispense (not cancelled/entered-in-error/declined/stopped) needs a finalized request, for
   the same subject; one that adds quantity needs the request active (or completed, to over-dispense),
   a ``quantity`` in the prescribed unit (``dispenseRequest.quantity``: same system|code, else unit);
3. dispensed = the sum of ``quantity`` of the request's ``completed`` dispenses; more than prescribed is
   refused (422) unless the dispense carries the ``prescription-dispense-override`` extension (the reason);
4. the request becomes ``completed`` when dispensed ≥ prescribed (and back to ``active`` if a reversal
   brings it below);
5. the stock ledger (``stock.py``) draws the change of counted quantity.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson

from fhir_server.errors import Issue, UnprocessableEntity
from fhir_server.services.hooks import WriteEvent, after_write
from fhir_server.services.resources import ResourceService
from fhir_server.storage import repository as repo
from fhir_server.timeutil import format_instant, now
from fhir_server.workflows.pharmacy.codes import EXT_DISPENSE_OVERRIDE, SUBSTITUTION_REASON, SUBSTITUTION_TYPE
from fhir_server.workflows.pharmacy.lock import is_finalized, writing
from fhir_server.workflows.pharmacy.prescription import quantity_value, ref_id, same_unit
from fhir_server.workflows.pharmacy.stock import signed, stock_ledger

__all__ = ["build_dispense", "dispensed_total", "override_reason", "reconcile_dispense"]

_NOT_LIVE = frozenset({"cancelled", "entered-in-error", "declined", "stopped"})
COUNTED = "completed"


def _request_ids(dispense: dict[str, Any] | None) -> set[str]:
    out = set()
    for ref in (dispense or {}).get("authorizingPrescription") or []:
        rid = ref_id(ref, "MedicationRequest")
        if rid is not None:
            out.add(rid)
    return out


def _counted(dispense: dict[str, Any] | None, rid: str | None = None) -> Decimal:
    if not dispense or dispense.get("status") != COUNTED or (rid is not None and rid not in _request_ids(dispense)):
        return Decimal(0)
    return quantity_value(dispense.get("quantity")) or Decimal(0)


def override_reason(dispense: dict[str, Any] | None) -> str | None:
    for ext in (dispense or {}).get("extension") or []:
        if ext.get("url") == EXT_DISPENSE_OVERRIDE and str(ext.get("valueString") or "").strip():
            return str(ext["valueString"])
    return None


async def dispensed_total(conn: Any, tenant: str, request_id: str) -> Decimal:
    """The sum of ``quantity.value`` of the live ``completed`` dispenses authorized by the request."""
    cur = await conn.execute(
        "SELECT DISTINCT r.id, r.content->'quantity'->>'value' FROM idx_reference x "
        "JOIN resource r ON r.tenant_id = x.tenant_id AND r.resource_type = x.resource_type AND r.id = x.resource_id "
        "WHERE x.tenant_id = %s AND x.resource_type = 'MedicationDispense' AND x.param = 'prescription' "
        "AND x.target_type = 'MedicationRequest' AND x.target_id = %s AND NOT r.deleted AND r.content->>'status' = %s",
        (tenant, request_id, COUNTED),
    )
    return sum((Decimal(v) for _, v in await cur.fetchall() if v is not None), Decimal(0))


def _refuse(message: str, expression: str, code: str = "business-rule") -> UnprocessableEntity:
    return UnprocessableEntity(message, issues=[Issue("error", code, message, expression)])


@after_write("MedicationDispense")
async def reconcile_dispense(conn: Any, service: ResourceService, event: WriteEvent) -> None:
    before, after = event.before, event.after
    after_ids, before_ids = _request_ids(after), _request_ids(before)
    if not after_ids and not before_ids:
        return  # not against a prescription (e.g. over the counter)
    if len(after_ids) > 1:
        raise _refuse("A dispense against a prescription names one MedicationRequest in authorizingPrescription",
                      "MedicationDispense.authorizingPrescription")
    for rid in sorted(after_ids | before_ids):
        await _reconcile(conn, service, event, rid)
    await _draw_stock(conn, service, before, after)


async def _reconcile(conn: Any, service: ResourceService, event: WriteEvent, rid: str) -> None:
    before, after = event.before, event.after
    live = after is not None and rid in _request_ids(after) and after.get("status") not in _NOT_LIVE
    current = await repo.fetch_current(conn, service.tenant, "MedicationRequest", rid, for_update=True)
    if current is None or current.deleted or not current.content:
        if live:
            raise _refuse(f"MedicationRequest/{rid} is not known", "MedicationDispense.authorizingPrescription", "not-found")
        return
    request = orjson.loads(current.content)
    adding = _counted(after, rid) > _counted(before, rid)
    prescribed = (request.get("dispenseRequest") or {}).get("quantity") or {}
    prescribed_value = quantity_value(prescribed)
    if live:
        assert after is not None
        if not is_finalized(request):
            raise _refuse(f"MedicationRequest/{rid} is not finalized (MedicationRequest/$finalize)",
                          "MedicationDispense.authorizingPrescription")
        subject = (request.get("subject") or {}).get("reference")
        if (after.get("subject") or {}).get("reference") not in (None, subject):
            raise _refuse(f"The dispense's subject is not the subject of MedicationRequest/{rid} ({subject})", "MedicationDispense.subject")
    if adding:
        assert after is not None
        if request.get("status") not in ("active", "completed"):
            raise _refuse(f"MedicationRequest/{rid} is {request.get('status')}: nothing more may be dispensed",
                          "MedicationDispense.authorizingPrescription")
        if prescribed_value is None or not same_unit(after.get("quantity") or {}, prescribed):
            unit = prescribed.get("unit") or prescribed.get("code") or "?"
            raise _refuse(f"The dispensed quantity must be in the prescribed unit ({unit})", "MedicationDispense.quantity")
    elif after is not None and after.get("status") == COUNTED and rid in _request_ids(after) and quantity_value(after.get("quantity")) is None:
        raise _refuse("A completed dispense against a prescription needs a quantity", "MedicationDispense.quantity", "required")
    if prescribed_value is None:
        return
    total = await dispensed_total(conn, service.tenant, rid)
    if adding and total > prescribed_value and override_reason(after) is None:
        raise _refuse(
            f"Over-dispense: {total} would be dispensed against MedicationRequest/{rid}, {prescribed_value} prescribed; "
            f"give a reason ({EXT_DISPENSE_OVERRIDE}, or $dispense override-reason) to override",
            "MedicationDispense.quantity",
        )
    status = request.get("status")
    new_status = status
    if status == "active" and total >= prescribed_value:
        new_status = "completed"
    elif status == "completed" and total < prescribed_value:
        new_status = "active"
    if new_status != status:
        with writing("dispense"):
            await service.update_in(conn, "MedicationRequest", rid, {**request, "status": new_status}, None, current=current)


def _medication(dispense: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in dispense.items() if k in ("medicationReference", "medicationCodeableConcept")}


async def _draw_stock(conn: Any, service: ResourceService, before: dict[str, Any] | None, after: dict[str, Any] | None) -> None:
    was, now_ = _counted(before), _counted(after)
    if was == now_ and (was == 0 or (_medication(before or {}), (before or {}).get("location")) == (_medication(after or {}), (after or {}).get("location"))):
        return
    ledger = stock_ledger()
    for dispense, value in ((before, -was), (after, now_)):
        if dispense is not None and value != 0:
            location = (dispense.get("location") or {}).get("reference")
            await ledger.draw(conn, service.tenant, _medication(dispense), signed(dispense.get("quantity") or {}, value), location)


def build_dispense(
    request_id: str, request: dict[str, Any], quantity: dict[str, Any], *,
    medication: dict[str, Any] | None = None, substitution_type: dict[str, Any] | None = None,
    substitution_reason: dict[str, Any] | None = None, override: str | None = None,
    performer: str | None = None, location: str | None = None, status: str = COUNTED,
) -> dict[str, Any]:
    """The MedicationDispense ``$dispense`` writes: the request's medication (or ``medication``, a
    substitution), subject, encounter and dosage, the given quantity, handed over now."""
    when = format_instant(now())
    dispense: dict[str, Any] = {"resourceType": "MedicationDispense", "status": status}
    if override:
        dispense["extension"] = [{"url": EXT_DISPENSE_OVERRIDE, "valueString": override}]
    dispense.update(medication or _medication(request))
    if request.get("subject"):
        dispense["subject"] = request["subject"]
    if request.get("encounter"):
        dispense["context"] = request["encounter"]
    if performer:
        dispense["performer"] = [{"actor": {"reference": performer}}]
    if location:
        dispense["location"] = {"reference": location}
    dispense["authorizingPrescription"] = [{"reference": f"MedicationRequest/{request_id}"}]
    dispense["quantity"] = quantity
    supply = (request.get("dispenseRequest") or {}).get("expectedSupplyDuration")
    if supply:
        dispense["daysSupply"] = supply
    if status == COUNTED:
        dispense["whenHandedOver"] = when
    dispense["whenPrepared"] = when
    if request.get("dosageInstruction"):
        dispense["dosageInstruction"] = request["dosageInstruction"]
    substituted = medication is not None or substitution_type is not None
    if substituted or substitution_reason is not None:
        sub: dict[str, Any] = {"wasSubstituted": substituted}
        if substitution_type is not None:
            sub["type"] = substitution_type
        if substitution_reason is not None:
            sub["reason"] = [substitution_reason]
        dispense["substitution"] = sub
    return dispense


def substitution_concept(value: Any, system: str) -> dict[str, Any] | None:
    """A substitution type/reason from an operation parameter: a code (of ``system``), Coding,
    CodeableConcept, or free text."""
    if value is None:
        return None
    if isinstance(value, dict):
        if isinstance(value.get("valueCodeableConcept"), dict):
            return value["valueCodeableConcept"]
        if isinstance(value.get("valueCoding"), dict):
            return {"coding": [value["valueCoding"]]}
        if value.get("valueString"):
            return {"text": str(value["valueString"])}
        value = value.get("valueCode")
        if value is None:
            return None
    text = str(value)
    if text.isupper() and len(text) <= 6:
        return {"coding": [{"system": system, "code": text}]}
    return {"text": text}


SUBSTITUTION_SYSTEMS = {"type": SUBSTITUTION_TYPE, "reason": SUBSTITUTION_REASON}
