"""What the OAuth side holds per process: keys, the verifier, the authlib server, a sync pool, a poller.

The poller keeps every worker current with what another process wrote: revoked access-token jtis
(every ``POLL_SECONDS``; the worker that took a revocation applies it at once), signing keys after
``fhir-server keys rotate`` and expired rows to delete (every ``KEYS_SECONDS``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

import psycopg
from psycopg_pool import ConnectionPool
from starlette.concurrency import run_in_threadpool

from fhir_server.auth.oauth.external import ExternalProvider
from fhir_server.auth.oauth.keys import ServerKeys, load_server_keys
from fhir_server.auth.oauth.server import SmartAuthorizationServer, bind_connection
from fhir_server.auth.tokens import TokenVerifier
from fhir_server.settings import Settings

__all__ = ["OAuthRuntime", "load_or_create_secret"]

log = logging.getLogger("fhir_server.auth")
POLL_SECONDS = 2.0
KEYS_SECONDS = 60.0
T = TypeVar("T")

# authlib logs issued tokens at DEBUG ("Issue token …"): never let them reach a log
logging.getLogger("authlib").setLevel(logging.INFO)


def load_or_create_secret(database_url: str, name: str) -> str:
    """A random per-database secret (``server_secret``), made once and shared by every process."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO server_secret (name, value) VALUES (%s, %s) ON CONFLICT (name) DO NOTHING",
            (name, secrets.token_urlsafe(48)),
        )
        row = conn.execute("SELECT value FROM server_secret WHERE name = %s", (name,)).fetchone()
    assert row is not None
    return str(row[0])


def max_token_lifetime(settings: Settings) -> timedelta:
    return timedelta(seconds=max(settings.token_ttl_seconds, 3600))


class OAuthRuntime:
    def __init__(self, settings: Settings, database_url: str) -> None:
        self.settings = settings
        self.database_url = database_url
        with psycopg.connect(database_url, autocommit=True) as conn:
            keys = load_server_keys(conn, max_token_lifetime(settings))
        secret = settings.auth_secret.get_secret_value() if settings.auth_secret else load_or_create_secret(database_url, "csrf-key")
        self.csrf_key = hashlib.sha256(b"fhir-server csrf\0" + secret.encode()).digest()
        self.external = [ExternalProvider(p) for p in settings.oidc_providers]
        self.verifier = TokenVerifier(keys, issuer=settings.auth_issuer, base_url=settings.base_url, external=self.external)
        self.server = SmartAuthorizationServer(self)
        self.pool = ConnectionPool(
            database_url, min_size=1, max_size=4, open=False,
            kwargs={"autocommit": True, "application_name": "fhir-auth"},
        )
        self._poller: asyncio.Task[None] | None = None

    @property
    def keys(self) -> ServerKeys:
        return self.verifier.keys

    # -- where the server is seen from --
    def origin(self, scheme: str, host: str | None) -> str:
        return self.verifier.origin(scheme, host)

    def issuer(self, origin: str) -> str:
        return self.settings.auth_issuer or origin

    def fhir_base(self, origin: str) -> str:
        return self.settings.base_url.rstrip("/") if self.settings.base_url else f"{origin}/fhir"

    # -- running authlib --
    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in a worker thread, its OAuth callbacks on one pooled connection."""

        def work() -> T:
            with self.pool.connection() as conn:
                bind_connection(conn)
                try:
                    return fn(*args)
                finally:
                    bind_connection(None)

        return await run_in_threadpool(work)

    # -- lifecycle --
    async def start(self) -> None:
        await run_in_threadpool(self.pool.open, True, 30.0)
        for provider in self.external:
            await provider.refresh(force=True)
        await self._reload_revoked()
        self._poller = asyncio.create_task(self._poll(), name="oauth-poller")

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        await run_in_threadpool(self.pool.close)

    async def _reload_revoked(self) -> None:
        def load(conn: psycopg.Connection[Any]) -> set[str]:
            return {r[0] for r in conn.execute("SELECT jti FROM oauth_revoked_jti WHERE expires_at > now()").fetchall()}

        self.verifier.revoked = await self.with_conn(load)

    async def with_conn(self, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        def work() -> T:
            with self.pool.connection() as conn:
                return fn(conn)

        return await run_in_threadpool(work)

    async def _poll(self) -> None:
        since_keys = 0.0
        while True:
            await asyncio.sleep(POLL_SECONDS)
            since_keys += POLL_SECONDS
            try:
                await self._reload_revoked()
                if since_keys >= KEYS_SECONDS:
                    since_keys = 0.0
                    self.verifier.keys = await self.with_conn(
                        lambda c: load_server_keys(c, max_token_lifetime(self.settings)))
                    await self.with_conn(_delete_expired)
            except Exception:  # the database is away for a moment: keep what we have, try again
                log.warning("could not refresh OAuth keys and revocations", exc_info=True)


def _delete_expired(conn: psycopg.Connection[Any]) -> None:
    conn.execute("DELETE FROM oauth_revoked_jti WHERE expires_at < now()")
    conn.execute("DELETE FROM oauth_assertion_jti WHERE expires_at < now()")
    conn.execute("DELETE FROM oauth_code WHERE expires_at < now() - interval '1 day'")
    conn.execute("DELETE FROM oauth_refresh_token WHERE expires_at < now() - interval '1 day'")
