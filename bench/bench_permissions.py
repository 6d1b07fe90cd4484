"""What the role ∩ scope check costs per request, and how fast a role change reaches a process.

    python bench/bench_permissions.py [--rounds 200000]

Uses DATABASE_URL (an admin connection; a fresh database is made and dropped) or an embedded
PostgreSQL in a temp dir. Measures, in one process:

* ``check``: the decision alone for a read and for an operation (``api/authorize.py``), with an
  operator scope (``system/*.*``) and a SMART app scope string;
* ``policy hit``: ``PermissionStore.policy`` on a cached tenant, which also drains the LISTEN
  connection (``PQconsumeInput`` + ``PQnotifies``) — what every authenticated request pays on top;
* ``notify → seen``: from the commit of ``role grant`` on another connection until the store's next
  ``policy`` call has dropped the cached policy (polled in a tight loop), and the cost of the miss
  (one query + compiling the role).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import harness as h
import psycopg

from fhir_server.api.authorize import check
from fhir_server.auth import role_overrides
from fhir_server.auth.permissions import Permission
from fhir_server.auth.role_overrides import PermissionStore
from fhir_server.auth.scopes import parse_scopes
from fhir_server.storage import migrate
from fhir_server.storage.db import Database


def _per_call(fn, rounds: int) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    for _ in range(rounds):
        fn()
    return (time.perf_counter() - t0) / rounds * 1e6


async def run(url: str, rounds: int) -> None:
    migrate.upgrade(url)
    db = Database(url, min_size=1, max_size=2)
    await db.open()
    store = PermissionStore(url)
    policy = await store.policy(db, "default", "doctor")
    for scope in ("system/*.*", "openid fhirUser launch/patient patient/Observation.rs user/*.rs"):
        def read(scope: str = scope) -> None:
            check(Permission("doctor", policy, parse_scopes(scope), scope), "T/I", ["Observation", "1"], "GET", [])

        def op(scope: str = scope) -> None:
            check(Permission("doctor", policy, parse_scopes(scope), scope), "T/I/$", ["Patient", "1", "$everything"], "GET", [])

        print(f"check read      [{scope[:40]}]: {_per_call(read, rounds):6.2f} µs")
        print(f"check operation [{scope[:40]}]: {_per_call(op, rounds):6.2f} µs")

    async def hits(n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            await store.policy(db, "default", "doctor")
        return (time.perf_counter() - t0) / n * 1e6

    print(f"policy hit (incl. LISTEN poll, listening={store.listening}): {await hits(rounds // 4):6.2f} µs")

    lat, miss = [], []
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as other:
        for i in range(50):
            action = "grant" if i % 2 == 0 else "revoke"
            await role_overrides.change(other, "default", action, "doctor", "Observation", ["delete"], [], "bench")
            t0 = time.perf_counter()
            while True:
                store.poll()
                if "default" not in store._tenants:
                    break
                await asyncio.sleep(0)
            lat.append((time.perf_counter() - t0) * 1e6)
            t1 = time.perf_counter()
            await store.policy(db, "default", "doctor")
            miss.append((time.perf_counter() - t1) * 1e6)
    print(f"notify → seen: median {statistics.median(lat):.0f} µs, max {max(lat):.0f} µs (50 changes)")
    print(f"miss (load overrides + compile role): median {statistics.median(miss):.0f} µs")
    await store.close()
    await db.close()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=200_000)
    args = parser.parse_args()
    with h.temp_dir("fhir-bench-perm-") as tmp, h.postgres(tmp) as (admin, _), h.fresh_database(admin, "perm") as url:
        asyncio.run(run(url, args.rounds))
    return 0


if __name__ == "__main__":
    h.run_main(main)
