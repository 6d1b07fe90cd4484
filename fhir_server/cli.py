"""The ``fhir-server`` command: serve, db upgrade, import, export, token."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

from fhir_server import logs
from fhir_server.settings import Settings

log = logging.getLogger("fhir_server.cli")


@contextlib.contextmanager
def database(settings: Settings, *, upgrade: bool) -> Iterator[str]:
    """The database URL: DATABASE_URL, or the embedded PostgreSQL in --data-dir (started here)."""
    from fhir_server.storage import migrate

    embedded = None
    if settings.database_url:
        url = settings.database_url
    else:
        from fhir_server.storage.embedded import EmbeddedPostgres

        embedded = EmbeddedPostgres(settings.data_dir)
        url = embedded.start()
        upgrade = True  # the embedded database is always brought to the current schema
    try:
        if upgrade:
            migrate.upgrade(url)
        yield url
    finally:
        if embedded is not None:
            embedded.stop()


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {}
    if getattr(args, "data_dir", None):
        overrides["data_dir"] = Path(args.data_dir)
    return Settings(**overrides)


# How the server runs under uvicorn; bench/ceiling_app.py runs the framework ceiling the same way.
# uvloop and httptools are pinned: with the default asyncio loop two workers collapse to ~1.4k req/s.
UVICORN_OPTIONS: dict[str, object] = {
    "factory": True,
    "loop": "uvloop",
    "http": "httptools",
    "log_config": None,  # logging is configured by fhir_server.logs in every worker
    "access_log": False,  # our own access log line (fhir_server/api/middleware.py)
    "server_header": False,
}


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    if args.dev:
        os.environ["FHIR_DEV_MODE"] = "true"
    settings = _settings(args)
    from fhir_server.storage import migrate

    with database(settings, upgrade=False) as url:
        if settings.database_url and not args.no_migrate:
            migrate.upgrade(url)
        os.environ["DATABASE_URL"] = url  # worker processes build their app from the environment
        if settings.dev_mode or args.dev:
            log.warning("development mode: authentication is OFF")
        log.info("serving FHIR", extra={"base_url": f"http://{args.host}:{args.port}/fhir"})
        # uvicorn shuts down gracefully on SIGINT/SIGTERM and then re-raises the signal; these
        # handlers turn that into a normal exit so the embedded PostgreSQL is stopped below.
        signal.signal(signal.SIGTERM, _exit_cleanly)
        signal.signal(signal.SIGINT, _exit_cleanly)
        mllp = None
        if args.mllp_port is not None:  # one listener process beside the workers (hl7_bridge/README.md)
            from hl7_bridge.cli import start_mllp_child

            mllp = start_mllp_child(url, args.mllp_host, args.mllp_port)
        outbox = None
        if getattr(args, "hl7_outbox", False):  # one HL7 outbound dispatcher process (hl7_bridge/README.md "Outbound")
            from hl7_bridge.outbound.cli import start_outbox_child

            outbox = start_outbox_child(url)
        try:
            uvicorn.run("fhir_server.app:create_app", host=args.host, port=args.port, workers=args.workers, **UVICORN_OPTIONS)
        finally:
            if mllp is not None:
                from hl7_bridge.cli import stop_mllp_child

                stop_mllp_child(mllp)
            if outbox is not None:
                from hl7_bridge.cli import stop_mllp_child as stop_child

                stop_child(outbox)
    return 0


def cmd_db(args: argparse.Namespace) -> int:
    from fhir_server.storage import migrate

    settings = _settings(args)
    with database(settings, upgrade=False) as url:
        if args.action == "upgrade":
            migrate.upgrade(url)
        print(f"schema revision: {migrate.current(url)}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from fhir_server.transfer.importer import run_import

    if args.bulk:
        return _bulk_import(args)
    with database(_settings(args), upgrade=False) as url:
        return asyncio.run(run_import(url, [Path(p) for p in args.paths], tenant=args.tenant, server_ids=args.server_ids))


def _bulk_import(args: argparse.Namespace) -> int:
    """``import --bulk``: NDJSON straight into the tables with COPY (transfer/bulk_load.py)."""
    from fhir_server.transfer.bulk_load import run_bulk_import

    with database(_settings(args), upgrade=False) as url:
        report = run_bulk_import(url, [Path(p) for p in args.paths], tenant=args.tenant, jobs=args.jobs,
                                 batch_size=args.batch_size, strict=args.strict)
    print(f"imported {report.loaded} resources ({report.created} new, {report.updated} new versions) in "
          f"{report.seconds:.1f}s ({report.rate:.0f} resources/s); {len(report.bad)} bad lines")
    for bad in report.bad:
        print(f"  {bad}", file=sys.stderr)
    return 1 if report.bad else 0


def cmd_export(args: argparse.Namespace) -> int:
    from fhir_server.transfer.exporter import run_export

    with database(_settings(args), upgrade=False) as url:
        return asyncio.run(run_export(url, Path(args.out), tenant=args.tenant, types=args.type))


def cmd_blobs(args: argparse.Namespace) -> int:
    """``blobs gc``: remove Binary blobs no resource version refers to (services/binary.py)."""
    from datetime import timedelta

    import psycopg

    from fhir_server.services.binary import collect_garbage
    from fhir_server.storage.blobs import open_blob_store

    settings = _settings(args)

    async def run(url: str) -> str:
        store = open_blob_store(settings)
        try:
            async with await psycopg.AsyncConnection.connect(url) as conn:
                report = await collect_garbage(
                    conn, store, min_age=timedelta(seconds=args.min_age), dry_run=args.dry_run
                )
        finally:
            await store.close()
        verb = "would remove" if args.dry_run else "removed"
        return f"{verb} {report.removed} unreferenced blobs, kept {report.kept}, removed {report.partial_uploads_removed} partial uploads"

    with database(settings, upgrade=False) as url:
        print(asyncio.run(run(url)))
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    import psycopg

    from fhir_server.audit.events import record_token_issue
    from fhir_server.auth.oauth.keys import load_server_keys
    from fhir_server.auth.oauth.runtime import max_token_lifetime
    from fhir_server.auth.tokens import OPERATOR_AUDIENCE, OPERATOR_ISSUER, issue_token

    settings = _settings(args)
    with database(settings, upgrade=False) as url, psycopg.connect(url, autocommit=True) as conn:
        keys = load_server_keys(conn, max_token_lifetime(settings))  # the server's ES256 signing key
        token = issue_token(
            keys, tenant=args.tenant, role=args.role, subject=args.subject, ttl_seconds=args.ttl,
            facilities=args.facility, patient=args.patient, scope=args.scope, fhir_user=args.fhir_user,
            issuer=settings.auth_issuer or OPERATOR_ISSUER, audience=settings.base_url or OPERATOR_AUDIENCE,
        )
        record_token_issue(conn, tenant=args.tenant, subject=args.subject, role=args.role, fhir_user=args.fhir_user)
    print(token)
    return 0


def _read_password(prompt: str) -> str:
    """From the terminal (asked twice), or the first line of standard input: never an argument."""
    import getpass

    if sys.stdin.isatty():
        first = getpass.getpass(prompt)
        if getpass.getpass("again: ") != first:
            raise ValueError("the passwords differ")
        return first
    return sys.stdin.readline().rstrip("\r\n")


def cmd_user(args: argparse.Namespace) -> int:
    """``user add|list|disable|enable|set-password`` (fhir_server/auth/oauth/users.py)."""
    import psycopg

    from fhir_server.auth.oauth import users

    with database(_settings(args), upgrade=False) as url, psycopg.connect(url, autocommit=True) as conn:
        try:
            if args.action == "list":
                for u in users.list_users(conn, args.tenant):
                    facilities = ",".join(u.facilities) if u.facilities is not None else "*"
                    print(f"{u.username}\t{u.role}\t{u.fhir_user or '-'}\t{facilities}\t{'active' if u.active else 'disabled'}")
                return 0
            if not args.username:
                raise ValueError(f"user {args.action} needs a USERNAME")
            if args.action == "add":
                if not args.role:
                    raise ValueError("user add needs --role")
                user = users.add_user(conn, tenant=args.tenant, username=args.username, password=_read_password("password: "),
                                      role=args.role, fhir_user=args.fhir_user, facilities=args.facility)
                print(f"added user {user.username} ({user.role}) to tenant {user.tenant}")
            elif args.action == "set-password":
                if not users.set_password(conn, args.tenant, args.username, _read_password("new password: ")):
                    raise ValueError(f"no user {args.username!r} in tenant {args.tenant!r}")
                print(f"password of {args.username} changed; their refresh tokens are revoked")
            else:
                if not users.set_active(conn, args.tenant, args.username, args.action == "enable"):
                    raise ValueError(f"no user {args.username!r} in tenant {args.tenant!r}")
                print(f"{args.username} {args.action}d")
        except ValueError as exc:
            print(exc, file=sys.stderr)
            return 2
    return 0


def cmd_client(args: argparse.Namespace) -> int:
    """``client add|list|remove`` (fhir_server/auth/oauth/clients.py)."""
    import json

    import psycopg

    from fhir_server.auth.oauth import clients

    with database(_settings(args), upgrade=False) as url, psycopg.connect(url, autocommit=True) as conn:
        try:
            if args.action == "list":
                for c in clients.list_clients(conn, args.tenant):
                    print(f"{c.client_id}\t{c.client_type}\t{','.join(c.grant_types)}\t{c.allowed_scopes}\t"
                          f"{' '.join(c.redirect_uris) or '-'}")
                return 0
            if not args.client_id:
                raise ValueError(f"client {args.action} needs a CLIENT_ID")
            if args.action == "remove":
                if not clients.remove_client(conn, args.tenant, args.client_id):
                    raise ValueError(f"no client {args.client_id!r} in tenant {args.tenant!r}")
                print(f"removed client {args.client_id}")
                return 0
            jwks = json.loads(Path(args.jwks).read_text()) if args.jwks else None
            client = clients.add_client(
                conn, tenant=args.tenant, client_id=args.client_id, client_type=args.type, name=args.name or "",
                redirect_uris=args.redirect_uri, scope=args.scope or "", jwks=jwks, grant_types=args.grant_type,
                role=args.role, fhir_user=args.fhir_user,
            )
            print(f"added {client.client_type} client {client.client_id} ({', '.join(client.grant_types)}) "
                  f"to tenant {client.tenant}")
        except (ValueError, OSError) as exc:
            print(exc, file=sys.stderr)
            return 2
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    """``keys list|rotate``: the server's token-signing keys (fhir_server/auth/oauth/keys.py)."""
    import psycopg

    from fhir_server.auth.oauth import keys

    with database(_settings(args), upgrade=False) as url, psycopg.connect(url, autocommit=True) as conn:
        if args.action == "rotate":
            keys.ensure_signing_key(conn)
            print(f"new signing key {keys.rotate(conn)}; the old one verifies until its tokens expired")
        for kid, alg, created, retired in keys.list_keys(conn):
            state = f"retired {retired.isoformat(timespec='seconds')}" if retired else "signing"
            print(f"{kid}\t{alg}\t{created.isoformat(timespec='seconds')}\t{state}")
    return 0


def cmd_role(args: argparse.Namespace) -> int:
    """``role show|grant|revoke|reset``: a tenant's role permissions (auth/role_overrides.py)."""
    import json

    import psycopg

    from fhir_server.auth import role_overrides
    from fhir_server.errors import FhirError

    async def run(url: str) -> dict[str, object]:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            if args.action in ("grant", "revoke"):
                await role_overrides.change(
                    conn, args.tenant, args.action, args.role, args.type or "*",
                    [x for v in args.interaction or [] for x in v.split(",") if x],
                    [x for v in args.operation or [] for x in v.split(",") if x], f"cli:{os.environ.get('USER', '')}",
                )
            elif args.action == "reset":
                await role_overrides.reset(conn, args.tenant, args.role, args.type)
            return await role_overrides.show(conn, args.tenant, args.role)

    if args.action != "show" and not args.role:
        print(f"role {args.action} needs a ROLE", file=sys.stderr)
        return 2
    with database(_settings(args), upgrade=False) as url:
        try:
            shown = asyncio.run(run(url))
        except FhirError as exc:
            print(exc.diagnostics, file=sys.stderr)
            return 2
    print(json.dumps(shown, indent=2))
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    """``audit seal|verify|head`` (fhir_server/audit/chain.py, README "Audit trail")."""
    from fhir_server.audit.cli import run

    with database(_settings(args), upgrade=False) as url:
        return run(url, args)


def cmd_tenant(args: argparse.Namespace) -> int:
    """``tenant create ID --name N`` / ``tenant list`` (fhir_server/tenancy/store.py)."""
    import psycopg

    from fhir_server.errors import FhirError
    from fhir_server.tenancy.store import create_tenant, list_tenants

    async def run(url: str) -> int:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            if args.action == "create":
                if not args.id or not args.name:
                    print("tenant create needs an ID and --name", file=sys.stderr)
                    return 2
                try:
                    tenant = await create_tenant(conn, args.id, args.name)
                except FhirError as exc:
                    print(exc.diagnostics, file=sys.stderr)
                    return 1
                print(f"created tenant {tenant.id} ({tenant.name}): FHIR base /fhir/{tenant.id}")
                return 0
            for tenant in await list_tenants(conn):
                print(f"{tenant.id}\t{tenant.status}\t{tenant.created_at.isoformat(timespec='seconds')}\t{tenant.name}")
            return 0

    with database(_settings(args), upgrade=False) as url:
        return asyncio.run(run(url))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fhir-server", description="FHIR R4 server on PostgreSQL")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_data_dir(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--data-dir", help="embedded PostgreSQL data directory (default ./fhir-data; unused with DATABASE_URL)")
        return p

    serve = with_data_dir(sub.add_parser("serve", help="run the FHIR server"))
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--workers", type=int, default=int(os.environ.get("FHIR_WORKERS", "2")),
                       help="server processes (default 2, or FHIR_WORKERS; see bench/README.md)")
    serve.add_argument("--dev", action="store_true", help="development mode: authentication OFF")
    serve.add_argument("--no-migrate", action="store_true", help="with DATABASE_URL: do not apply migrations on start")
    serve.add_argument("--mllp-port", type=int, default=None, help="also run the HL7 v2 MLLP listener on this port")
    serve.add_argument("--mllp-host", default="127.0.0.1", help="the MLLP listener's address (default 127.0.0.1)")
    serve.add_argument("--hl7-outbox", action="store_true", help="also run the HL7 v2 outbound order dispatcher")
    serve.set_defaults(func=cmd_serve)

    db = with_data_dir(sub.add_parser("db", help="database schema"))
    db.add_argument("action", choices=["upgrade", "current"])
    db.set_defaults(func=cmd_db)

    imp = with_data_dir(sub.add_parser("import", help="load Bundles (.json) or NDJSON (.ndjson) files or folders"))
    imp.add_argument("paths", nargs="+")
    imp.add_argument("--tenant", default="default")
    imp.add_argument("--server-ids", action="store_true",
                     help="POSTed bundle entries get server ids as over HTTP (default: a urn:uuid fullUrl's uuid)")
    imp.add_argument("--bulk", action="store_true",
                     help="NDJSON files/folders loaded with COPY, ids kept (not through the bundle service)")
    imp.add_argument("--jobs", type=int, default=1, help="with --bulk: loader processes (default 1)")
    imp.add_argument("--batch-size", type=int, default=2000, help="with --bulk: resources per transaction")
    imp.add_argument("--strict", action="store_true", help="with --bulk: stop at the first bad line (default: skip it)")
    imp.set_defaults(func=cmd_import)

    exp = with_data_dir(sub.add_parser("export", help="write NDJSON files, one per resource type"))
    exp.add_argument("out")
    exp.add_argument("--tenant", default="default")
    exp.add_argument("--type", action="append", help="only this resource type (repeatable)")
    exp.set_defaults(func=cmd_export)

    tok = with_data_dir(sub.add_parser("token", help="print a short-lived bearer token"))
    tok.add_argument("--tenant", default="default")
    tok.add_argument("--role", default="admin")
    tok.add_argument("--subject", default="operator")
    tok.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds")
    tok.add_argument("--facility", action="append", default=None,
                     help="bind the token to this facility (Organization/Location id; repeatable)")
    tok.add_argument("--patient", help="confine the token to this Patient id and its compartment")
    tok.add_argument("--scope", default="system/*.*",
                     help="SMART scopes, space-separated (default system/*.*; e.g. 'user/*.rs patient/Observation.read')")
    tok.add_argument("--fhir-user", help="the FHIR identity of the token (e.g. Practitioner/123)")
    tok.set_defaults(func=cmd_token)

    usr = with_data_dir(sub.add_parser("user", help="people who log in (SMART authorization code flow)"))
    usr.add_argument("action", choices=["add", "list", "disable", "enable", "set-password"])
    usr.add_argument("username", nargs="?")
    usr.add_argument("--tenant", default="default")
    usr.add_argument("--role", help="with add: the user's role (admin, doctor, nurse, …)")
    usr.add_argument("--fhir-user", help="with add: the user's FHIR identity, e.g. Practitioner/123")
    usr.add_argument("--facility", action="append", default=None,
                     help="with add: bind the user to this facility (repeatable; none: the whole tenant)")
    usr.set_defaults(func=cmd_user)

    cli = with_data_dir(sub.add_parser("client", help="OAuth clients: SMART apps and backend services"))
    cli.add_argument("action", choices=["add", "list", "remove"])
    cli.add_argument("client_id", nargs="?")
    cli.add_argument("--tenant", default="default")
    cli.add_argument("--type", choices=["public", "confidential"], default="public",
                     help="public: PKCE, no secret; confidential: private_key_jwt with --jwks")
    cli.add_argument("--name", help="shown on the consent page")
    cli.add_argument("--redirect-uri", action="append", default=None, help="exact redirect URI (repeatable)")
    cli.add_argument("--scope", help="the scopes the client may be granted, space-separated")
    cli.add_argument("--jwks", help="a JSON Web Key Set file with the client's public keys (RS384/ES384)")
    cli.add_argument("--grant-type", action="append", default=None,
                     choices=["authorization_code", "refresh_token", "client_credentials"])
    cli.add_argument("--role", help="client_credentials: the role its tokens carry (e.g. device)")
    cli.add_argument("--fhir-user", help="client_credentials: its FHIR identity (e.g. Device/123)")
    cli.set_defaults(func=cmd_client)

    key = with_data_dir(sub.add_parser("keys", help="the server's token-signing keys"))
    key.add_argument("action", choices=["list", "rotate"])
    key.set_defaults(func=cmd_keys)

    role = with_data_dir(sub.add_parser("role", help="a tenant's role permissions (README: Roles and permissions)"))
    role.add_argument("action", choices=["show", "grant", "revoke", "reset"])
    role.add_argument("role", nargs="?", help="the role (show: every role if omitted)")
    role.add_argument("type", nargs="?", help="an R4 resource type or * (grant/revoke: default *; reset: default all)")
    role.add_argument("--tenant", default="default")
    role.add_argument("--interaction", "-i", action="append",
                      help="read vread search history create update patch delete, or * (repeatable or comma-separated)")
    role.add_argument("--operation", "-o", action="append",
                      help="an operation name or pattern without $ (everything, meta*, finalize…; repeatable)")
    role.set_defaults(func=cmd_role)

    ten = with_data_dir(sub.add_parser("tenant", help="create or list tenants (hospitals)"))
    ten.add_argument("action", choices=["create", "list"])
    ten.add_argument("id", nargs="?", help="with create: the tenant id (a-z, 0-9, '-'; its URL is /fhir/ID)")
    ten.add_argument("--name", help="with create: the tenant's name")
    ten.set_defaults(func=cmd_tenant)

    blobs = with_data_dir(sub.add_parser("blobs", help="Binary content kept outside the database"))
    blobs.add_argument("action", choices=["gc"])
    blobs.add_argument("--min-age", type=int, default=3600,
                       help="only blobs last written this many seconds ago or earlier (default 3600)")
    blobs.add_argument("--dry-run", action="store_true", help="count, remove nothing")
    blobs.set_defaults(func=cmd_blobs)
    aud = with_data_dir(sub.add_parser("audit", help="the tamper-evident audit trail: seal, verify, head"))
    aud.add_argument("action", choices=["seal", "verify", "head"],
                     help="seal: chain what is sealable now; verify: walk the chain (exit 1 on problems); "
                          "head: print each tenant's chain head (keep it outside the database)")
    aud.add_argument("--tenant", help="only this tenant (default: every tenant)")
    aud.add_argument("--max-unsealed-age", type=float, default=600,
                     help="verify: audit rows older than this many seconds must be sealed (default 600)")
    aud.add_argument("--expect", metavar="LINK:SHA256",
                     help="verify (with --tenant): a head exported earlier that must still be in the chain")
    aud.set_defaults(func=cmd_audit)

    from hl7_bridge.cli import add_hl7_parser

    add_hl7_parser(sub, with_data_dir)  # hl7 listen | sender | messages | replay
    from fhir_server.workflows.appointments.cli import add_parser as add_appointments_parser

    add_appointments_parser(sub, with_data_dir)  # appointments mark-noshows
    from fhir_server.workflows.availability.roll import add_schedule_parser

    add_schedule_parser(sub, with_data_dir)  # schedule roll
    return parser


def main(argv: list[str] | None = None) -> int:
    logs.configure(os.environ.get("FHIR_LOG_LEVEL", "INFO"))
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except SystemExit as exc:
        return int(exc.code or 0)


if __name__ == "__main__":
    sys.exit(main())
