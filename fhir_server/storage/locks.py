"""Transaction-scoped PostgreSQL advisory locks named by text parts.

One key function for every lock the server takes (conditional writes, bookings and queue tokens,
seeding the project definitions, the audit sealer): a 64-bit blake2b of the parts joined by
``\\x1f``, so two lock names never collide by concatenation and every caller hashes the same way.
"""

from __future__ import annotations

import hashlib
from typing import Any

__all__ = ["advisory_lock", "lock_key"]


def lock_key(*parts: str) -> int:
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


async def advisory_lock(conn: Any, *parts: str) -> None:
    """``pg_advisory_xact_lock`` on ``lock_key(*parts)``: held until the transaction of ``conn`` ends
    (re-entrant on one connection)."""
    await conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key(*parts),), prepare=True)
