"""``fhir-server appointments mark-noshows [--tenant T]``: booked Appointments whose start plus
``FHIR_NOSHOW_GRACE_MINUTES`` has passed become ``noshow`` (their slots are freed), as a job to run
from cron every few minutes. Every tenant unless ``--tenant``."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable
from typing import Any


def add_parser(sub: Any, with_data_dir: Callable[[Any], Any]) -> None:
    app = with_data_dir(sub.add_parser("appointments", help="OPD appointment jobs (mark-noshows)"))
    app.add_argument("action", choices=["mark-noshows"])
    app.add_argument("--tenant", help="only this tenant (default: every tenant)")
    app.set_defaults(func=cmd_appointments)


def cmd_appointments(args: argparse.Namespace) -> int:
    from fhir_server.cli import _settings, database

    with database(_settings(args), upgrade=False) as url:
        return asyncio.run(_run(url, args.tenant))


async def _run(url: str, tenant: str | None) -> int:
    import psycopg

    from fhir_server.audit.actor import Actor
    from fhir_server.services.resources import ResourceService
    from fhir_server.storage.db import Database
    from fhir_server.tenancy.store import list_tenants
    from fhir_server.workflows.appointments.operations import mark_noshows

    if tenant is None:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            tenants = [t.id for t in await list_tenants(conn)]
    else:
        tenants = [tenant]
    db = Database(url, min_size=1, max_size=2)
    await db.open()
    try:
        for t in tenants:
            marked = await mark_noshows(ResourceService(db, t, Actor("cli:appointments mark-noshows")))
            print(f"{t}: {len(marked)} appointment(s) marked noshow")
    finally:
        await db.close()
    return 0
