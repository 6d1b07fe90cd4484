"""A PostgreSQL storage for the ``limits`` library's fixed-window strategy.

Every worker process (and every server host on one database) shares the counters. A hit on
several keys is ONE statement (``incr_many``): an upsert per key that restarts the window when it
has expired and returns the new counts. ``limits``' own async storage API (``incr``, ``get``,
``get_expiry``, ``clear``, ``reset``, ``check``) is implemented too, so the library's
``FixedWindowRateLimiter`` can drive it like its Redis or memory storages.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg
from limits.aio.storage import Storage

from fhir_server.storage.db import Database

_INCR = (
    "INSERT INTO rate_limit AS r (key, count, expires_at) "
    "SELECT k, a, now() + make_interval(secs => e) FROM unnest(%(keys)s::text[], %(amounts)s::bigint[], "
    "%(expiries)s::float8[]) AS u(k, a, e) "
    "ON CONFLICT (key) DO UPDATE SET "
    "count = CASE WHEN r.expires_at <= now() THEN excluded.count ELSE r.count + excluded.count END, "
    "expires_at = CASE WHEN r.expires_at <= now() THEN excluded.expires_at ELSE r.expires_at END "
    "RETURNING key, count, extract(epoch FROM expires_at)"
)


class PostgresStorage(Storage):
    STORAGE_SCHEME = ["fhir-postgresql"]  # noqa: RUF012  (limits declares it `list[str] | None`, not ClassVar)

    def __init__(self, db: Database, **options: Any) -> None:
        super().__init__(None, wrap_exceptions=False)
        self.db = db

    @property
    def base_exceptions(self) -> type[Exception]:
        return psycopg.Error

    async def incr_many(
        self, keys: list[str], expiry: list[float], amounts: int | list[int] = 1
    ) -> dict[str, tuple[int, float]]:
        """Add ``amounts`` hits to each key; ``{key: (count in its window, window end as epoch seconds)}``."""
        if isinstance(amounts, int):
            amounts = [amounts] * len(keys)
        async with self.db.connection() as conn:
            cur = await conn.execute(_INCR, {"keys": keys, "amounts": amounts, "expiries": expiry}, prepare=True)
            return {key: (int(count), float(end)) for key, count, end in await cur.fetchall()}

    async def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        return (await self.incr_many([key], [float(expiry)], amount))[key][0]

    async def get(self, key: str) -> int:
        async with self.db.connection() as conn:
            cur = await conn.execute("SELECT count FROM rate_limit WHERE key = %s AND expires_at > now()", (key,))
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def get_expiry(self, key: str) -> float:
        async with self.db.connection() as conn:
            cur = await conn.execute("SELECT extract(epoch FROM expires_at) FROM rate_limit WHERE key = %s", (key,))
            row = await cur.fetchone()
        return float(row[0]) if row else time.time()

    async def check(self) -> bool:
        try:
            async with self.db.connection() as conn:
                await conn.execute("SELECT 1")
            return True
        except psycopg.Error:
            return False

    async def reset(self) -> int | None:
        async with self.db.connection() as conn:
            cur = await conn.execute("DELETE FROM rate_limit")
            return cur.rowcount

    async def clear(self, key: str) -> None:
        async with self.db.connection() as conn:
            await conn.execute("DELETE FROM rate_limit WHERE key = %s", (key,))

    async def remove_expired(self) -> int:
        async with self.db.connection() as conn:
            cur = await conn.execute("DELETE FROM rate_limit WHERE expires_at < now() - interval '1 minute'")
            return cur.rowcount
