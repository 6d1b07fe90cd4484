"""Availability (fhir_server/workflows/availability/README.md): doctors' hours (PractitionerRole
``availableTime``/``notAvailable``, Schedule + ``schedule-*`` extensions) → materialised free Slots
(R4 slot.html, schedule.html), ``Schedule/$generate-slots``, the rolling horizon (``schedule roll``),
``Appointment/$find``, plain Slot search, the doctor-owns-their-hours rule and tenant isolation.
Real server over HTTP, real PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.conftest import ServerProcess, issue_token, server_env

SD = "https://fhir-server.example.org/fhir/StructureDefinition/"
VT = "https://fhir-server.example.org/fhir/CodeSystem/visit-type"
FLAG = "https://fhir-server.example.org/fhir/CodeSystem/schedule-flag"
WEEKDAYS = ["mon", "tue", "wed", "thu", "fri"]


def _monday() -> date:
    """A Monday at least three days ahead (every slot of that week is in the future)."""
    d = datetime.now(UTC).date() + timedelta(days=3)
    return d + timedelta(days=(7 - d.weekday()) % 7)


MONDAY = _monday()


def _key() -> str:
    return uuid.uuid4().hex[:10]


def duration(minutes: int) -> dict[str, Any]:
    return {"value": minutes, "unit": "min", "system": "http://unitsofmeasure.org", "code": "min"}


def hours(*sessions: tuple[str, str], days: list[str] = WEEKDAYS) -> list[dict[str, Any]]:
    return [{"daysOfWeek": days, "availableStartTime": s, "availableEndTime": e} for s, e in sessions]


def make_doctor(
    c: httpx.Client, key: str, *, sessions: list[dict[str, Any]] | None = None, slot: int = 30,
    horizon: int = 21, location: str = "clinic-1", specialty: str = "419772000", extra: list[dict[str, Any]] | None = None,
    not_available: list[dict[str, Any]] | None = None,
) -> dict[str, str]:
    """Practitioner/{key}, PractitionerRole/{key}-pr at Location/{location}, Schedule/{key}-s."""
    ids = {"practitioner": key, "role": f"{key}-pr", "schedule": f"{key}-s", "location": location}
    r = c.put(f"/Location/{location}", json={"resourceType": "Location", "id": location, "name": location})
    assert r.status_code in (200, 201), r.text
    r = c.put(f"/Practitioner/{key}", json={"resourceType": "Practitioner", "id": key, "name": [{"family": key}]})
    assert r.status_code in (200, 201), r.text
    role = {
        "resourceType": "PractitionerRole", "id": ids["role"], "active": True,
        "practitioner": {"reference": f"Practitioner/{key}"}, "location": [{"reference": f"Location/{location}"}],
        "specialty": [{"coding": [{"system": "http://snomed.info/sct", "code": specialty}]}],
        "availableTime": sessions if sessions is not None else hours(("09:00:00", "12:00:00"), ("14:00:00", "16:00:00")),
    }
    if not_available:
        role["notAvailable"] = not_available
    r = c.put(f"/PractitionerRole/{ids['role']}", json=role)
    assert r.status_code in (200, 201), r.text
    schedule = {
        "resourceType": "Schedule", "id": ids["schedule"], "active": True,
        "actor": [{"reference": f"PractitionerRole/{ids['role']}"}, {"reference": f"Practitioner/{key}"},
                  {"reference": f"Location/{location}"}],
        "extension": [
            {"url": SD + "schedule-slot-duration", "valueDuration": duration(slot)},
            {"url": SD + "schedule-horizon-days", "valuePositiveInt": horizon},
            *(extra or []),
        ],
    }
    r = c.put(f"/Schedule/{ids['schedule']}", json=schedule)
    assert r.status_code in (200, 201), r.text
    return ids


def slots(c: httpx.Client, schedule: str, day: date | None = None, **params: str) -> list[dict[str, Any]]:
    q: dict[str, Any] = {"schedule": f"Schedule/{schedule}", "_count": "1000", "_sort": "start", **params}
    if day is not None:
        q["start"] = [f"ge{day.isoformat()}T00:00:00Z", f"lt{(day + timedelta(days=1)).isoformat()}T00:00:00Z"]
    r = c.get("/Slot", params=q)
    assert r.status_code == 200, r.text
    return [e["resource"] for e in r.json().get("entry", []) if e["search"]["mode"] == "match"]


def times(found: list[dict[str, Any]]) -> list[str]:
    return [s["start"][11:16] for s in found]


def find(c: httpx.Client, **params: Any) -> dict[str, Any]:
    r = c.get("/Appointment/$find", params=params)
    assert r.status_code == 200, r.text
    return r.json()


def matches(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]


def cli(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fhir_server.cli", *args],
                          env=server_env(DATABASE_URL=database_url), capture_output=True, text=True, check=False)


# ---- hours → slots ---------------------------------------------------------------------------
def test_weekday_sessions_with_break_become_slots(client: httpx.Client) -> None:
    """schedule.html, practitionerrole.html#availableTime: two sessions a weekday, a break, 30-min slots."""
    brk = {"url": SD + "schedule-break", "extension": [{"url": "start", "valueTime": "10:30:00"},
                                                       {"url": "end", "valueTime": "11:00:00"}]}
    ids = make_doctor(client, _key(), extra=[brk])
    monday = slots(client, ids["schedule"], MONDAY)
    assert times(monday) == ["09:00", "09:30", "10:00", "11:00", "11:30", "14:00", "14:30", "15:00", "15:30"]
    assert all(s["status"] == "free" and s["schedule"]["reference"] == f"Schedule/{ids['schedule']}" for s in monday)
    assert monday[0]["end"].endswith("09:30:00Z")
    assert {"url": SD + "slot-capacity", "valuePositiveInt": 1} in monday[0]["extension"]
    assert slots(client, ids["schedule"], MONDAY + timedelta(days=5)) == []  # Saturday
    assert slots(client, ids["schedule"], MONDAY + timedelta(days=6)) == []  # Sunday
    assert len(slots(client, ids["schedule"], MONDAY + timedelta(days=4))) == 9  # Friday


def test_hours_are_local_to_the_schedule_time_zone(client: httpx.Client) -> None:
    """``schedule-timezone``: 09:00 is 09:00 in Asia/Kolkata; Slot.start carries the offset (R4 instant). R4 schedule.html, slot.html (Slot.start), datatypes.html#instant."""
    tz = {"url": SD + "schedule-timezone", "valueCode": "Asia/Kolkata"}
    ids = make_doctor(client, _key(), sessions=hours(("09:00:00", "10:00:00")), extra=[tz])
    monday = slots(client, ids["schedule"], MONDAY)
    assert [s["start"] for s in monday] == [f"{MONDAY}T09:00:00+05:30", f"{MONDAY}T09:30:00+05:30"]
    found = matches(find(client, practitioner=ids["practitioner"], start=MONDAY.isoformat(), end=MONDAY.isoformat()))
    assert [s["id"] for s in found] == [s["id"] for s in monday]


def test_leave_and_facility_holiday_leave_no_slots(client: httpx.Client) -> None:
    """practitionerrole.html#notAvailable (leave) and the Location ``schedule-holiday`` extension."""
    tuesday, wednesday = MONDAY + timedelta(days=1), MONDAY + timedelta(days=2)
    loc = f"loc-{_key()}"
    ids = make_doctor(client, _key(), location=loc, not_available=[
        {"description": "Conference", "during": {"start": tuesday.isoformat(), "end": tuesday.isoformat()}}])
    assert slots(client, ids["schedule"], tuesday) == []
    assert len(slots(client, ids["schedule"], wednesday)) == 10
    holiday = {"resourceType": "Location", "id": loc, "name": loc, "extension": [{
        "url": SD + "schedule-holiday",
        "extension": [{"url": "during", "valuePeriod": {"start": wednesday.isoformat(), "end": wednesday.isoformat()}},
                      {"url": "description", "valueString": "Festival"}]}]}
    r = client.put(f"/Location/{loc}", json=holiday)
    assert r.status_code == 200, r.text
    assert slots(client, ids["schedule"], wednesday) == []
    assert len(slots(client, ids["schedule"], MONDAY)) == 10
    # a new leave on the role removes that day's free slots at once
    role = client.get(f"/PractitionerRole/{ids['role']}").json()
    role["notAvailable"].append({"description": "Sick", "during": {"start": f"{MONDAY}T14:00:00Z", "end": f"{MONDAY}T23:59:00Z"}})
    assert client.put(f"/PractitionerRole/{ids['role']}", json=role).status_code == 200
    assert times(slots(client, ids["schedule"], MONDAY)) == ["09:00", "09:30", "10:00", "10:30", "11:00", "11:30"]


def test_bad_hours_are_refused_and_write_nothing(client: httpx.Client) -> None:
    """Bad input writes nothing: a malformed extension is a 400 naming it. R4 schedule.html, operationoutcome.html."""
    key = _key()
    bad = {"resourceType": "Schedule", "id": key, "actor": [{"reference": f"Practitioner/{key}"}],
           "extension": [{"url": SD + "schedule-timezone", "valueCode": "Mars/Olympus"}]}
    r = client.put(f"/Schedule/{key}", json=bad)
    assert r.status_code == 400, r.text
    assert "schedule-timezone" in r.json()["issue"][0]["expression"][0]
    assert client.get(f"/Schedule/{key}").status_code == 404


def test_generate_slots_twice_creates_nothing_new(client: httpx.Client) -> None:
    """Idempotent ``Schedule/[id]/$generate-slots``: deterministic ids per schedule and start. R4 slot.html, schedule.html, operations.html."""
    ids = make_doctor(client, _key(), horizon=14)
    before = slots(client, ids["schedule"])
    r = client.post(f"/Schedule/{ids['schedule']}/$generate-slots")
    assert r.status_code == 200, r.text
    counts = {p["name"]: p.get("valueInteger") for p in r.json()["parameter"][0]["part"]}
    assert counts["created"] == counts["deleted"] == counts["updated"] == 0
    assert counts["planned"] == len(before) > 0
    after = slots(client, ids["schedule"])
    assert [(s["id"], s["meta"]["versionId"]) for s in after] == [(s["id"], s["meta"]["versionId"]) for s in before]
    assert client.post("/Schedule/unknown-schedule/$generate-slots").status_code == 404


def test_inactive_or_deleted_schedule_keeps_no_free_slots(client: httpx.Client) -> None:
    """schedule.html ``active``: an inactive Schedule offers nothing; deleting it removes its free slots
    (a booked one stays, flagged)."""
    ids = make_doctor(client, _key(), horizon=7)
    sched = client.get(f"/Schedule/{ids['schedule']}").json()
    sched["active"] = False
    assert client.put(f"/Schedule/{ids['schedule']}", json=sched).status_code == 200
    assert slots(client, ids["schedule"]) == []
    sched["active"] = True
    assert client.put(f"/Schedule/{ids['schedule']}", json=sched).status_code == 200
    again = slots(client, ids["schedule"])
    assert len(again) > 0 and all(s["meta"]["versionId"] == "3" for s in again)  # deleted, then back
    booked = {**again[0], "status": "busy"}
    assert client.put(f"/Slot/{booked['id']}", json=booked).status_code == 200
    assert client.delete(f"/Schedule/{ids['schedule']}").status_code == 204
    left = slots(client, ids["schedule"])
    assert [s["id"] for s in left] == [booked["id"]] and left[0]["meta"]["tag"][0]["code"] == "needs-rebooking"


def test_change_of_hours_keeps_booked_slot_and_flags_it(client: httpx.Client) -> None:
    """A change of hours updates free slots and never touches a booked one: it is flagged for rebooking. R4 slot.html (Slot.status), schedule.html."""
    ids = make_doctor(client, _key())
    monday = slots(client, ids["schedule"], MONDAY)
    booked = next(s for s in monday if s["start"][11:16] == "14:30")
    booked["status"] = "busy"
    assert client.put(f"/Slot/{booked['id']}", json=booked).status_code == 200
    role = client.get(f"/PractitionerRole/{ids['role']}").json()
    role["availableTime"] = hours(("09:00:00", "12:00:00"))  # no afternoons any more
    assert client.put(f"/PractitionerRole/{ids['role']}", json=role).status_code == 200
    now_monday = slots(client, ids["schedule"], MONDAY)
    assert times(now_monday) == ["09:00", "09:30", "10:00", "10:30", "11:00", "11:30", "14:30"]
    kept = client.get(f"/Slot/{booked['id']}").json()
    assert kept["status"] == "busy" and kept["start"] == booked["start"]
    assert {"system": FLAG, "code": "needs-rebooking"}.items() <= kept["meta"]["tag"][0].items()
    assert any(e["url"] == SD + "schedule-rebook-reason" for e in kept["extension"])
    flagged = client.get("/Slot", params={"_tag": f"{FLAG}|needs-rebooking", "schedule": f"Schedule/{ids['schedule']}"}).json()
    assert [e["resource"]["id"] for e in flagged["entry"]] == [booked["id"]]
    # the hours come back: free afternoon slots again, the booked one unflagged and still busy
    role["availableTime"] = hours(("09:00:00", "12:00:00"), ("14:00:00", "16:00:00"))
    assert client.put(f"/PractitionerRole/{ids['role']}", json=role).status_code == 200
    again = slots(client, ids["schedule"], MONDAY)
    assert len(again) == 10 and {s["status"] for s in again if s["id"] != booked["id"]} == {"free"}
    back = client.get(f"/Slot/{booked['id']}").json()
    assert back["status"] == "busy" and "tag" not in back["meta"]


def test_slots_booked_through_book_survive_a_change_of_hours(client: httpx.Client) -> None:
    """With the booking workflow (``Appointment/$book``, capacity 2 = overbooking): a full (busy) slot and a
    part-booked (still free) one are both kept and flagged when the hours drop them; ``$find`` offers neither. R4 slot.html (Slot.status, overbooked), appointment.html (Appointment.slot)."""
    ids = make_doctor(client, _key(), extra=[{"url": SD + "slot-capacity", "valuePositiveInt": 2}])
    monday = {s["start"][11:16]: s for s in slots(client, ids["schedule"], MONDAY)}
    assert {"url": SD + "slot-capacity", "valuePositiveInt": 2} in monday["14:30"]["extension"]
    patients = []
    for n in range(3):
        pid = f"pat-{_key()}"
        assert client.put(f"/Patient/{pid}", json={"resourceType": "Patient", "id": pid}).status_code == 201
        patients.append(pid)
    for pid, at in zip(patients, ["14:30", "15:00", "15:00"], strict=True):
        body = {"resourceType": "Parameters", "parameter": [
            {"name": "slot", "valueReference": {"reference": f"Slot/{monday[at]['id']}"}},
            {"name": "patient", "valueReference": {"reference": f"Patient/{pid}"}}]}
        r = client.post("/Appointment/$book", json=body, headers={"Content-Type": "application/fhir+json"})
        assert r.status_code == 201, r.text
    assert client.get(f"/Slot/{monday['14:30']['id']}").json()["status"] == "free"  # 1 of 2
    assert client.get(f"/Slot/{monday['15:00']['id']}").json()["status"] == "busy"  # 2 of 2
    role = client.get(f"/PractitionerRole/{ids['role']}").json()
    role["availableTime"] = hours(("09:00:00", "12:00:00"))
    assert client.put(f"/PractitionerRole/{ids['role']}", json=role).status_code == 200
    after = {s["start"][11:16]: s for s in slots(client, ids["schedule"], MONDAY)}
    assert sorted(k for k in after if k >= "14:00") == ["14:30", "15:00"]
    for at, status in (("14:30", "free"), ("15:00", "busy")):  # never changed, only flagged
        assert after[at]["meta"]["tag"][0]["code"] == "needs-rebooking"
        assert after[at]["status"] == status
    offered = times(matches(find(client, practitioner=ids["practitioner"], start=MONDAY.isoformat(), end=MONDAY.isoformat())))
    assert "14:30" not in offered and offered[-1] == "11:30"


def test_rolling_horizon_roll_over(client: httpx.Client, database_url: str) -> None:
    """``fhir-server schedule roll``: the horizon moves with the days; a second run writes nothing. R4 schedule.html (Schedule.planningHorizon), slot.html."""
    ids = make_doctor(client, _key(), horizon=7, sessions=hours(("09:00:00", "10:00:00"), days=WEEKDAYS + ["sat", "sun"]))
    first = slots(client, ids["schedule"])
    last = max(s["start"] for s in first)
    later = (datetime.now(UTC) + timedelta(days=3)).isoformat()
    out = cli(database_url, "schedule", "roll", "--tenant", "default", "--schedule", ids["schedule"], "--now", later)
    assert out.returncode == 0, out.stderr
    assert "created 6" in out.stdout, out.stdout  # three more days of two slots
    rolled = slots(client, ids["schedule"])
    assert len(rolled) == len(first) + 6 and max(s["start"] for s in rolled) > last
    out = cli(database_url, "schedule", "roll", "--tenant", "default", "--schedule", ids["schedule"], "--now", later)
    assert "created 0\tupdated 0\tdeleted 0" in out.stdout, out.stdout


# ---- $find ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clinic(client: httpx.Client) -> dict[str, Any]:
    """Three doctors: A (cardiology, clinic X, 09-10), B (cardiology, clinic Y, 08:30-10), C (dermatology, clinic X, 11-12)."""
    x, y = f"x-{_key()}", f"y-{_key()}"
    a = make_doctor(client, _key(), location=x, specialty="394579002", sessions=hours(("09:00:00", "10:00:00")))
    b = make_doctor(client, _key(), location=y, specialty="394579002", sessions=hours(("08:30:00", "10:00:00")))
    c = make_doctor(client, _key(), location=x, specialty="394582007", sessions=hours(("11:00:00", "12:00:00")))
    return {"a": a, "b": b, "c": c, "x": x, "y": y}


def test_find_soonest_first_with_includes(client: httpx.Client, clinic: dict[str, Any]) -> None:
    """``Appointment/$find``: a searchset of free Slots, soonest first, Schedule and PractitionerRole included. R4 slot.html, search.html#include, operations.html."""
    day = MONDAY.isoformat()
    bundle = find(client, start=day, end=day, _count="50", specialty="http://snomed.info/sct|394579002")
    assert bundle["type"] == "searchset"
    found = matches(bundle)
    starts = [s["start"] for s in found]
    assert starts == sorted(starts) and len(found) == 5  # A 09:00 09:30, B 08:30 09:00 09:30
    assert times(found)[0] == "08:30"
    schedules = {s["schedule"]["reference"] for s in found}
    assert schedules == {f"Schedule/{clinic['a']['schedule']}", f"Schedule/{clinic['b']['schedule']}"}
    included = {f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in bundle["entry"] if e["search"]["mode"] == "include"}
    assert included == schedules | {f"PractitionerRole/{clinic['a']['role']}", f"PractitionerRole/{clinic['b']['role']}"}


@pytest.mark.parametrize(("params", "who", "n"), [
    ({"practitioner": "a"}, {"a"}, 2),
    ({"practitioner": "Practitioner/c"}, {"c"}, 2),
    ({"location": "x"}, {"a", "c"}, 4),
    ({"location": "Location/y"}, {"b"}, 3),
    ({"specialty": "394582007"}, {"c"}, 2),
    ({"specialty": "394579002", "location": "x"}, {"a"}, 2),
    ({"practitioner": "b", "_count": "1"}, {"b"}, 1),
])
def test_find_filters(client: httpx.Client, clinic: dict[str, Any], params: dict[str, str], who: set[str], n: int) -> None:
    """``$find`` filters: practitioner, facility (location), specialty (PractitionerRole.specialty), _count. R4 slot.html, schedule.html (Schedule.actor), practitionerrole.html (PractitionerRole.specialty), search.html#count."""
    resolved = {}
    for k, v in params.items():
        prefix, _, name = v.rpartition("/")
        if k == "practitioner":
            resolved[k] = (prefix + "/" if prefix else "") + clinic[name]["practitioner"]
        elif k == "location":
            resolved[k] = (prefix + "/" if prefix else "") + clinic[name]
        else:
            resolved[k] = v
    found = matches(find(client, start=MONDAY.isoformat(), end=MONDAY.isoformat(), **resolved))
    schedules = {clinic[w]["schedule"] for w in who}
    assert {s["schedule"]["reference"].split("/")[1] for s in found} == schedules
    assert len(found) == n


def test_find_date_range_and_bad_input(client: httpx.Client, clinic: dict[str, Any]) -> None:
    """``start``/``end`` bound the search (a date means the whole local day); bad values are 400. R4 slot.html (Slot.start), search.html#date, operationoutcome.html."""
    tue = (MONDAY + timedelta(days=1)).isoformat()
    found = matches(find(client, practitioner=clinic["a"]["practitioner"], start=tue, end=(MONDAY + timedelta(days=2)).isoformat()))
    assert [s["start"][:10] for s in found] == [tue, tue, (MONDAY + timedelta(days=2)).isoformat(), (MONDAY + timedelta(days=2)).isoformat()]
    found = matches(find(client, practitioner=clinic["a"]["practitioner"], start=f"{tue}T09:15:00Z", end=f"{tue}T12:00:00Z"))
    assert times(found) == ["09:30"]
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "practitioner", "valueString": clinic["a"]["practitioner"]},
        {"name": "start", "valueDateTime": f"{tue}T09:15:00Z"}, {"name": "end", "valueDateTime": f"{tue}T12:00:00Z"}]}
    r = client.post("/Appointment/$find", json=body, headers={"Content-Type": "application/fhir+json"})
    assert r.status_code == 200, r.text
    assert times(matches(r.json())) == ["09:30"]
    r = client.get("/Appointment/$find", params={"start": "next week"})
    assert r.status_code == 400 and r.json()["issue"][0]["expression"] == ["start"]
    r = client.get("/Appointment/$find", params={"colour": "blue"})
    assert r.status_code == 400


def test_find_visit_type_needs_consecutive_slots(client: httpx.Client) -> None:
    """A visit longer than one slot (Panchakarma, 90 min on 30-min slots) needs three consecutive free
    slots; ``$find`` returns the first slot of each run and says so. R4 slot.html, appointment.html (Appointment.minutesDuration)."""
    panchakarma = {"url": SD + "schedule-visit-type", "extension": [
        {"url": "type", "valueCoding": {"system": VT, "code": "panchakarma"}},
        {"url": "duration", "valueDuration": duration(90)}]}
    follow_up = {"url": SD + "schedule-visit-type", "extension": [
        {"url": "type", "valueCoding": {"system": VT, "code": "follow-up"}},
        {"url": "duration", "valueDuration": duration(30)}]}
    ids = make_doctor(client, _key(), sessions=hours(("09:00:00", "12:00:00")), extra=[panchakarma, follow_up])
    day = MONDAY.isoformat()
    found = find(client, practitioner=ids["practitioner"], start=day, end=day, **{"visit-type": f"{VT}|panchakarma"})
    assert times(matches(found)) == ["09:00", "09:30", "10:00", "10:30"]
    assert "3 consecutive" in next(e for e in found["entry"] if e["search"]["mode"] == "outcome")["resource"]["issue"][0]["diagnostics"]
    ten = next(s for s in slots(client, ids["schedule"], MONDAY) if s["start"][11:16] == "10:00")
    ten["status"] = "busy"
    assert client.put(f"/Slot/{ten['id']}", json=ten).status_code == 200
    found = find(client, practitioner=ids["practitioner"], start=day, end=day, **{"visit-type": "panchakarma"})
    assert times(matches(found)) == ["10:30"]  # 09:00/09:30 runs cross the busy 10:00
    one = matches(find(client, practitioner=ids["practitioner"], start=day, end=day, **{"visit-type": "follow-up"}))
    assert times(one) == ["09:00", "09:30", "10:30", "11:00", "11:30"]
    assert matches(find(client, practitioner=ids["practitioner"], start=day, end=day, **{"visit-type": "procedure"})) == []


def test_plain_slot_search_by_schedule_actor(client: httpx.Client, clinic: dict[str, Any], db: Any) -> None:
    """search.html#chaining: ``Slot?schedule.actor=…&status=free&start=ge…`` finds the same slots."""
    # what autovacuum does within a minute of the slots' insert: on statistics of the empty tables the
    # chained search's plan nests loops over every slot (seconds); see the package README
    db.execute("ANALYZE resource, idx_reference, idx_token, idx_date")
    r = client.get("/Slot", params={"schedule.actor": f"Practitioner/{clinic['a']['practitioner']}", "status": "free",
                                    "start": [f"ge{MONDAY}T00:00:00Z", f"lt{MONDAY + timedelta(days=1)}T00:00:00Z"],
                                    "_sort": "start"})
    assert r.status_code == 200, r.text
    assert times([e["resource"] for e in r.json()["entry"]]) == ["09:00", "09:30"]


def test_find_in_capability_statement(client: httpx.Client) -> None:
    """The operations are listed in the CapabilityStatement (capabilitystatement.html#rest.resource.operation)."""
    cs = client.get("/metadata").json()
    by_type = {r["type"]: r for r in cs["rest"][0]["resource"]}
    assert "find" in {o["name"] for o in by_type["Appointment"].get("operation", [])}
    assert "generate-slots" in {o["name"] for o in by_type["Schedule"].get("operation", [])}
    # the extensions and the visit types are served like the other project definitions
    r = client.get("/StructureDefinition", params={"url": SD + "schedule-visit-type"})
    assert r.status_code == 200 and r.json().get("total", len(r.json().get("entry", []))) >= 1, r.text


# ---- permissions and tenants ------------------------------------------------------------------
def _as(server: ServerProcess, token: str) -> httpx.Client:
    return httpx.Client(base_url=server.base, timeout=30,
                        headers={"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"})


def test_doctor_may_change_only_their_own_hours(client: httpx.Client, server: ServerProcess, database_url: str) -> None:
    """Roles: a doctor may set their own hours, not another doctor's; a receptionist may set anyone's. R4 security.html, schedule.html."""
    mine, other = make_doctor(client, _key()), make_doctor(client, _key())
    doctor = _as(server, issue_token(database_url, role="doctor", **{"fhir-user": f"Practitioner/{mine['practitioner']}"}))
    reception = _as(server, issue_token(database_url, role="receptionist"))
    with doctor, reception:
        role = client.get(f"/PractitionerRole/{other['role']}").json()
        role["availableTime"] = hours(("07:00:00", "08:00:00"))
        r = doctor.put(f"/PractitionerRole/{other['role']}", json=role)
        assert r.status_code == 403 and r.json()["issue"][0]["code"] == "forbidden", r.text
        assert len(slots(client, other["schedule"], MONDAY)) == 10  # nothing changed
        hijack = client.get(f"/PractitionerRole/{mine['role']}").json()
        hijack["practitioner"] = {"reference": f"Practitioner/{other['practitioner']}"}
        assert doctor.put(f"/PractitionerRole/{mine['role']}", json=hijack).status_code == 403
        sched = client.get(f"/Schedule/{other['schedule']}").json()
        assert doctor.put(f"/Schedule/{other['schedule']}", json=sched).status_code == 403
        # their own name on the Schedule, another doctor's PractitionerRole: refused too, nothing written
        sneaky = {"resourceType": "Schedule", "id": f"{mine['practitioner']}-s2",
                  "actor": [{"reference": f"PractitionerRole/{other['role']}"}, {"reference": f"Practitioner/{mine['practitioner']}"}]}
        r = doctor.put(f"/Schedule/{sneaky['id']}", json=sneaky)
        assert r.status_code == 403, r.text
        assert client.get(f"/Schedule/{sneaky['id']}").status_code == 404
        assert doctor.post(f"/Schedule/{other['schedule']}/$generate-slots").status_code == 403
        own = client.get(f"/PractitionerRole/{mine['role']}").json()
        own["availableTime"] = hours(("09:00:00", "10:00:00"))
        r = doctor.put(f"/PractitionerRole/{mine['role']}", json=own)
        assert r.status_code == 200, r.text
        assert len(slots(client, mine["schedule"], MONDAY)) == 2
        assert doctor.post(f"/Schedule/{mine['schedule']}/$generate-slots").status_code == 200
        assert reception.put(f"/PractitionerRole/{other['role']}", json=role).status_code == 200
        assert times(slots(client, other["schedule"], MONDAY)) == ["07:00", "07:30"]
        assert reception.get("/Appointment/$find", params={"practitioner": other["practitioner"]}).status_code == 200


@pytest.fixture(scope="module")
def other_tenant(server: ServerProcess, database_url: str) -> Iterator[httpx.Client]:
    tid = f"avail-{uuid.uuid4().hex[:6]}"
    out = cli(database_url, "tenant", "create", tid, "--name", "Other Hospital")
    assert out.returncode == 0, out.stderr
    token = issue_token(database_url, tenant=tid, role="admin")
    with httpx.Client(base_url=f"{server.base}/{tid}", timeout=30,
                      headers={"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"}) as c:
        yield c


def test_tenants_do_not_see_each_others_slots(client: httpx.Client, other_tenant: httpx.Client) -> None:
    """Tenant isolation: the same ids in two tenants are two unrelated schedules and slot sets. R4 security.html, schedule.html, slot.html."""
    key = _key()
    mine = make_doctor(client, key, sessions=hours(("09:00:00", "10:00:00")))
    theirs = make_doctor(other_tenant, key, sessions=hours(("15:00:00", "16:00:00")))
    assert mine == theirs
    day = MONDAY.isoformat()
    assert times(matches(find(client, practitioner=key, start=day, end=day))) == ["09:00", "09:30"]
    assert times(matches(find(other_tenant, practitioner=key, start=day, end=day))) == ["15:00", "15:30"]
    assert times(slots(other_tenant, theirs["schedule"], MONDAY)) == ["15:00", "15:30"]
    role = other_tenant.get(f"/PractitionerRole/{key}-pr").json()
    del role["availableTime"]
    r = other_tenant.put(f"/PractitionerRole/{key}-pr", json=role)
    assert r.status_code == 200
    assert slots(other_tenant, theirs["schedule"], MONDAY) == []
    assert times(slots(client, mine["schedule"], MONDAY)) == ["09:00", "09:30"]
