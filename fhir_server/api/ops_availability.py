"""Availability operations (fhir_server/workflows/availability/README.md):

* ``Appointment/$find`` (type level, GET/POST): free Slots by ``practitioner``, ``specialty``,
  ``location`` (facility), ``visit-type``, ``start``/``end`` and ``_count``, soonest first, as a
  searchset Bundle with the Schedules and PractitionerRoles as ``include`` entries;
* ``Schedule/[id]/$generate-slots`` (instance, POST): reconcile the schedule's Slots with its rules
  now (the write hooks do it on every change; this is for a first load or a repair) → Parameters
  with the counts; ``Schedule/$generate-slots`` (type level, POST) does every live Schedule.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
from starlette.responses import Response

from fhir_server.api.bundles import page_links, searchset_bundle
from fhir_server.api.deps import access_of, actor_of, database, service, tenant_of
from fhir_server.api.operations import OperationCall, operation
from fhir_server.api.responses import fhir_response
from fhir_server.errors import BadRequest, Forbidden
from fhir_server.timeutil import now
from fhir_server.workflows.availability.find import FindQuery, check_count, find
from fhir_server.workflows.availability.hooks import practitioner_id
from fhir_server.workflows.availability.model import reference_ids
from fhir_server.workflows.availability.produce import reconcile

FIND_DEFINITION = "https://fhir-server.example.org/fhir/OperationDefinition/Appointment-find"
GENERATE_DEFINITION = "https://fhir-server.example.org/fhir/OperationDefinition/Schedule-generate-slots"
_FIND_PARAMS = {"practitioner", "specialty", "location", "visit-type", "start", "end", "_count", "_format", "_pretty",
                "_summary", "_elements"}


def _ref(value: str | None, resource_type: str, name: str) -> str | None:
    if not value:
        return None
    rid = value.removeprefix(f"{resource_type}/")
    if "/" in rid or not rid:
        raise BadRequest(f"'{name}' is a {resource_type} id or {resource_type}/id", expression=name)
    return rid


def _token(value: str | None) -> tuple[str | None, str] | None:
    if not value:
        return None
    if "|" in value:
        system, code = value.split("|", 1)
        return (system or None, code)
    return (None, value)


def _when(value: str | None, name: str) -> tuple[datetime | None, bool]:
    if not value:
        return None, False
    text = value
    for prefix in ("ge", "le", "gt", "lt", "eq"):
        if text.startswith(prefix):
            text = text[2:]
    try:
        if len(text) == 10:
            return datetime.fromisoformat(text), True
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise BadRequest(f"'{name}' must be a date (YYYY-MM-DD) or a dateTime with a time zone", expression=name) from None
    if parsed.tzinfo is None:
        raise BadRequest(f"'{name}' needs a time zone (Z or ±hh:mm)", expression=name)
    return parsed, False


@operation("find", levels=("type",), types=("Appointment",), methods=("GET", "POST"))
async def find_op(call: OperationCall) -> Response:
    request = call.request
    for name, _ in call.params:
        if name not in _FIND_PARAMS:
            raise BadRequest(f"$find has no parameter '{name}'", expression=name)
    start, start_date = _when(call.text("start"), "start")
    end, end_date = _when(call.text("end"), "end")
    q = FindQuery(
        tenant=tenant_of(request),
        practitioner=_ref(call.text("practitioner"), "Practitioner", "practitioner"),
        location=_ref(call.text("location"), "Location", "location"),
        specialty=_token(call.text("specialty")),
        visit_type=_token(call.text("visit-type")),
        start=start, end=end, start_is_date=start_date, end_is_date=end_date,
        count=check_count(call.text("_count")),
        access=access_of(request),
    )
    async with database(request).connection() as conn:
        found = await find(conn, q, now())
    outcome = None
    longest = max(found.runs.values(), default=1)
    if longest > 1:
        outcome = {"resourceType": "OperationOutcome", "issue": [{
            "severity": "information", "code": "informational",
            "diagnostics": f"The visit type needs {longest} consecutive slots: each Slot returned is the first of "
                           f"{longest} consecutive free slots of its schedule; book all of them",
        }]}
    body = searchset_bundle(request, found.slots, None, page_links(request, None), outcome, found.included)
    return Response(body, media_type="application/fhir+json")


find_op.operation_definition = FIND_DEFINITION  # type: ignore[attr-defined]


async def _check_own(request: Any, schedule_ids: list[str]) -> None:
    actor = actor_of(request)
    if actor.role != "doctor":
        return
    me = practitioner_id(actor.fhir_user)
    svc = service(request)
    for sid in schedule_ids:
        content = orjson.loads((await svc.read("Schedule", sid)).content or "{}")
        owners = reference_ids(content.get("actor"), "Practitioner")
        if me is None or not owners or any(o != me for o in owners):
            raise Forbidden("A doctor may generate slots only for their own Schedule", expression="Schedule.actor")


@operation("generate-slots", levels=("type", "instance"), types=("Schedule",), methods=("POST",), affects_state=True)
async def generate_slots_op(call: OperationCall) -> Response:
    request = call.request
    svc = service(request)
    if call.resource_id is not None:
        await svc.read("Schedule", call.resource_id)  # 404/410 as for a read
        ids = [call.resource_id]
    else:
        async with database(request).connection() as conn:
            cur = await conn.execute(
                "SELECT id FROM resource WHERE tenant_id = %s AND resource_type = 'Schedule' AND NOT deleted ORDER BY id",
                (tenant_of(request),),
            )
            ids = [r[0] for r in await cur.fetchall()]
    await _check_own(request, ids)
    parts = []
    for sid in ids:
        async with database(request).transaction() as conn:
            summary = await reconcile(conn, svc, sid)
        parts.append({"name": "schedule", "part": [
            {"name": "schedule", "valueReference": {"reference": f"Schedule/{sid}"}},
            *({"name": k, "valueInteger": v} for k, v in summary.as_dict().items() if k != "schedule"),
        ]})
    return fhir_response(request, {"resourceType": "Parameters", "parameter": parts})


generate_slots_op.operation_definition = GENERATE_DEFINITION  # type: ignore[attr-defined]
