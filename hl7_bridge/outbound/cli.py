"""``fhir-server hl7 destination add|list|remove`` and ``fhir-server hl7 outbox list|retry|run``; the
dispatcher child process of ``fhir-server serve --hl7-outbox``."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
from typing import Any

import psycopg

from hl7_bridge.cli import _db

__all__ = ["add_outbound_parsers", "start_outbox_child"]


def _split(values: list[str] | None) -> list[str]:
    return [v.strip() for item in values or [] for v in item.split(",") if v.strip()]


def cmd_destination(args: argparse.Namespace) -> int:
    from hl7_bridge.outbound.destinations import add_destination, list_destinations, remove_destination

    async def run(url: str) -> int:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            if args.action == "add":
                if not args.name or not args.host or not args.port:
                    print("destination add needs --name, --host and --port", file=sys.stderr)
                    return 2
                retry: dict[str, Any] = json.loads(args.retry) if args.retry else {}
                tls: dict[str, Any] = json.loads(args.tls) if args.tls else {}
                try:
                    dest_id = await add_destination(
                        conn, args.tenant, args.name, args.host, args.port, message_type=args.message_type,
                        version=args.version, sending_app=args.sending_app, sending_facility=args.sending_facility,
                        receiving_app=args.receiving_app, receiving_facility=args.receiving_facility,
                        categories=_split(args.category) or ["lab"], codes=_split(args.code),
                        performers=_split(args.performer), locations=_split(args.location), tls=tls, retry=retry,
                        forward_hl7=args.forward_hl7, enabled=not args.disabled,
                    )
                except ValueError as exc:
                    print(str(exc), file=sys.stderr)
                    return 2
                print(f"destination {args.name} ({dest_id}) of tenant {args.tenant} → {args.host}:{args.port} {args.message_type}")
            elif args.action == "remove":
                if not await remove_destination(conn, args.tenant, args.name):
                    print(f"no destination {args.name} in tenant {args.tenant}", file=sys.stderr)
                    return 1
                print(f"removed {args.name}")
            else:
                for row in await list_destinations(conn, args.tenant if args.tenant_given else None):
                    print(json.dumps(row, default=str))
        return 0

    args.tenant_given = args.tenant is not None
    args.tenant = args.tenant or "default"
    with _db(args) as url:
        return asyncio.run(run(url))


def cmd_outbox(args: argparse.Namespace) -> int:
    from hl7_bridge.outbound import outbox

    if args.action == "run":
        from hl7_bridge.outbound.dispatcher import run_dispatcher

        with _db(args) as url:
            asyncio.run(run_dispatcher(url, poll=args.poll))
        return 0

    async def run(url: str) -> int:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            if args.action == "retry":
                if args.id is None:
                    print("outbox retry needs --id", file=sys.stderr)
                    return 2
                if not await outbox.requeue_dead(conn, args.id):
                    print(f"outbox row {args.id} is not dead or failed", file=sys.stderr)
                    return 1
                print(f"{args.id}: queued")
                return 0
            rows = await outbox.list_rows(conn, status=args.status, tenant=args.tenant, destination=args.destination,
                                          limit=args.limit)
            for row in rows:
                print(json.dumps(row, default=str))
        return 0

    with _db(args) as url:
        return asyncio.run(run(url))


def add_outbound_parsers(hsub: Any, with_data_dir: Any) -> None:
    dest = with_data_dir(hsub.add_parser("destination", help="outbound order destinations (per tenant)"))
    dest.add_argument("action", choices=["add", "list", "remove"])
    dest.add_argument("--tenant", default=None, help="the tenant (default 'default'; list: all tenants unless given)")
    dest.add_argument("--name")
    dest.add_argument("--host")
    dest.add_argument("--port", type=int)
    dest.add_argument("--message-type", default="ORM^O01", choices=["ORM^O01", "OML^O21"])
    dest.add_argument("--version", default="2.5.1", help="MSH-12 (2.3, 2.4, 2.5, 2.5.1 …)")
    dest.add_argument("--sending-app", default="FHIR-SERVER", help="MSH-3")
    dest.add_argument("--sending-facility", default="", help="MSH-4 (default: the tenant id)")
    dest.add_argument("--receiving-app", default="", help="MSH-5")
    dest.add_argument("--receiving-facility", default="", help="MSH-6")
    dest.add_argument("--category", action="append", help="lab, imaging or * (repeatable or comma-separated; default lab)")
    dest.add_argument("--code", action="append", help="only these ServiceRequest codes (system|code or code)")
    dest.add_argument("--performer", action="append", help="only orders with this performer (e.g. Organization/lab-1)")
    dest.add_argument("--location", action="append", help="only orders with this locationReference")
    dest.add_argument("--tls", help='TLS options as JSON: {"enabled": true, "ca": …, "cert": …, "key": …, "verify": true}')
    dest.add_argument("--retry", help='retry policy as JSON: {"max_attempts": 10, "base_delay": 2, "max_delay": 300, '
                                      '"max_age": 86400, "connect_timeout": 5, "ack_timeout": 30}')
    dest.add_argument("--forward-hl7", action="store_true", help="also send orders written by the HL7 inbound bridge")
    dest.add_argument("--disabled", action="store_true")
    dest.set_defaults(func=cmd_destination)

    box = with_data_dir(hsub.add_parser("outbox", help="the outbound message queue: list, retry, run the dispatcher"))
    box.add_argument("action", choices=["list", "retry", "run"])
    box.add_argument("--status", choices=["queued", "sending", "sent", "failed", "dead"])
    box.add_argument("--tenant")
    box.add_argument("--destination", help="destination name")
    box.add_argument("--id", type=int, help="retry: the outbox row (dead or failed → queued)")
    box.add_argument("--limit", type=int, default=50)
    box.add_argument("--poll", type=float, default=0.5, help="run: seconds between polls (NOTIFY wakes it sooner)")
    box.set_defaults(func=cmd_outbox)


def start_outbox_child(url: str) -> subprocess.Popen[bytes]:
    """``serve --hl7-outbox``: the dispatcher runs in ONE child process of ``serve`` (stopped with it)."""
    env = dict(os.environ, DATABASE_URL=url)
    return subprocess.Popen([sys.executable, "-m", "fhir_server.cli", "hl7", "outbox", "run"], env=env)
