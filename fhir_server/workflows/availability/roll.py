"""The rolling horizon: ``fhir-server schedule roll [--tenant T] [--schedule ID]`` reconciles every
live Schedule of every active tenant (or the ones named), one transaction per schedule, so each
horizon moves one day further each day (run it daily, e.g. from cron or a systemd timer). Running it
twice the same day writes nothing the second time.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from datetime import datetime
from typing import Any

import psycopg

from fhir_server.audit.actor import Actor
from fhir_server.services.resources import BoundDatabase, ResourceService
from fhir_server.workflows.availability.produce import Summary, reconcile

ACTOR = Actor("fhir-server schedule roll", method="SYSTEM", path="schedule roll")


async def roll(
    url: str, tenant: str | None = None, schedule: str | None = None, now: datetime | None = None
) -> list[tuple[str, Summary]]:
    out: list[tuple[str, Summary]] = []
    async with await psycopg.AsyncConnection.connect(url, autocommit=True, application_name="fhir-schedule-roll") as conn:
        if tenant:
            tenants = [tenant]
        else:
            cur = await conn.execute("SELECT id FROM tenant WHERE status = 'active' ORDER BY id")
            tenants = [r[0] for r in await cur.fetchall()]
        for t in tenants:
            if schedule:
                ids = [schedule]
            else:
                cur = await conn.execute(
                    "SELECT id FROM resource WHERE tenant_id = %s AND resource_type = 'Schedule' AND NOT deleted ORDER BY id", (t,)
                )
                ids = [r[0] for r in await cur.fetchall()]
            service = ResourceService(BoundDatabase(conn), t, ACTOR)
            for sid in ids:
                async with conn.transaction():
                    out.append((t, await reconcile(conn, service, sid, now=now)))
    return out


def cmd_schedule(args: argparse.Namespace) -> int:
    from fhir_server.cli import _settings, database

    started = time.perf_counter()
    with database(_settings(args), upgrade=False) as url:
        at = datetime.fromisoformat(args.now) if args.now else None
        if at is not None and at.tzinfo is None:
            print("--now needs a time zone (Z or +hh:mm)", file=sys.stderr)
            return 2
        results = asyncio.run(roll(url, args.tenant, args.schedule, at))
    for tenant, s in results:
        print(f"{tenant}\tSchedule/{s.schedule}\tplanned {s.planned}\tcreated {s.created}\tupdated {s.updated}"
              f"\tdeleted {s.deleted}\tflagged {s.flagged}\tunflagged {s.unflagged}")
    print(f"{len(results)} schedules in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return 0


def add_schedule_parser(sub: Any, with_data_dir: Any) -> None:
    p = with_data_dir(sub.add_parser("schedule", help="doctors' schedules: extend every horizon (roll)"))
    p.add_argument("action", choices=["roll"])
    p.add_argument("--tenant", help="only this tenant (default: every active tenant)")
    p.add_argument("--schedule", help="only this Schedule id")
    p.add_argument("--now", help="act as if it were this instant (catch-up after downtime, tests); default: now")
    p.set_defaults(func=cmd_schedule)
