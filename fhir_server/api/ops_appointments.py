"""Appointment and OPD operations (README of ``fhir_server/workflows/appointments``), over
https://hl7.org/fhir/R4/appointment.html and encounter.html; parameters per operations.html:

* ``POST Appointment/$book`` — an Appointment body, or Parameters ``appointment`` (resource) or
  ``slot`` (1..*), ``patient``, ``practitioner``, ``location`` (valueReference), ``appointmentType``,
  ``reasonCode`` (valueCodeableConcept), ``comment`` (valueString) → 201 + the booked Appointment;
* ``POST Appointment/[id]/$confirm`` | ``$cancel`` (``cancelationReason`` required) |
  ``$reschedule`` (``slot`` 1..*) | ``$complete`` | ``$no-show`` → 200 + the Appointment;
* ``POST Appointment/[id]/$check-in`` → Parameters ``appointment``, ``encounter``, ``token``;
* ``POST Encounter/$check-in`` (walk-in: ``patient``, ``practitioner``, ``location`` or
  ``organization``) → 201 + Parameters ``encounter``, ``token``;
* ``GET Encounter/$queue?practitioner=…[&date=…][&location=…][&status=…]`` → Parameters, one
  ``entry`` per visit in token order (token, encounter, patient, status, arrived, waitingMinutes).
"""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from fhir_server.api.deps import access_of, service
from fhir_server.api.operations import OperationCall, operation
from fhir_server.api.responses import base_url, fhir_response, version_headers
from fhir_server.errors import BadRequest, Forbidden
from fhir_server.storage.repository import StoredVersion
from fhir_server.workflows.appointments import operations as ops
from fhir_server.workflows.appointments.model import ref_id

_P = "Parameters.parameter.where(name='{}')"


def _audited(call: OperationCall) -> None:
    call.request.scope.setdefault("state", {})["audited"] = True  # each write recorded its own audit row


def _ref(value: Any, name: str, resource_type: str) -> str | None:
    """A reference parameter (valueReference, or a plain ``Type/id`` / ``id`` text) → the id."""
    if value is None:
        return None
    if isinstance(value, dict):
        value = value.get("valueReference") or value.get("valueString") or value.get("valueId")
    rid = ref_id(value, resource_type)
    if rid is None and isinstance(value, str) and value and "/" not in value:
        rid = value
    if rid is None:
        raise BadRequest(f"Parameter '{name}' must reference a {resource_type}", expression=_P.format(name))
    return rid


def _refs(call: OperationCall, name: str, resource_type: str) -> list[str]:
    return [r for v in call.all(name) if (r := _ref(v, name, resource_type))]


def _concept(value: Any, name: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return {"text": value}
    if "valueCodeableConcept" in value:
        return value["valueCodeableConcept"]
    if "valueCoding" in value:
        return {"coding": [value["valueCoding"]]}
    for key in ("valueString", "valueCode"):
        if isinstance(value.get(key), str):
            return {"text": value[key]}
    raise BadRequest(f"Parameter '{name}' must be a CodeableConcept, Coding or string", expression=_P.format(name))


def _appointment_of(call: OperationCall) -> dict[str, Any]:
    body = call.body
    if isinstance(body, dict) and body.get("resourceType") == "Appointment":
        return dict(body)
    given = call.resource("appointment")
    if given is not None:
        if given.get("resourceType") != "Appointment":
            raise BadRequest("Parameter 'appointment' must be an Appointment", expression=_P.format("appointment"))
        return dict(given)
    appt: dict[str, Any] = {"resourceType": "Appointment", "status": "booked", "participant": []}
    slots = _refs(call, "slot", "Slot")
    if slots:
        appt["slot"] = [{"reference": f"Slot/{s}"} for s in slots]
    for name, rtype in (("patient", "Patient"), ("practitioner", "Practitioner"), ("location", "Location")):
        for rid in _refs(call, name, rtype):
            appt["participant"].append({"actor": {"reference": f"{rtype}/{rid}"}, "required": "required",
                                        "status": "accepted"})
    kind = _concept(call.first("appointmentType"), "appointmentType")
    if kind:
        appt["appointmentType"] = kind
    reasons = [c for v in call.all("reasonCode") if (c := _concept(v, "reasonCode"))]
    if reasons:
        appt["reasonCode"] = reasons
    for key in ("comment", "description", "start", "end"):
        text = call.text(key)
        if text:
            appt[key] = text
    return appt


def _patient_context(call: OperationCall, appt: dict[str, Any]) -> None:
    """A SMART patient-context caller books for itself: its patient by default, never another."""
    patient = access_of(call.request).patient
    if patient is None:
        return
    named = [p for p in appt.get("participant") or [] if ref_id(p.get("actor"), "Patient")]
    if not named:
        appt.setdefault("participant", []).append(
            {"actor": {"reference": f"Patient/{patient}"}, "required": "required", "status": "accepted"})
    elif any(ref_id(p.get("actor"), "Patient") != patient for p in named):
        raise Forbidden("A patient may book only for themself", expression="Appointment.participant.actor")


def _resource(call: OperationCall, version: StoredVersion, status: int = 200) -> Response:
    headers = version_headers(version)
    if status == 201:
        headers["Location"] = f"{base_url(call.request)}/{version.resource_type}/{version.id}/_history/{version.version_id}"
    assert version.content is not None
    return fhir_response(call.request, version.content.encode(), status, headers)


@operation("book", levels=("type",), types=("Appointment",), methods=("POST",), affects_state=True)
async def book_op(call: OperationCall) -> Response:
    appt = _appointment_of(call)
    _patient_context(call, appt)
    result = await ops.book(service(call.request), appt)
    _audited(call)
    return _resource(call, result.version, 201 if result.created else 200)


def _instance(call: OperationCall) -> str:
    assert call.resource_id is not None
    return call.resource_id


@operation("confirm", levels=("instance",), types=("Appointment",), methods=("POST",), affects_state=True)
async def confirm_op(call: OperationCall) -> Response:
    result = await ops.confirm(service(call.request), _instance(call))
    _audited(call)
    return _resource(call, result.version)


@operation("cancel", levels=("instance",), types=("Appointment",), methods=("POST",), affects_state=True)
async def cancel_op(call: OperationCall) -> Response:
    reason = _concept(call.first("cancelationReason") or call.first("reason"), "cancelationReason")
    if not reason:
        raise BadRequest("$cancel needs a 'cancelationReason' (CodeableConcept, Coding or string)",
                         expression=_P.format("cancelationReason"))
    version = await ops.cancel(service(call.request), _instance(call), reason)
    _audited(call)
    return _resource(call, version)


@operation("reschedule", levels=("instance",), types=("Appointment",), methods=("POST",), affects_state=True)
async def reschedule_op(call: OperationCall) -> Response:
    slots = _refs(call, "slot", "Slot")
    if not slots:
        raise BadRequest("$reschedule needs the new 'slot' (1..*)", expression=_P.format("slot"))
    version = await ops.reschedule(service(call.request), _instance(call), slots)
    _audited(call)
    return _resource(call, version)


@operation("complete", levels=("instance",), types=("Appointment",), methods=("POST",), affects_state=True)
async def complete_op(call: OperationCall) -> Response:
    version = await ops.complete(service(call.request), _instance(call))
    _audited(call)
    return _resource(call, version)


@operation("no-show", levels=("instance",), types=("Appointment",), methods=("POST",), affects_state=True)
async def no_show_op(call: OperationCall) -> Response:
    version = await ops.no_show(service(call.request), _instance(call))
    _audited(call)
    return _resource(call, version)


def _visit(result: ops.CheckIn) -> dict[str, Any]:
    params: list[dict[str, Any]] = []
    if result.appointment is not None:
        params.append({"name": "appointment", "resource": result.appointment})
    params.append({"name": "encounter", "resource": result.encounter})
    params.append({"name": "token", "valueInteger": result.token})
    return {"resourceType": "Parameters", "parameter": params}


@operation("check-in", levels=("type", "instance"), types=("Appointment", "Encounter"), methods=("POST",),
           affects_state=True)
async def check_in_op(call: OperationCall) -> Response:
    svc = service(call.request)
    if call.resource_type == "Appointment":
        if call.resource_id is None:
            raise BadRequest("Check-in of an appointment is Appointment/[id]/$check-in")
        result = await ops.check_in(svc, call.resource_id)
        _audited(call)
        return fhir_response(call.request, _visit(result), 200)
    if call.resource_id is not None:
        raise BadRequest("A walk-in check-in is Encounter/$check-in")
    patient = _ref(call.first("patient"), "patient", "Patient") or access_of(call.request).patient
    practitioner = _ref(call.first("practitioner"), "practitioner", "Practitioner")
    location = _ref(call.first("location"), "location", "Location")
    organization = _ref(call.first("organization"), "organization", "Organization")
    for name, value in (("patient", patient), ("practitioner", practitioner)):
        if not value:
            raise BadRequest(f"A walk-in check-in needs '{name}'", expression=_P.format(name))
    if not (location or organization):
        raise BadRequest("A walk-in check-in needs the facility: 'location' or 'organization'",
                         expression=_P.format("location"))
    assert patient is not None and practitioner is not None
    result = await ops.walk_in(svc, patient=patient, practitioner=practitioner, location=location,
                               organization=organization)
    _audited(call)
    return fhir_response(call.request, _visit(result), 201)


@operation("queue", levels=("type",), types=("Encounter",), methods=("GET",))
async def queue_op(call: OperationCall) -> Response:
    practitioner = _ref(call.first("practitioner"), "practitioner", "Practitioner")
    if not practitioner:
        raise BadRequest("$queue needs 'practitioner'", expression=_P.format("practitioner"))
    statuses = [s for v in call.texts("status") for s in v.split(",") if s] or ["arrived", "in-progress"]
    rows = await ops.queue(service(call.request), practitioner=practitioner, day=call.text("date"),
                           location=_ref(call.first("location"), "location", "Location"), statuses=statuses)
    params = []
    for r in rows:
        part = [{"name": "token", "valueInteger": r["token"]},
                {"name": "encounter", "valueReference": {"reference": r["encounter"]}},
                {"name": "status", "valueCode": r["status"]}]
        if r["patient"]:
            part.append({"name": "patient", "valueReference": {"reference": r["patient"]}})
        if r["arrived"]:
            part.append({"name": "arrived", "valueDateTime": r["arrived"]})
        if r["waitingMinutes"] is not None:
            part.append({"name": "waitingMinutes", "valueInteger": r["waitingMinutes"]})
        params.append({"name": "entry", "part": part})
    return fhir_response(call.request, {"resourceType": "Parameters", "parameter": params})
