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
        uvicorn.run("fhir_server.app:create_app", host=args.host, port=args.port, workers=args.workers, **UVICORN_OPTIONS)
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

    with database(_settings(args), upgrade=False) as url:
        return asyncio.run(run_import(url, [Path(p) for p in args.paths], tenant=args.tenant, server_ids=args.server_ids))


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
    from fhir_server.auth.tokens import issue_token, load_or_create_secret

    settings = _settings(args)
    with database(settings, upgrade=False) as url:
        secret = settings.auth_secret.get_secret_value() if settings.auth_secret else load_or_create_secret(url)
    print(issue_token(secret, tenant=args.tenant, role=args.role, subject=args.subject, ttl_seconds=args.ttl))
    return 0


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
    serve.set_defaults(func=cmd_serve)

    db = with_data_dir(sub.add_parser("db", help="database schema"))
    db.add_argument("action", choices=["upgrade", "current"])
    db.set_defaults(func=cmd_db)

    imp = with_data_dir(sub.add_parser("import", help="load Bundles (.json) or NDJSON (.ndjson) files or folders"))
    imp.add_argument("paths", nargs="+")
    imp.add_argument("--tenant", default="default")
    imp.add_argument("--server-ids", action="store_true",
                     help="POSTed bundle entries get server ids as over HTTP (default: a urn:uuid fullUrl's uuid)")
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
    tok.set_defaults(func=cmd_token)

    blobs = with_data_dir(sub.add_parser("blobs", help="Binary content kept outside the database"))
    blobs.add_argument("action", choices=["gc"])
    blobs.add_argument("--min-age", type=int, default=3600,
                       help="only blobs last written this many seconds ago or earlier (default 3600)")
    blobs.add_argument("--dry-run", action="store_true", help="count, remove nothing")
    blobs.set_defaults(func=cmd_blobs)
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
