"""The connection pool (psycopg 3, async).

Measured on this machine (2 cores; primary-key read of a JSONB row, 16 tasks):
psycopg's AsyncConnectionPool ≈ 6,400 reads/s vs SQLAlchemy 2 AsyncEngine + text() ≈ 2,000/s,
so queries go through psycopg directly; SQLAlchemy/Alembic run the schema migrations.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

EXPLICIT_ONLY = 1 << 62  # prepare_threshold: only statements executed with prepare=True are prepared


class Database:
    def __init__(self, url: str, *, min_size: int = 4, max_size: int = 16, application_name: str = "fhir-api") -> None:
        self.pool = AsyncConnectionPool(
            url,
            min_size=min_size,
            max_size=max_size,
            open=False,
            # No AUTOMATIC server-side preparation: a prepared search would switch to PostgreSQL's
            # generic plan after 5 runs, which ignores the bound values (bench/README.md "Search at
            # scale": Observation patient+code 3 ms → 5.8 s). Fixed-shape writes and key lookups ask
            # for it themselves (``prepare=True``). A threshold that is never reached, not None:
            # psycopg ignores ``prepare=True`` on a connection whose threshold is None.
            kwargs={"autocommit": True, "application_name": application_name, "prepare_threshold": EXPLICIT_ONLY},
        )

    async def open(self) -> None:
        await self.pool.open(wait=True, timeout=30)

    async def close(self) -> None:
        await self.pool.close()

    def connection(self) -> AbstractAsyncContextManager[AsyncConnection]:
        """A pooled autocommit connection (the pool's own context manager: no extra layer per read)."""
        return self.pool.connection()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """A connection inside one database transaction: committed on exit, rolled back on error."""
        async with self.pool.connection() as conn, conn.transaction():
            yield conn
