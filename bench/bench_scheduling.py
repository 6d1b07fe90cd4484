"""Scheduling (availability) benchmark: slot production for D doctors × N days of hours, and
``Appointment/$find`` latency (p50/p95) for a week's search, with baselines in the same run.

    python bench/bench_scheduling.py [--doctors 200] [--days 90] [--queries 300]   # DATABASE_URL or embedded PG

Seeds D Practitioners with a PractitionerRole (two sessions a weekday, 09:00-13:00 and 14:00-17:00,
15-min slots → 28 slots a weekday; 8 specialties, 10 facilities, a visit type of 45 min) through
transaction Bundles, then writes each doctor's Schedule: the write hook materialises its N days of
free Slots in the same transaction. Reported:

* slot production: seconds for all schedules, slots/s, ms per schedule (the hook, over HTTP);
* a no-op re-run (``fhir-server schedule roll``: everything already there) and a change of hours (PUT
  PractitionerRole, one doctor);
* ``$find`` over HTTP for a random week within the horizon: by practitioner, by specialty, by
  facility, unfiltered, and a 45-min visit type (3 consecutive slots); p50/p95 in ms;
* baselines in the same run: the same two SQL statements ``$find`` runs, straight on one psycopg
  connection (the floor without HTTP/JSON); the plain search ``Slot?schedule.actor=Practitioner/x
  &status=free&start=ge…&start=lt…&_sort=start&_count=20`` over HTTP; and "compute on request":
  the Python cost of planning every schedule's week from its rules (what a non-materialised design
  would pay per search before subtracting bookings).

The server runs with ``--dev`` (no tokens) and 2 workers; the machine is shared, so compare figures
of one run with each other.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

import harness

SD = "https://fhir-server.example.org/fhir/StructureDefinition/"
VT = "https://fhir-server.example.org/fhir/CodeSystem/visit-type"
SPECIALTIES = ["394579002", "394582007", "394583002", "394584008", "394585009", "394586005", "394587001", "419772000"]
FACILITIES = [f"facility-{i}" for i in range(10)]


def _pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


def _bundle(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}} for r in entries]}


def doctor(i: int) -> tuple[dict[str, Any], dict[str, Any]]:
    pid = f"doc{i}"
    practitioner = {"resourceType": "Practitioner", "id": pid, "name": [{"family": f"Doctor{i}"}]}
    days = ["mon", "tue", "wed", "thu", "fri"]
    role = {
        "resourceType": "PractitionerRole", "id": f"{pid}-pr", "active": True,
        "practitioner": {"reference": f"Practitioner/{pid}"},
        "location": [{"reference": f"Location/{FACILITIES[i % len(FACILITIES)]}"}],
        "specialty": [{"coding": [{"system": "http://snomed.info/sct", "code": SPECIALTIES[i % len(SPECIALTIES)]}]}],
        "availableTime": [
            {"daysOfWeek": days, "availableStartTime": "09:00:00", "availableEndTime": "13:00:00"},
            {"daysOfWeek": days, "availableStartTime": "14:00:00", "availableEndTime": "17:00:00"},
        ],
    }
    return practitioner, role


def schedule(i: int, days: int) -> dict[str, Any]:
    pid = f"doc{i}"
    return {
        "resourceType": "Schedule", "id": f"{pid}-s", "active": True,
        "actor": [{"reference": f"PractitionerRole/{pid}-pr"}, {"reference": f"Practitioner/{pid}"},
                  {"reference": f"Location/{FACILITIES[i % len(FACILITIES)]}"}],
        "extension": [
            {"url": SD + "schedule-slot-duration", "valueDuration": {"value": 15, "unit": "min", "system": "http://unitsofmeasure.org", "code": "min"}},
            {"url": SD + "schedule-horizon-days", "valuePositiveInt": days},
            {"url": SD + "schedule-visit-type", "extension": [
                {"url": "type", "valueCoding": {"system": VT, "code": "procedure"}},
                {"url": "duration", "valueDuration": {"value": 45, "unit": "min", "system": "http://unitsofmeasure.org", "code": "min"}}]},
        ],
    }


def seed(c: httpx.Client, doctors: int) -> None:
    locations = [{"resourceType": "Location", "id": f, "name": f} for f in FACILITIES]
    r = c.post("/", json=_bundle(locations))
    r.raise_for_status()
    for start in range(0, doctors, 50):
        entries = [x for i in range(start, min(doctors, start + 50)) for x in doctor(i)]
        r = c.post("/", json=_bundle(entries))
        r.raise_for_status()


def produce(c: httpx.Client, doctors: int, days: int) -> tuple[float, list[float]]:
    per = []
    started = time.perf_counter()
    for i in range(doctors):
        t = time.perf_counter()
        r = c.put(f"/Schedule/doc{i}-s", json=schedule(i, days))
        r.raise_for_status()
        per.append((time.perf_counter() - t) * 1000)
    return time.perf_counter() - started, per


def week_queries(doctors: int, days: int, n: int, seed_: int = 7) -> list[tuple[str, dict[str, str]]]:
    rnd = random.Random(seed_)
    today = datetime.now(UTC).date()
    out = []
    kinds = ["practitioner", "specialty", "facility", "any", "visit-type"]
    for k in range(n):
        kind = kinds[k % len(kinds)]
        start = today + timedelta(days=rnd.randrange(1, max(2, days - 7)))
        params = {"start": start.isoformat(), "end": (start + timedelta(days=6)).isoformat(), "_count": "20"}
        if kind == "practitioner":
            params["practitioner"] = f"doc{rnd.randrange(doctors)}"
        elif kind == "specialty":
            params["specialty"] = f"http://snomed.info/sct|{rnd.choice(SPECIALTIES)}"
        elif kind == "facility":
            params["location"] = rnd.choice(FACILITIES)
        elif kind == "visit-type":
            params["practitioner"] = f"doc{rnd.randrange(doctors)}"
            params["visit-type"] = f"{VT}|procedure"
        out.append((kind, params))
    return out


def time_find(c: httpx.Client, queries: list[tuple[str, dict[str, str]]]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for kind, params in queries[:20]:  # warm up
        c.get("/Appointment/$find", params=params).raise_for_status()
    for kind, params in queries:
        t = time.perf_counter()
        r = c.get("/Appointment/$find", params=params)
        elapsed = (time.perf_counter() - t) * 1000
        r.raise_for_status()
        out.setdefault(kind, []).append(elapsed)
    return out


def time_plain_search(c: httpx.Client, queries: list[tuple[str, dict[str, str]]]) -> list[float]:
    out = []
    for kind, params in queries:
        if kind != "practitioner":
            continue
        q = {"schedule.actor": f"Practitioner/{params['practitioner']}", "status": "free",
             "start": [f"ge{params['start']}T00:00:00Z", f"lt{params['end']}T23:59:59Z"], "_sort": "start", "_count": "20"}
        t = time.perf_counter()
        r = c.get("/Slot", params=q, timeout=120)
        out.append((time.perf_counter() - t) * 1000)
        r.raise_for_status()
    return out


async def time_sql(url: str, queries: list[tuple[str, dict[str, str]]]) -> list[float]:
    """The statements of ``$find`` on one connection, no HTTP."""
    import psycopg

    from fhir_server.workflows.availability.find import FindQuery, find

    out = []
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        for i, (kind, params) in enumerate(queries):
            start = datetime.fromisoformat(params["start"])
            end = datetime.fromisoformat(params["end"])
            spec = params.get("specialty")
            vt = params.get("visit-type")
            q = FindQuery(
                tenant="default", practitioner=params.get("practitioner"), location=params.get("location"),
                specialty=tuple(spec.split("|")) if spec else None,  # type: ignore[arg-type]
                visit_type=tuple(vt.split("|")) if vt else None,  # type: ignore[arg-type]
                start=start, end=end, start_is_date=True, end_is_date=True, count=20,
            )
            t = time.perf_counter()
            await find(conn, q, datetime.now(UTC))
            if i >= 20:
                out.append((time.perf_counter() - t) * 1000)
    return out


def compute_on_request(doctors: int) -> float:
    """ms to plan every doctor's week from the rules in Python (no database)."""
    from fhir_server.workflows.availability.generate import plan
    from fhir_server.workflows.availability.model import parse

    rules = []
    for i in range(doctors):
        s = schedule(i, 7)
        _, role = doctor(i)
        rules.append(parse(s, role, None))
    now = datetime.now(UTC)
    t = time.perf_counter()
    for r in rules:
        plan(r, now)
    return (time.perf_counter() - t) * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--doctors", type=int, default=200)
    ap.add_argument("--days", type=int, default=90)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    harness.install_signal_handlers()
    with harness.temp_dir("bench-scheduling-") as tmp, harness.postgres(tmp) as (admin, _pg), \
            harness.fresh_database(admin, "scheduling") as url:
        srv = harness.fhir_server(url, args.workers, tmp / "server.log")
        srv.start("/fhir/metadata")
        with srv, httpx.Client(base_url=f"http://{harness.HOST}:{srv.port}/fhir", timeout=600,
                               headers={"Content-Type": "application/fhir+json"}) as c:
            print(f"doctors {args.doctors}, horizon {args.days} days, 28 slots a weekday, {args.workers} workers")
            t = time.perf_counter()
            seed(c, args.doctors)
            print(f"seed (practitioners, roles, facilities): {time.perf_counter() - t:.1f} s")
            total, per = produce(c, args.doctors, args.days)
            slots = harness.query(url, "SELECT count(*) FROM resource WHERE resource_type = 'Slot' AND NOT deleted")[0][0]
            print(f"slot production (Schedule PUT → hook): {total:.1f} s for {slots} slots = {slots / total:,.0f} slots/s; "
                  f"per schedule p50 {_pct(per, 50):.0f} ms, p95 {_pct(per, 95):.0f} ms")
            harness.execute(url, "ANALYZE")
            t = time.perf_counter()
            out = subprocess.run([harness.PY, "-m", "fhir_server.cli", "schedule", "roll", "--tenant", "default"],
                                 env=harness.server_env(DATABASE_URL=url), capture_output=True, text=True, cwd=harness.ROOT, check=False)
            if out.returncode != 0:
                print(out.stderr)
            created = sum(int(line.split("created ")[1].split("\t")[0]) for line in out.stdout.splitlines() if "created " in line)
            print(f"no-op roll of every schedule (schedule roll, new process): {time.perf_counter() - t:.1f} s, created {created}")
            role = doctor(0)[1]
            role["availableTime"] = role["availableTime"][:1]
            t = time.perf_counter()
            c.put("/PractitionerRole/doc0-pr", json=role).raise_for_status()
            print(f"change of hours (drop afternoons, {args.days} days, one doctor): {(time.perf_counter() - t) * 1000:.0f} ms")

            queries = week_queries(args.doctors, args.days, args.queries)
            found = time_find(c, queries)
            every = [x for v in found.values() for x in v]
            print(f"$find over HTTP, a week, _count=20 ({len(every)} queries): p50 {_pct(every, 50):.1f} ms, "
                  f"p95 {_pct(every, 95):.1f} ms  (goal p95 <= 50 ms)")
            for kind, v in found.items():
                print(f"  {kind:<12} p50 {_pct(v, 50):6.1f} ms   p95 {_pct(v, 95):6.1f} ms")
            sql = asyncio.run(time_sql(url, queries))
            print(f"baseline: the same 2 SQL statements on one connection: p50 {_pct(sql, 50):.1f} ms, p95 {_pct(sql, 95):.1f} ms")
            plain = time_plain_search(c, queries[: min(len(queries), 100)])
            print(f"baseline: plain Slot?schedule.actor=…&status=free&start=…&_sort=start (HTTP, {len(plain)} queries): "
                  f"p50 {_pct(plain, 50):.1f} ms, p95 {_pct(plain, 95):.1f} ms")
            print(f"baseline: compute on request, planning all {args.doctors} doctors' week in Python: "
                  f"{compute_on_request(args.doctors):.1f} ms (before reading rules and bookings from the database)")
    return 0


if __name__ == "__main__":
    harness.run_main(main)
