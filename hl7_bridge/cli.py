"""``fhir-server hl7 …``: listen, sender add|list|remove, messages, replay; and the MLLP child
process of ``fhir-server serve --mllp-port``."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
from typing import Any

import psycopg

__all__ = ["add_hl7_parser", "start_mllp_child", "stop_mllp_child"]


def _db(args: argparse.Namespace) -> Any:
    from fhir_server.cli import _settings, database

    return database(_settings(args), upgrade=False)


def cmd_listen(args: argparse.Namespace) -> int:
    from fhir_server.cli import _settings
    from hl7_bridge.listener import run_listener

    settings = _settings(args)
    with _db(args) as url:
        asyncio.run(run_listener(settings, url, args.host or settings.hl7_host, args.port))
    return 0


def cmd_sender(args: argparse.Namespace) -> int:
    from hl7_bridge.senders import add_sender, list_senders, remove_sender

    async def run(url: str) -> int:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            if args.action == "add":
                options: dict[str, Any] = json.loads(args.options) if args.options else {}
                if args.unknown_patient:
                    options["unknown_patient"] = args.unknown_patient
                for pair in args.system or []:
                    authority, _, system = pair.partition("=")
                    options.setdefault("identifier_systems", {})[authority] = system
                if args.timezone:
                    options["timezone"] = args.timezone
                await add_sender(conn, args.app, args.facility, args.tenant, args.agent, args.role, options)
                print(f"sender {args.app}@{args.facility} → tenant {args.tenant}")
            elif args.action == "remove":
                if not await remove_sender(conn, args.app, args.facility):
                    print(f"no sender {args.app}@{args.facility}", file=sys.stderr)
                    return 1
                print(f"removed {args.app}@{args.facility}")
            else:
                for row in await list_senders(conn):
                    print(json.dumps(row, default=str))
        return 0

    with _db(args) as url:
        return asyncio.run(run(url))


def cmd_messages(args: argparse.Namespace) -> int:
    """The message log, newest first (never the message bodies; ``GET /admin/hl7/messages/{id}`` shows one,
    audited)."""
    from datetime import datetime

    from hl7_bridge import inbox

    def instant(value: str | None) -> datetime | None:
        if not value:
            return None
        try:
            dt = datetime.fromisoformat(value)
        except ValueError:
            raise SystemExit(f"not an ISO 8601 date/time: {value}") from None
        return dt if dt.tzinfo is not None else dt.astimezone()

    criteria = inbox.MessageFilter(status=args.status, message_type=args.type, control_id=args.control_id,
                                   sender=args.sender, since=instant(args.since), until=instant(args.until),
                                   tenant=args.tenant)

    async def run(url: str) -> int:
        names = {"tenant_id": "tenant", "message_type": "type"}
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            for row in await inbox.search(conn, criteria, args.limit):
                print(json.dumps({names.get(k, k): v for k, v in row.items()}, default=str))
        return 0

    with _db(args) as url:
        return asyncio.run(run(url))


def cmd_replay(args: argparse.Namespace) -> int:
    from fhir_server.cli import _settings
    from fhir_server.storage.db import Database
    from hl7_bridge.bridge import Bridge

    settings = _settings(args)

    async def run(url: str) -> int:
        db = Database(url, min_size=1, max_size=2, application_name="hl7-replay")
        await db.open()
        try:
            async with db.connection() as conn:
                if args.id is not None:
                    ids = [args.id]
                else:
                    cur = await conn.execute(
                        "SELECT id FROM hl7_message WHERE status = %s AND control_id IS NOT NULL ORDER BY id",
                        (args.status,),
                    )
                    ids = [r[0] for r in await cur.fetchall()]
            bridge = Bridge(db, settings)
            failed = 0
            for message_id in ids:
                try:
                    code, _ = await bridge.replay(message_id)
                except KeyError:
                    print(f"{message_id}: no such message", file=sys.stderr)
                    failed += 1
                    continue
                print(f"{message_id}: {code}")
                failed += code != "AA"
            print(f"replayed {len(ids)} messages, {len(ids) - failed} accepted")
            return 1 if failed else 0
        finally:
            await db.close()

    with _db(args) as url:
        return asyncio.run(run(url))


def add_hl7_parser(sub: Any, with_data_dir: Any) -> None:
    hl7 = sub.add_parser("hl7", help="the HL7 v2 bridge (MLLP listener, senders, message log, replay)")
    hsub = hl7.add_subparsers(dest="hl7_command", required=True)

    listen = with_data_dir(hsub.add_parser("listen", help="run the MLLP listener alone"))
    listen.add_argument("--host", default=None, help="default FHIR_HL7_HOST (127.0.0.1)")
    listen.add_argument("--port", type=int, default=2575)
    listen.set_defaults(func=cmd_listen)

    sender = with_data_dir(hsub.add_parser("sender", help="configure senders (MSH-3 + MSH-4)"))
    sender.add_argument("action", choices=["add", "list", "remove"])
    sender.add_argument("--app", default="", help="MSH-3 sending application (namespace id)")
    sender.add_argument("--facility", default="", help="MSH-4 sending facility (namespace id)")
    sender.add_argument("--tenant", default="default")
    sender.add_argument("--agent", help="the identity audit rows name (default hl7:<app>@<facility>; e.g. Device/analyser-1)")
    sender.add_argument("--role", default="integration")
    sender.add_argument("--unknown-patient", choices=["create", "refuse"])
    sender.add_argument("--system", action="append", help="AUTHORITY=SYSTEM: assigning authority → Identifier.system (repeatable)")
    sender.add_argument("--timezone", help="IANA zone of the sender's times without an offset")
    sender.add_argument("--options", help="the options as JSON (see hl7_bridge/README.md)")
    sender.set_defaults(func=cmd_sender)

    msgs = with_data_dir(hsub.add_parser("messages", help="the message log, newest first"))
    msgs.add_argument("--status", choices=["received", "processed", "error"])
    msgs.add_argument("--control-id")
    msgs.add_argument("--type", help="MSH-9: SIU or SIU^S12")
    msgs.add_argument("--sender", help="APP or APP@FACILITY (MSH-3, MSH-4)")
    msgs.add_argument("--since", help="received at or after (ISO 8601)")
    msgs.add_argument("--until", help="received before (ISO 8601)")
    msgs.add_argument("--tenant", help="only this tenant's messages and its senders'")
    msgs.add_argument("--limit", type=int, default=50)
    msgs.set_defaults(func=cmd_messages)

    replay = with_data_dir(hsub.add_parser("replay", help="process stored messages again"))
    group = replay.add_mutually_exclusive_group(required=True)
    group.add_argument("--id", type=int)
    group.add_argument("--status", choices=["error", "received"])
    replay.set_defaults(func=cmd_replay)

    from hl7_bridge.outbound.cli import add_outbound_parsers  # hl7 destination | outbox (outbound orders)

    add_outbound_parsers(hsub, with_data_dir)


def start_mllp_child(url: str, host: str, port: int) -> subprocess.Popen[bytes]:
    """``serve --mllp-port``: the listener runs in ONE child process of ``serve`` (never in the
    uvicorn workers, so however many workers there are exactly one process binds the port)."""
    env = dict(os.environ, DATABASE_URL=url)
    return subprocess.Popen([sys.executable, "-m", "fhir_server.cli", "hl7", "listen", "--host", host, "--port", str(port)], env=env)


def stop_mllp_child(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
