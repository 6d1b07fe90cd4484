#!/usr/bin/env python
"""Booking throughput on one popular doctor: ``Appointment/$book`` at 16 connections, against plain
``POST Appointment`` creates (a proposed Appointment, no slot: the write without the booking rules)
in the same run, server and database; then a check that no slot carries two bookings.

    /work/venv/bin/python bench/bench_booking.py [--slots 400] [--concurrency 16] [--workers 2]

Set-up: a fresh database (DATABASE_URL as admin, or an embedded PostgreSQL in a temp dir),
``fhir-server serve --dev --workers N`` (access log off), one Practitioner with one Schedule and
``--slots`` consecutive 10-minute Slots, and one Patient per request. Scenarios:

* ``plain create``: ``POST Appointment`` (status proposed) — the baseline;
* ``$book``: each Slot requested twice (the two requests close together in the stream), so half the
  answers are 409s: the slot locks are really contended. Reported: bookings/s (201s), requests/s,
  p50/p99 latency of every answer;

then, over SQL, the number of Slots with more than one booked Appointment (must be 0) and Slots
whose status is not busy though booked. Writes bench/results/booking-<ts>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import random
import sys
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as h

START = dt.datetime(2031, 3, 1, 3, 30, tzinfo=dt.UTC)


def _iso(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def seed(base: str, slots: int, patients: int) -> None:
    with httpx.Client(base_url=base, timeout=300) as c:
        for r in ({"resourceType": "Practitioner", "id": "popular", "name": [{"family": "Popular"}]},
                  {"resourceType": "Location", "id": "opd", "name": "OPD"},
                  {"resourceType": "Schedule", "id": "popular", "actor": [{"reference": "Practitioner/popular"},
                                                                         {"reference": "Location/opd"}]}):
            c.put(f"/{r['resourceType']}/{r['id']}", json=r).raise_for_status()
        resources = [{"resourceType": "Slot", "id": f"s{i}", "schedule": {"reference": "Schedule/popular"},
                      "status": "free", "start": _iso(START + dt.timedelta(minutes=10 * i)),
                      "end": _iso(START + dt.timedelta(minutes=10 * i + 10))} for i in range(slots)]
        resources += [{"resourceType": "Patient", "id": f"p{i}", "name": [{"family": f"P{i}"}]} for i in range(patients)]
        for k in range(0, len(resources), 200):
            entries = [{"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
                       for r in resources[k:k + 200]]
            c.post("", json={"resourceType": "Bundle", "type": "batch", "entry": entries},
                   headers={"Prefer": "return=minimal"}).raise_for_status()


def book_body(slot: int, patient: int) -> dict[str, Any]:
    return {"resourceType": "Parameters", "parameter": [
        {"name": "slot", "valueReference": {"reference": f"Slot/s{slot}"}},
        {"name": "patient", "valueReference": {"reference": f"Patient/p{patient}"}},
        {"name": "appointmentType", "valueCodeableConcept": {"text": "follow-up"}}]}


def plain_body(patient: int) -> dict[str, Any]:
    return {"resourceType": "Appointment", "status": "proposed", "appointmentType": {"text": "follow-up"},
            "participant": [{"actor": {"reference": f"Patient/p{patient}"}, "status": "needs-action"},
                            {"actor": {"reference": "Practitioner/popular"}, "status": "accepted"}]}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--slots", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    h.install_signal_handlers()
    rng = random.Random(7)
    n = args.slots
    with h.temp_dir("fhir-bench-booking-") as tmp, h.postgres(tmp) as (admin, _), \
            h.fresh_database(admin, "booking") as url, \
            h.fhir_server(url, args.workers, tmp / "server.log", FHIR_ACCESS_LOG="false") as srv:
        srv.start("/fhir/metadata")
        base = f"http://{h.HOST}:{srv.port}/fhir"
        seed(base, n, 2 * n)
        print(f"seeded 1 doctor, {n} slots, {2 * n} patients; {args.concurrency} connections, {args.workers} workers")
        plain = asyncio.run(h.post_all(base, [("POST", "/Appointment", plain_body(i)) for i in range(n)], args.concurrency))
        print(f"plain create : {plain['created_per_s']:8.1f} creates/s   p50 {plain['p50_ms']} ms  p99 {plain['p99_ms']} ms  {plain['codes']}")
        # each slot asked for twice, by two patients, within a few requests of each other
        order = [(s, 2 * s + k) for s in range(n) for k in (0, 1)]
        for i in range(0, len(order) - 8, 8):
            window = order[i:i + 8]
            rng.shuffle(window)
            order[i:i + 8] = window
        booked = asyncio.run(h.post_all(base, [("POST", "/Appointment/$book", book_body(s, p)) for s, p in order], args.concurrency))
        print(f"$book        : {booked['created_per_s']:8.1f} bookings/s ({booked['requests_per_s']} requests/s)  "
              f"p50 {booked['p50_ms']} ms  p99 {booked['p99_ms']} ms  {booked['codes']}")
        doubles = h.query(url, "SELECT a.content->'slot'->0->>'reference', count(*) FROM resource a "
                               "WHERE a.resource_type = 'Appointment' AND NOT a.deleted AND a.content->>'status' = 'booked' "
                               "AND a.content ? 'slot' GROUP BY 1 HAVING count(*) > 1")
        not_busy = h.query(url, "SELECT count(*) FROM resource s WHERE s.resource_type = 'Slot' AND NOT s.deleted "
                                "AND s.content->>'status' <> 'busy' AND EXISTS (SELECT 1 FROM resource a WHERE "
                                "a.resource_type = 'Appointment' AND a.content->>'status' = 'booked' "
                                "AND a.content->'slot'->0->>'reference' = 'Slot/' || s.id)")[0][0]
        total = h.query(url, "SELECT count(*) FROM resource WHERE resource_type = 'Appointment' AND content->>'status' = 'booked'")[0][0]
        ok = not doubles and not_busy == 0 and total == n
        print(f"check        : {total} booked appointments on {n} slots; slots with two bookings: {len(doubles)}; "
              f"booked slots not busy: {not_busy} -> {'OK' if ok else 'FAILED'}")
        out = {"slots": n, "concurrency": args.concurrency, "workers": args.workers, "plain_create": plain,
               "book": booked, "double_booked_slots": len(doubles), "booked_not_busy": not_busy, "ok": ok}
        print(f"wrote {h.write_result('booking', out)}")
        return 0 if ok else 1


if __name__ == "__main__":
    h.run_main(main)
