"""The ASGI application: create_app(settings) wires routers, errors, auth and the database pool."""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from fhir_server import logs
from fhir_server.api import errors, routes
from fhir_server.api.middleware import RequestIdAndLog
from fhir_server.audit import switch as audit_switch
from fhir_server.audit.chain import Sealer
from fhir_server.audit.middleware import AuditTrail
from fhir_server.audit.sink import AuditSink
from fhir_server.auth import oauth
from fhir_server.auth.middleware import BearerAuth
from fhir_server.bulk import export as bulk_export
from fhir_server.jobs.runner import JobRunner
from fhir_server.ratelimit.middleware import RateLimit, RatePolicy, make_backend
from fhir_server.services.binary import BinaryPolicy
from fhir_server.settings import Settings
from fhir_server.storage.blobs import open_blob_store
from fhir_server.storage.db import Database
from fhir_server.tenancy.middleware import TenantFromPath
from fhir_server.timeutil import now

log = logging.getLogger("fhir_server")


def _warm_up() -> None:
    """Load the R4 definitions before the first request rather than during it."""
    from fhir_server.search.extract import extract_index_rows
    from fhir_server.search.registry import get_registry
    from fhir_server.validation import validate_resource

    get_registry()
    extract_index_rows({"resourceType": "Patient", "name": [{"family": "warm-up"}]})
    validate_resource({"resourceType": "Basic", "code": {"text": "warm-up"}})
    # The R4 definitions are ~100k long-lived objects: move them out of the collector's sight,
    # or every full collection walks them (≈56 ms pauses, the p99 spikes in bench/README.md).
    gc.collect()
    gc.freeze()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    logs.configure(os.environ.get("FHIR_LOG_LEVEL", "INFO"))  # also in uvicorn's worker processes
    audit_switch.configure(settings.audit)
    if not settings.audit:
        log.error("FHIR_AUDIT=off: THE AUDIT TRAIL IS OFF in this process; no access is recorded. "
                  "This setting exists for benchmarks only and must never be used with real patient data.")
    if not settings.database_url:
        raise RuntimeError("DATABASE_URL is not set; start the server with `fhir-server serve`")
    database_url = settings.database_url

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = Database(database_url, min_size=settings.pool_min_size, max_size=settings.pool_max_size)
        await db.open()
        app.state.db = db
        app.state.audit_sink = AuditSink(db)
        app.state.audit_sink.start()
        app.state.audit_sealer = Sealer(db, interval=settings.audit_seal_interval)  # the hash chain (audit/chain.py)
        app.state.audit_sealer.start()
        app.state.blobs = open_blob_store(settings)  # Binary content (services/binary.py)
        bulk_export.configure(app.state.blobs)  # $export output files
        app.state.binary_policy = BinaryPolicy.from_settings(settings)
        _warm_up()
        app.state.rate_limiter = make_backend(settings, db)
        app.state.jobs = JobRunner(db)  # $reindex (and later $export) jobs, resumed after a restart
        app.state.jobs.start()
        await app.state.oauth.start()  # sync pool, external JWKS, revocation/key poller
        if settings.dev_mode:
            log.warning("DEVELOPMENT MODE: authentication is OFF in this worker; every request is served "
                        "without a token. Never run this with real patient data.")
        log.info("fhir server ready", extra={"dev_mode": settings.dev_mode})
        try:
            yield
        finally:
            await app.state.oauth.stop()
            await app.state.jobs.stop()
            await app.state.audit_sink.stop()
            await app.state.audit_sealer.stop()
            await app.state.blobs.close()
            await db.close()

    app = FastAPI(lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None, title="fhir-server")
    app.state.settings = settings
    app.state.started_at = now()
    routes.install(app)
    errors.install(app)

    # SMART on FHIR: /auth/*, .well-known, /admin (fhir_server/auth/oauth); its verifier checks bearer tokens
    oauth_runtime = oauth.install(app, settings, database_url)
    from hl7_bridge import admin_api as hl7_admin_api  # /admin/hl7/messages: the HL7 v2 message log (issue 6)

    hl7_admin_api.install(app)
    verifier = None if settings.dev_mode else oauth_runtime.verifier
    app.add_middleware(RateLimit, policy=RatePolicy.from_settings(settings))  # inside auth: knows the user
    app.add_middleware(BearerAuth, verifier=verifier)
    app.add_middleware(AuditTrail)  # outside auth, so refused requests are audited too
    # /fhir/{tenant}/… → /fhir/… + state["tenant"]: before audit and auth, which need the tenant
    app.add_middleware(TenantFromPath, default_tenant=settings.default_tenant)
    app.add_middleware(RequestIdAndLog, access_log=settings.access_log)
    _add_cors(app, settings)  # outermost: preflights and error answers carry the CORS headers
    return app


def _add_cors(app: FastAPI, settings: Settings) -> None:
    """CORS for browser frontends (https://fetch.spec.whatwg.org/#http-cors-protocol), off unless
    ``FHIR_CORS_ORIGINS`` lists origins; a wildcard together with credentials is refused."""
    origins = [o.strip() for o in settings.cors_origins.split(",") if o.strip()]
    if not origins:
        return
    if "*" in origins and settings.cors_allow_credentials:
        raise ValueError("FHIR_CORS_ORIGINS='*' cannot be used with FHIR_CORS_ALLOW_CREDENTIALS: name the origins")
    app.add_middleware(
        CORSMiddleware,
        allow_origins=origins,
        allow_credentials=settings.cors_allow_credentials,
        allow_methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
        allow_headers=CORS_REQUEST_HEADERS,
        expose_headers=CORS_EXPOSED_HEADERS,
        max_age=settings.cors_max_age,
    )


CORS_REQUEST_HEADERS = [
    "Authorization", "Content-Type", "Accept", "Prefer", "If-Match", "If-None-Match", "If-None-Exist",
    "If-Modified-Since", "X-Request-Id", "X-Security-Context",
]
CORS_EXPOSED_HEADERS = [
    "ETag", "Location", "Content-Location", "Last-Modified", "X-Request-Id", "X-Progress", "Retry-After",
]
