"""OPD appointments (fhir_server/workflows/appointments): booking without double booking, the
Appointment status machine, check-in with queue tokens, the day's queue, roles and tenants — over
real HTTP against a real PostgreSQL. Specs: https://hl7.org/fhir/R4/appointment.html (status
machine, slot), slot.html, encounter.html, operations.html, http.html (409 conflict)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import httpx
import pytest

from tests.conftest import ServerProcess, issue_token, server_env

TOKEN_SYSTEM = "https://fhir-server.example.org/fhir/sid/opd-token"
CAPACITY = "https://fhir-server.example.org/fhir/StructureDefinition/slot-capacity"
TODAY = datetime.now(ZoneInfo("Asia/Kolkata")).date().isoformat()


def _client(server: ServerProcess, tenant: str, bearer: str) -> httpx.Client:
    return httpx.Client(base_url=f"{server.base}/{tenant}", timeout=60,
                        headers={"Authorization": f"Bearer {bearer}", "Accept": "application/fhir+json"})


@dataclass
class World:
    server: ServerProcess
    database_url: str
    tenant: str
    admin: httpx.Client
    bearer: str
    n: int = 0

    def put(self, resource: dict) -> dict:
        r = self.admin.put(f"/{resource['resourceType']}/{resource['id']}", json=resource)
        assert r.status_code in (200, 201), r.text
        return r.json()

    def uid(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}-{self.n}-{uuid.uuid4().hex[:4]}"

    def patient(self) -> str:
        pid = self.uid("pat")
        self.put({"resourceType": "Patient", "id": pid, "name": [{"family": pid}]})
        return pid

    def doctor(self) -> str:
        did = self.uid("doc")
        self.put({"resourceType": "Practitioner", "id": did, "name": [{"family": did}]})
        self.put({"resourceType": "Schedule", "id": f"sch-{did}", "actor": [
            {"reference": f"Practitioner/{did}"}, {"reference": "Location/opd-1"}]})
        return did

    def slot(self, doctor: str, start: datetime, minutes: int = 15, capacity: int | None = None,
             status: str = "free") -> str:
        sid = self.uid("slot")
        slot = {"resourceType": "Slot", "id": sid, "schedule": {"reference": f"Schedule/sch-{doctor}"},
                "status": status, "start": iso(start), "end": iso(start + timedelta(minutes=minutes))}
        if capacity:
            slot["extension"] = [{"url": CAPACITY, "valuePositiveInt": capacity}]
        self.put(slot)
        return sid

    def slot_status(self, sid: str) -> str:
        return self.admin.get(f"/Slot/{sid}").json()["status"]


def iso(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_next_hour = [0]


def future(hours: int | None = None) -> datetime:
    """A distinct future time per call (so patients' bookings never overlap by accident)."""
    _next_hour[0] += 1
    base = datetime(2031, 1, 1, 3, 0, tzinfo=UTC)
    return base + timedelta(hours=hours if hours is not None else _next_hour[0])


def book_params(slot: str, patient: str, **extra: str) -> dict:
    params = [{"name": "slot", "valueReference": {"reference": f"Slot/{slot}"}},
              {"name": "patient", "valueReference": {"reference": f"Patient/{patient}"}},
              {"name": "appointmentType", "valueCodeableConcept": {"text": "new consultation"}},
              {"name": "reasonCode", "valueCodeableConcept": {"text": "fever"}}]
    for k, v in extra.items():
        params.append({"name": k, "valueReference": {"reference": v}})
    return {"resourceType": "Parameters", "parameter": params}


def assert_status_conflict(r: httpx.Response, *allowed: str) -> None:
    assert r.status_code == 409, r.text
    outcome = r.json()
    assert outcome["resourceType"] == "OperationOutcome"
    issue = outcome["issue"][0]
    assert issue["code"] == "conflict" and issue["expression"] == ["Appointment.status"], outcome
    for s in allowed:
        assert s in issue["diagnostics"], (s, issue["diagnostics"])


@pytest.fixture(scope="module")
def world(server: ServerProcess, database_url: str, client: httpx.Client) -> Iterator[World]:
    tenant = f"opd-{uuid.uuid4().hex[:6]}"
    r = client.post("/$tenants", json={"resourceType": "Parameters", "parameter": [
        {"name": "id", "valueString": tenant}, {"name": "name", "valueString": "OPD test"}]})
    assert r.status_code == 201, r.text
    bearer = issue_token(database_url, tenant=tenant, role="admin")
    w = World(server, database_url, tenant, _client(server, tenant, bearer), bearer)
    w.put({"resourceType": "Organization", "id": "hosp", "name": "Hospital"})
    w.put({"resourceType": "Location", "id": "opd-1", "name": "OPD 1", "managingOrganization": {"reference": "Organization/hosp"}})
    yield w
    w.admin.close()


def book(w: World, slot: str, patient: str, client: httpx.Client | None = None) -> httpx.Response:
    return (client or w.admin).post("/Appointment/$book", json=book_params(slot, patient))


# ---- booking ----------------------------------------------------------------------------------
def test_book_marks_the_slot_busy(world: World) -> None:
    """Appointment/$book: a booked Appointment on the slot (start/end/practitioner from the Slot and
    its Schedule) and the Slot busy, in one transaction (appointment.html, slot.html)."""
    doc, pat = world.doctor(), world.patient()
    start = future()
    sid = world.slot(doc, start)
    r = book(world, sid, pat)
    assert r.status_code == 201, r.text
    appt = r.json()
    assert appt["status"] == "booked" and appt["slot"] == [{"reference": f"Slot/{sid}"}]
    assert appt["start"] == iso(start) and appt["end"] == iso(start + timedelta(minutes=15))
    refs = {p["actor"]["reference"] for p in appt["participant"]}
    assert {f"Patient/{pat}", f"Practitioner/{doc}", "Location/opd-1"} <= refs
    assert r.headers["Location"].endswith(f"/Appointment/{appt['id']}/_history/1")
    assert world.slot_status(sid) == "busy"
    found = world.admin.get("/Appointment", params={"slot": f"Slot/{sid}"}).json()
    assert len(found["entry"]) == 1


def test_100_concurrent_bookings_of_one_slot_give_exactly_one(world: World) -> None:
    """Double booking is impossible: 100 concurrent $book of one slot (real HTTP) → one 201 and
    99 × 409 OperationOutcome (http.html: 409 conflict)."""
    doc = world.doctor()
    sid = world.slot(doc, future())
    patients = [world.patient() for _ in range(100)]

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=f"{world.server.base}/{world.tenant}", timeout=120,
                                     headers={"Authorization": f"Bearer {world.bearer}"},
                                     limits=httpx.Limits(max_connections=100)) as c:
            return await asyncio.gather(*(c.post("/Appointment/$book", json=book_params(sid, p)) for p in patients))

    answers = asyncio.run(run())
    codes = sorted(r.status_code for r in answers)
    assert codes.count(201) == 1 and codes.count(409) == 99, codes
    for r in answers:
        if r.status_code == 409:
            assert r.json()["issue"][0]["code"] == "conflict"
            assert r.json()["issue"][0]["expression"] == ["Appointment.slot"]
    bundle = world.admin.get("/Appointment", params={"slot": f"Slot/{sid}", "_count": "200"}).json()
    assert len(bundle.get("entry", [])) == 1
    assert world.slot_status(sid) == "busy"


def test_overlapping_bookings_by_one_patient_are_refused(world: World) -> None:
    """A patient cannot hold two overlapping active appointments (other doctors' slots too) → 409. R4 appointment.html (Appointment.participant, start/end)."""
    pat, d1, d2 = world.patient(), world.doctor(), world.doctor()
    start = future()
    s1 = world.slot(d1, start, minutes=30)
    s2 = world.slot(d2, start + timedelta(minutes=15), minutes=15)
    s3 = world.slot(d2, start + timedelta(minutes=30), minutes=15)  # touches, does not overlap
    assert book(world, s1, pat).status_code == 201
    r = book(world, s2, pat)
    assert r.status_code == 409, r.text
    assert r.json()["issue"][0]["expression"] == ["Appointment.participant.actor"]
    assert world.slot_status(s2) == "free"  # the refused booking left nothing behind
    assert book(world, s3, pat).status_code == 201


def test_overbooking_up_to_the_slot_capacity(world: World) -> None:
    """Overbooking only where the slot allows it (slot-capacity extension), up to its limit; the slot
    stays free until full. R4 slot.html (Slot.status, overbooked), appointment.html (Appointment.slot)."""
    doc = world.doctor()
    sid = world.slot(doc, future(), capacity=3)
    ids = []
    for i in range(3):
        r = book(world, sid, world.patient())
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
        assert world.slot_status(sid) == ("busy" if i == 2 else "free")
    r = book(world, sid, world.patient())
    assert r.status_code == 409 and "fully booked" in r.json()["issue"][0]["diagnostics"]
    r = world.admin.post(f"/Appointment/{ids[0]}/$cancel", json={"resourceType": "Parameters", "parameter": [
        {"name": "cancelationReason", "valueCodeableConcept": {"text": "patient request"}}]})
    assert r.status_code == 200, r.text
    assert world.slot_status(sid) == "free"


def test_plain_rest_writes_obey_the_same_rules(world: World) -> None:
    """A POST/PUT of a booked Appointment on a slot goes through the same check as $book (write hooks). R4 appointment.html (Appointment.slot), http.html#create/#update."""
    doc, p1, p2 = world.doctor(), world.patient(), world.patient()
    start = future()
    sid = world.slot(doc, start)
    appt = {"resourceType": "Appointment", "status": "booked", "slot": [{"reference": f"Slot/{sid}"}],
            "start": iso(start), "end": iso(start + timedelta(minutes=15)),
            "participant": [{"actor": {"reference": f"Patient/{p1}"}, "status": "accepted"},
                            {"actor": {"reference": f"Practitioner/{doc}"}, "status": "accepted"}]}
    r = world.admin.post("/Appointment", json=appt)
    assert r.status_code == 201, r.text
    assert world.slot_status(sid) == "busy"
    appt["participant"][0]["actor"]["reference"] = f"Patient/{p2}"
    r = world.admin.post("/Appointment", json=appt)
    assert r.status_code == 409 and r.json()["issue"][0]["expression"] == ["Appointment.slot"]
    r = world.admin.post("/", json={"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": appt, "request": {"method": "POST", "url": "Appointment"}}]})
    assert r.status_code == 409, r.text
    # a blocked slot (busy with nothing on it) cannot be booked either
    blocked = world.slot(doc, future(), status="busy")
    assert book(world, blocked, world.patient()).status_code == 409


# ---- lifecycle --------------------------------------------------------------------------------
def test_lifecycle_proposed_booked_arrived_fulfilled(world: World) -> None:
    """proposed → booked ($confirm) → arrived ($check-in, with its Encounter) → fulfilled ($complete,
    which finishes the Encounter) (appointment.html#statemachine)."""
    doc, pat = world.doctor(), world.patient()
    sid = world.slot(doc, future())
    proposed = {"resourceType": "Appointment", "status": "proposed", "slot": [{"reference": f"Slot/{sid}"}],
                "participant": [{"actor": {"reference": f"Patient/{pat}"}, "status": "needs-action"}]}
    r = world.admin.post("/Appointment", json=proposed)
    assert r.status_code == 201, r.text
    aid = r.json()["id"]
    assert world.slot_status(sid) == "free"  # a proposal does not take the slot
    r = world.admin.post(f"/Appointment/{aid}/$confirm")
    assert r.status_code == 200 and r.json()["status"] == "booked", r.text
    assert world.slot_status(sid) == "busy"
    r = world.admin.post(f"/Appointment/{aid}/$check-in")
    assert r.status_code == 200, r.text
    out = {p["name"]: p for p in r.json()["parameter"]}
    assert out["appointment"]["resource"]["status"] == "arrived"
    enc = out["encounter"]["resource"]
    assert enc["status"] == "arrived" and enc["class"]["code"] == "AMB"
    assert enc["appointment"] == [{"reference": f"Appointment/{aid}"}]
    assert enc["subject"] == {"reference": f"Patient/{pat}"}
    assert enc["participant"][0]["individual"] == {"reference": f"Practitioner/{doc}"}
    assert enc["location"][0]["location"] == {"reference": "Location/opd-1"}
    assert enc["serviceProvider"] == {"reference": "Organization/hosp"}
    assert out["token"]["valueInteger"] >= 1
    r = world.admin.post(f"/Appointment/{aid}/$complete")
    assert r.status_code == 200 and r.json()["status"] == "fulfilled", r.text
    assert world.admin.get(f"/Encounter/{enc['id']}").json()["status"] == "finished"
    assert world.slot_status(sid) == "busy"  # a fulfilled appointment used its slot


def test_encounter_finishing_fulfils_the_appointment(world: World) -> None:
    """An OPD Encounter set to finished (plain update) fulfils its arrived Appointment. R4 appointment.html (Appointment.status fulfilled), encounter.html (Encounter.appointment)."""
    doc, pat = world.doctor(), world.patient()
    aid = book(world, world.slot(doc, future()), pat).json()["id"]
    enc = {p["name"]: p for p in world.admin.post(f"/Appointment/{aid}/$check-in").json()["parameter"]}["encounter"]["resource"]
    enc["status"] = "finished"
    enc.pop("meta")
    assert world.admin.put(f"/Encounter/{enc['id']}", json=enc).status_code == 200
    assert world.admin.get(f"/Appointment/{aid}").json()["status"] == "fulfilled"


def test_illegal_transitions_answer_409_naming_the_allowed_ones(world: World) -> None:
    """Each illegal move → 409 OperationOutcome, expression Appointment.status, listing the allowed
    next statuses; the Appointment is unchanged. R4 appointment.html (Appointment.status), operationoutcome.html."""
    doc, pat = world.doctor(), world.patient()
    aid = book(world, world.slot(doc, future()), pat).json()["id"]
    current = world.admin.get(f"/Appointment/{aid}").json()
    for status in ("fulfilled", "proposed", "pending"):
        r = world.admin.put(f"/Appointment/{aid}", json={**current, "status": status})
        assert_status_conflict(r, "arrived", "cancelled", "noshow", "entered-in-error")
    assert_status_conflict(world.admin.post(f"/Appointment/{aid}/$complete"), "arrived", "cancelled")
    r = world.admin.post(f"/Appointment/{aid}/$cancel", json={"resourceType": "Parameters", "parameter": [
        {"name": "cancelationReason", "valueString": "clinic closed"}]})
    assert r.status_code == 200 and r.json()["cancelationReason"] == {"text": "clinic closed"}
    cancelled = r.json()
    for status in ("booked", "arrived", "fulfilled"):
        r = world.admin.put(f"/Appointment/{aid}", json={**cancelled, "status": status})
        assert_status_conflict(r, "entered-in-error")
    assert_status_conflict(world.admin.post(f"/Appointment/{aid}/$check-in"), "entered-in-error")
    assert_status_conflict(world.admin.post(f"/Appointment/{aid}/$confirm"), "entered-in-error")
    r = world.admin.patch(f"/Appointment/{aid}", headers={"Content-Type": "application/json-patch+json"},
                          json=[{"op": "replace", "path": "/status", "value": "booked"}])
    assert_status_conflict(r, "entered-in-error")
    r = world.admin.patch(f"/Appointment/{aid}", headers={"Content-Type": "application/json-patch+json"},
                          json=[{"op": "replace", "path": "/status", "value": "entered-in-error"}])
    assert r.status_code == 200, r.text
    r = world.admin.put(f"/Appointment/{aid}", json={**r.json(), "status": "booked"})
    assert_status_conflict(r)
    assert "none (a final status)" in r.json()["issue"][0]["diagnostics"]


def test_cancel_needs_a_reason_and_frees_the_slot(world: World) -> None:
    """$cancel requires cancelationReason (400 otherwise, nothing changes); it frees the slot, which
    can be booked again. R4 appointment.html (Appointment.cancelationReason), slot.html (Slot.status), operations.html."""
    doc, pat = world.doctor(), world.patient()
    sid = world.slot(doc, future())
    aid = book(world, sid, pat).json()["id"]
    r = world.admin.post(f"/Appointment/{aid}/$cancel", json={"resourceType": "Parameters", "parameter": []})
    assert r.status_code == 400 and "cancelationReason" in r.json()["issue"][0]["expression"][0]
    assert world.slot_status(sid) == "busy"
    r = world.admin.post(f"/Appointment/{aid}/$cancel", json={"resourceType": "Parameters", "parameter": [
        {"name": "cancelationReason", "valueCodeableConcept": {"coding": [
            {"system": "http://terminology.hl7.org/CodeSystem/appointment-cancellation-reason", "code": "pat"}]}}]})
    assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
    assert world.slot_status(sid) == "free"
    assert book(world, sid, world.patient()).status_code == 201


def test_no_show_only_after_the_grace_period_and_the_job(world: World) -> None:
    """booked → noshow only after start + FHIR_NOSHOW_GRACE_MINUTES (15); `fhir-server appointments
    mark-noshows` marks the overdue ones and frees their slots. R4 appointment.html (Appointment.status noshow)."""
    doc = world.doctor()
    soon = book(world, world.slot(doc, future()), world.patient()).json()["id"]
    r = world.admin.post(f"/Appointment/{soon}/$no-show")
    assert r.status_code == 409 and r.json()["issue"][0]["expression"] == ["Appointment.status"]
    now = datetime.now(UTC).replace(microsecond=0)
    past = [world.slot(doc, now - timedelta(hours=3 + i)) for i in range(3)]
    appts = [book(world, s, world.patient()).json()["id"] for s in past]
    r = world.admin.post(f"/Appointment/{appts[0]}/$no-show")
    assert r.status_code == 200 and r.json()["status"] == "noshow", r.text
    assert world.slot_status(past[0]) == "free"
    out = subprocess.run([sys.executable, "-m", "fhir_server.cli", "appointments", "mark-noshows", "--tenant", world.tenant],
                         env=server_env(DATABASE_URL=world.database_url), capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert "2 appointment(s) marked noshow" in out.stdout, out.stdout
    for aid in appts[1:]:
        assert world.admin.get(f"/Appointment/{aid}").json()["status"] == "noshow"
    assert world.admin.get(f"/Appointment/{soon}").json()["status"] == "booked"


def test_reschedule_moves_the_booking_atomically(world: World) -> None:
    """$reschedule: the same Appointment, next version, on the new slot; the old slot freed; a full
    new slot changes nothing. R4 appointment.html (Appointment.slot), slot.html (Slot.status), operations.html."""
    doc = world.doctor()
    s1, s2, s3 = world.slot(doc, future()), world.slot(doc, future()), world.slot(doc, future())
    aid = book(world, s1, world.patient()).json()["id"]
    assert book(world, s2, world.patient()).status_code == 201
    body = {"resourceType": "Parameters", "parameter": [{"name": "slot", "valueReference": {"reference": f"Slot/{s2}"}}]}
    r = world.admin.post(f"/Appointment/{aid}/$reschedule", json=body)
    assert r.status_code == 409, r.text
    assert world.slot_status(s1) == "busy" and world.admin.get(f"/Appointment/{aid}").json()["slot"][0]["reference"] == f"Slot/{s1}"
    body["parameter"][0]["valueReference"]["reference"] = f"Slot/{s3}"
    r = world.admin.post(f"/Appointment/{aid}/$reschedule", json=body)
    assert r.status_code == 200, r.text
    moved = r.json()
    assert moved["id"] == aid and moved["meta"]["versionId"] == "2" and moved["status"] == "booked"
    assert moved["slot"] == [{"reference": f"Slot/{s3}"}]
    s3_start = world.admin.get(f"/Slot/{s3}").json()["start"]
    assert moved["start"] == s3_start
    assert world.slot_status(s1) == "free" and world.slot_status(s3) == "busy"


# ---- check-in and the queue -------------------------------------------------------------------
def _checkin(c: httpx.Client, aid: str) -> tuple[dict, int]:
    r = c.post(f"/Appointment/{aid}/$check-in")
    assert r.status_code == 200, r.text
    out = {p["name"]: p for p in r.json()["parameter"]}
    return out["encounter"]["resource"], out["token"]["valueInteger"]


def test_check_in_twice_and_concurrently_gives_one_encounter(world: World) -> None:
    """Check-in is idempotent: sent twice, or 8 times at once, exactly one Encounter and one token. R4 appointment.html (Appointment.status arrived), encounter.html (Encounter.appointment)."""
    doc = world.doctor()
    aid = book(world, world.slot(doc, future()), world.patient()).json()["id"]
    e1, t1 = _checkin(world.admin, aid)
    e2, t2 = _checkin(world.admin, aid)
    assert (e1["id"], t1) == (e2["id"], t2) == (e1["id"], 1)
    aid2 = book(world, world.slot(doc, future()), world.patient()).json()["id"]

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=f"{world.server.base}/{world.tenant}", timeout=60,
                                     headers={"Authorization": f"Bearer {world.bearer}"}) as c:
            return await asyncio.gather(*(c.post(f"/Appointment/{aid2}/$check-in") for _ in range(8)))

    answers = asyncio.run(run())
    assert {r.status_code for r in answers} == {200}, [r.text for r in answers]
    encounters = {next(p for p in r.json()["parameter"] if p["name"] == "encounter")["resource"]["id"] for r in answers}
    assert len(encounters) == 1
    found = world.admin.get("/Encounter", params={"appointment": f"Appointment/{aid2}"}).json()
    assert len(found["entry"]) == 1
    assert len(world.admin.get(f"/Appointment/{aid2}/_history").json()["entry"]) == 2  # booked, arrived


def test_plain_update_to_arrived_opens_the_encounter(world: World) -> None:
    """Setting status arrived by a plain update checks in too (same hook as $check-in). R4 appointment.html (Appointment.status arrived), encounter.html."""
    doc = world.doctor()
    appt = book(world, world.slot(doc, future()), world.patient()).json()
    appt["status"] = "arrived"
    assert world.admin.put(f"/Appointment/{appt['id']}", json=appt).status_code == 200
    found = world.admin.get("/Encounter", params={"appointment": f"Appointment/{appt['id']}"}).json()
    assert len(found["entry"]) == 1
    enc = found["entry"][0]["resource"]
    assert enc["identifier"][0]["system"] == TOKEN_SYSTEM and enc["identifier"][0]["value"] == "1"


def test_tokens_count_per_doctor_per_day_and_the_queue_is_in_token_order(world: World) -> None:
    """Tokens 1, 2, 3 in check-in order per doctor and day, independent per doctor; the queue is one
    search away (project SearchParameters token, queue-date) and Encounter/$queue. R4 encounter.html (Encounter.identifier, Encounter.participant)."""
    d1, d2 = world.doctor(), world.doctor()
    a = [book(world, world.slot(d1, future()), world.patient()).json()["id"] for _ in range(3)]
    b = book(world, world.slot(d2, future()), world.patient()).json()["id"]
    tokens = [_checkin(world.admin, x)[1] for x in (a[2], a[0])]
    assert _checkin(world.admin, b)[1] == 1
    tokens.append(_checkin(world.admin, a[1])[1])
    assert tokens == [1, 2, 3]
    r = world.admin.get("/Encounter", params={"practitioner": f"Practitioner/{d1}", "queue-date": TODAY,
                                              "class": "AMB", "status": "arrived,in-progress", "_sort": "-token"})
    assert r.status_code == 200, r.text
    listed = [e["resource"] for e in r.json()["entry"]]
    assert [e["identifier"][0]["value"] for e in listed] == ["3", "2", "1"]
    assert [e["appointment"][0]["reference"] for e in listed] == [f"Appointment/{x}" for x in (a[1], a[0], a[2])]
    r = world.admin.get("/Encounter", params={"practitioner": f"Practitioner/{d1}", "queue-date": TODAY, "_sort": "token"})
    assert [e["resource"]["identifier"][0]["value"] for e in r.json()["entry"]] == ["1", "2", "3"]
    r = world.admin.get("/Encounter/$queue", params={"practitioner": f"Practitioner/{d1}"})
    assert r.status_code == 200, r.text
    entries = [{p["name"]: p for p in e["part"]} for e in r.json()["parameter"]]
    assert [e["token"]["valueInteger"] for e in entries] == [1, 2, 3]
    assert all(e["waitingMinutes"]["valueInteger"] >= 0 and e["status"]["valueCode"] == "arrived" for e in entries)


def test_walk_in_check_in(world: World) -> None:
    """Encounter/$check-in without an appointment: an OPD Encounter with the next token of the queue. R4 encounter.html, operations.html."""
    doc, pat = world.doctor(), world.patient()
    aid = book(world, world.slot(doc, future()), world.patient()).json()["id"]
    assert _checkin(world.admin, aid)[1] == 1
    r = world.admin.post("/Encounter/$check-in", json={"resourceType": "Parameters", "parameter": [
        {"name": "patient", "valueReference": {"reference": f"Patient/{pat}"}},
        {"name": "practitioner", "valueReference": {"reference": f"Practitioner/{doc}"}},
        {"name": "location", "valueReference": {"reference": "Location/opd-1"}}]})
    assert r.status_code == 201, r.text
    out = {p["name"]: p for p in r.json()["parameter"]}
    assert out["token"]["valueInteger"] == 2 and "appointment" not in out
    assert out["encounter"]["resource"]["subject"] == {"reference": f"Patient/{pat}"}
    r = world.admin.post("/Encounter/$check-in", json={"resourceType": "Parameters", "parameter": [
        {"name": "patient", "valueReference": {"reference": f"Patient/{pat}"}}]})
    assert r.status_code == 400


# ---- tenants and roles ------------------------------------------------------------------------
def test_tenant_isolation(world: World, server: ServerProcess, database_url: str, client: httpx.Client) -> None:
    """Another tenant cannot see nor book this tenant's slots, nor check in its appointments. R4 security.html, slot.html, appointment.html."""
    doc = world.doctor()
    sid = world.slot(doc, future())
    aid = book(world, world.slot(doc, future()), world.patient()).json()["id"]
    other_tenant = f"opd-{uuid.uuid4().hex[:6]}"
    assert client.post("/$tenants", json={"resourceType": "Parameters", "parameter": [
        {"name": "id", "valueString": other_tenant}, {"name": "name", "valueString": "Other"}]}).status_code == 201
    with _client(server, other_tenant, issue_token(database_url, tenant=other_tenant, role="admin")) as other:
        other.put("/Patient/x", json={"resourceType": "Patient", "id": "x"})
        r = other.post("/Appointment/$book", json=book_params(sid, "x"))
        assert r.status_code == 422 and r.json()["issue"][0]["expression"] == ["Appointment.slot"], r.text
        assert other.post(f"/Appointment/{aid}/$check-in").status_code == 404
    assert world.slot_status(sid) == "free"


def test_roles_receptionist_doctor_patient(world: World) -> None:
    """A receptionist books, cancels, checks in; a doctor may not book but may complete and see the
    queue; a patient (SMART patient context) books and cancels only their own. R4 security.html, appointment.html, operations.html."""
    doc, pat, other = world.doctor(), world.patient(), world.patient()
    url = world.database_url
    with _client(world.server, world.tenant, issue_token(url, tenant=world.tenant, role="receptionist")) as rec, \
         _client(world.server, world.tenant, issue_token(url, tenant=world.tenant, role="doctor")) as dr, \
         _client(world.server, world.tenant, issue_token(url, tenant=world.tenant, role="patient", patient=pat)) as me:
        r = book(world, world.slot(doc, future()), world.patient(), client=rec)
        assert r.status_code == 201, r.text
        aid = r.json()["id"]
        r = book(world, world.slot(doc, future()), world.patient(), client=dr)
        assert r.status_code == 403
        _checkin(rec, aid)
        assert dr.get("/Encounter/$queue", params={"practitioner": f"Practitioner/{doc}"}).status_code == 200
        assert dr.post(f"/Appointment/{aid}/$complete").json()["status"] == "fulfilled"
        # the patient: own booking (patient defaults to the token's), not another's
        mine_slot = world.slot(doc, future())
        r = me.post("/Appointment/$book", json={"resourceType": "Parameters", "parameter": [
            {"name": "slot", "valueReference": {"reference": f"Slot/{mine_slot}"}}]})
        assert r.status_code == 201, r.text
        mine = r.json()["id"]
        assert book(world, world.slot(doc, future()), other, client=me).status_code == 403
        theirs = book(world, world.slot(doc, future()), other).json()["id"]
        cancel = {"resourceType": "Parameters", "parameter": [{"name": "cancelationReason", "valueString": "travel"}]}
        assert me.post(f"/Appointment/{theirs}/$cancel", json=cancel).status_code == 404
        assert me.post(f"/Appointment/{mine}/$check-in").status_code == 403
        r = me.post(f"/Appointment/{mine}/$cancel", json=cancel)
        assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
        assert world.slot_status(mine_slot) == "free"
        # entered-in-error: admin/receptionist only (a doctor cannot write Appointments at all)
        appt = world.admin.get(f"/Appointment/{theirs}").json()
        assert dr.put(f"/Appointment/{theirs}", json={**appt, "status": "entered-in-error"}).status_code == 403
        r = rec.put(f"/Appointment/{theirs}", json={**appt, "status": "entered-in-error"})
        assert r.status_code == 200, r.text
