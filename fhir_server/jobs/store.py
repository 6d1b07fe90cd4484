"""SQL for the ``job`` table (migration 0008). Callers hold the connection; every value is a bind.

Claiming is one statement: the oldest claimable job of a kind this process can run, locked with
``FOR UPDATE SKIP LOCKED`` so two runners never take the same row, is set ``running`` under the
claiming runner's ``worker`` id (its lease). Progress, heartbeats and the end of a job are written
``WHERE worker = <lease> AND status = 'running'``: a runner that lost the job (cancelled, or
taken over after its heartbeat went stale) writes nothing and learns it from the row count.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

STATUSES = ("queued", "running", "completed", "failed", "cancelled")
FINISHED = frozenset({"completed", "failed", "cancelled"})

_COLS = (
    "tenant_id, id, kind, status, owner, request, progress, checkpoint, result, error, "
    "created, started, updated, finished, expires, heartbeat"
)


@dataclass(slots=True)
class Job:
    tenant_id: str
    id: uuid.UUID
    kind: str
    status: str
    owner: str | None
    request: dict[str, Any]
    progress: dict[str, Any]
    checkpoint: dict[str, Any] | None
    result: dict[str, Any] | None
    error: str | None
    created: datetime
    started: datetime | None
    updated: datetime
    finished: datetime | None
    expires: datetime | None
    heartbeat: datetime | None


def _job(row: tuple[Any, ...] | None) -> Job | None:
    return Job(*row) if row else None


async def create(
    conn: AsyncConnection, tenant: str, kind: str, *, owner: str | None, request: dict[str, Any]
) -> Job:
    cur = await conn.execute(
        f"INSERT INTO job (tenant_id, id, kind, status, owner, request) VALUES (%s, %s, %s, 'queued', %s, %s) "
        f"RETURNING {_COLS}",
        (tenant, uuid.uuid4(), kind, owner, Jsonb(request)),
    )
    job = _job(await cur.fetchone())
    assert job is not None
    return job


async def get(conn: AsyncConnection, tenant: str, job_id: uuid.UUID) -> Job | None:
    cur = await conn.execute(f"SELECT {_COLS} FROM job WHERE tenant_id = %s AND id = %s", (tenant, job_id))
    return _job(await cur.fetchone())


async def claim(conn: AsyncConnection, kinds: list[str], worker: str, stale_seconds: float) -> Job | None:
    """Take the oldest queued job of ``kinds``, or a running one whose heartbeat is older than
    ``stale_seconds`` (its runner died); it resumes from its checkpoint."""
    cur = await conn.execute(
        "UPDATE job j SET status = 'running', worker = %(w)s, heartbeat = now(), updated = now(), "
        "started = coalesce(j.started, now()) "
        "FROM (SELECT tenant_id, id FROM job WHERE kind = ANY(%(kinds)s) AND (status = 'queued' OR "
        "(status = 'running' AND heartbeat < now() - make_interval(secs => %(stale)s))) "
        "ORDER BY created LIMIT 1 FOR UPDATE SKIP LOCKED) c "
        f"WHERE j.tenant_id = c.tenant_id AND j.id = c.id RETURNING {', '.join('j.' + c for c in _COLS.split(', '))}",
        {"w": worker, "kinds": kinds, "stale": stale_seconds},
    )
    return _job(await cur.fetchone())


async def save(
    conn: AsyncConnection, job: Job, worker: str, *, checkpoint: dict[str, Any] | None, progress: dict[str, Any]
) -> bool:
    """Record progress (in the caller's transaction, with the work it describes); False if the
    runner no longer holds the job."""
    cur = await conn.execute(
        "UPDATE job SET checkpoint = %s, progress = %s, heartbeat = now(), updated = now() "
        "WHERE tenant_id = %s AND id = %s AND worker = %s AND status = 'running'",
        (Jsonb(checkpoint) if checkpoint is not None else None, Jsonb(progress), job.tenant_id, job.id, worker),
    )
    return cur.rowcount == 1


async def heartbeat(conn: AsyncConnection, job: Job, worker: str) -> bool:
    cur = await conn.execute(
        "UPDATE job SET heartbeat = now() WHERE tenant_id = %s AND id = %s AND worker = %s AND status = 'running'",
        (job.tenant_id, job.id, worker),
    )
    return cur.rowcount == 1


async def finish(
    conn: AsyncConnection,
    job: Job,
    worker: str,
    status: str,
    *,
    result: dict[str, Any] | None = None,
    error: str | None = None,
    keep_days: int = 7,
) -> bool:
    assert status in FINISHED
    cur = await conn.execute(
        "UPDATE job SET status = %s, result = %s, error = %s, finished = now(), updated = now(), "
        "expires = now() + make_interval(days => %s) "
        "WHERE tenant_id = %s AND id = %s AND worker = %s AND status = 'running'",
        (status, Jsonb(result) if result is not None else None, error, keep_days, job.tenant_id, job.id, worker),
    )
    return cur.rowcount == 1


async def release(conn: AsyncConnection, job: Job, worker: str) -> bool:
    """Give a running job back to the queue (this process is stopping); it resumes from its checkpoint."""
    cur = await conn.execute(
        "UPDATE job SET status = 'queued', worker = NULL, updated = now() "
        "WHERE tenant_id = %s AND id = %s AND worker = %s AND status = 'running'",
        (job.tenant_id, job.id, worker),
    )
    return cur.rowcount == 1


async def cancel(conn: AsyncConnection, tenant: str, job_id: uuid.UUID, kind: str) -> Job | None:
    """Mark a queued or running job cancelled (its runner stops at its next checkpoint)."""
    cur = await conn.execute(
        "UPDATE job SET status = 'cancelled', finished = now(), updated = now(), "
        "expires = now() + interval '7 days' "
        f"WHERE tenant_id = %s AND id = %s AND kind = %s AND status IN ('queued', 'running') RETURNING {_COLS}",
        (tenant, job_id, kind),
    )
    return _job(await cur.fetchone())


async def expired(conn: AsyncConnection, limit: int = 500) -> list[Job]:
    cur = await conn.execute(f"SELECT {_COLS} FROM job WHERE expires < now() ORDER BY expires LIMIT %s", (limit,))
    return [Job(*row) for row in await cur.fetchall()]


async def delete(conn: AsyncConnection, job: Job) -> None:
    await conn.execute("DELETE FROM job WHERE tenant_id = %s AND id = %s", (job.tenant_id, job.id))
