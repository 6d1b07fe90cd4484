"""The job runner: an asyncio task in every server process that runs durable jobs one at a time.

Kinds plug in with ``register_kind("reindex", handler)``; a handler is ``async (JobContext) ->
result dict | None``. It does its work in batches, each in one transaction that ends with
``await ctx.save(conn, checkpoint=…, progress=…)``, so a job resumes from its last committed batch
wherever it stopped. The runner:

* claims the oldest queued job of a kind this process knows (``store.claim``, ``FOR UPDATE SKIP
  LOCKED``: with several worker processes each job runs once), or a ``running`` one whose heartbeat
  is older than ``stale_seconds`` (the process that ran it died);
* beats the job's heartbeat every ``heartbeat_seconds`` while the handler runs;
* records ``completed`` with the handler's result, or ``failed`` with the error;
* on shutdown gives its job back to the queue (``queued``, checkpoint kept) for the next process;
* polls every ``poll_seconds``; ``wake()`` (called when this process queues a job) starts at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection

from fhir_server.jobs import store
from fhir_server.jobs.store import Job
from fhir_server.storage.db import Database

__all__ = ["JobContext", "JobLost", "JobRunner", "register_kind", "registered_kinds"]

log = logging.getLogger(__name__)

_CLEANUP_SECONDS = 600.0


class JobLost(Exception):
    """This runner no longer holds the job: it was cancelled or taken over."""


@dataclass(slots=True)
class JobContext:
    db: Database
    job: Job
    worker: str

    async def save(self, conn: AsyncConnection, *, checkpoint: dict[str, Any] | None, progress: dict[str, Any]) -> None:
        """Record progress in the caller's transaction; raises ``JobLost`` (roll the batch back)."""
        if not await store.save(conn, self.job, self.worker, checkpoint=checkpoint, progress=progress):
            raise JobLost(f"job {self.job.id} is no longer held by this runner")
        self.job.checkpoint, self.job.progress = checkpoint, progress


Handler = Callable[[JobContext], Awaitable[dict[str, Any] | None]]
Cleanup = Callable[[Job], Awaitable[None]]
_KINDS: dict[str, Handler] = {}
_CLEANUPS: dict[str, Cleanup] = {}


def register_kind(kind: str, handler: Handler, *, cleanup: Cleanup | None = None) -> None:
    """``cleanup`` runs for an expired job of ``kind`` before its row is deleted (e.g. its files)."""
    _KINDS[kind] = handler
    if cleanup is not None:
        _CLEANUPS[kind] = cleanup


def registered_kinds() -> list[str]:
    return sorted(_KINDS)


class JobRunner:
    def __init__(
        self,
        db: Database,
        *,
        poll_seconds: float = 2.0,
        stale_seconds: float = 60.0,
        heartbeat_seconds: float = 10.0,
    ) -> None:
        self.db = db
        self.poll_seconds = poll_seconds
        self.stale_seconds = stale_seconds
        self.heartbeat_seconds = heartbeat_seconds
        self.worker = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._last_cleanup = 0.0

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="job-runner")

    def wake(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        while not self._stopping:
            try:
                ran = await self.run_one()
                if time.monotonic() - self._last_cleanup > _CLEANUP_SECONDS:
                    self._last_cleanup = time.monotonic()
                    await self.remove_expired()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("job runner: claiming failed")
                ran = False
            if not ran:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll_seconds)

    async def remove_expired(self) -> None:
        """Expired jobs: their kind's cleanup first (files...), then the row."""
        async with self.db.connection() as conn:
            expired = await store.expired(conn)
        for job in expired:
            cleanup = _CLEANUPS.get(job.kind)
            if cleanup is not None:
                await cleanup(job)
            async with self.db.connection() as conn:
                await store.delete(conn, job)

    async def run_one(self) -> bool:
        """Claim one job and run it to its end; False when there was none."""
        kinds = registered_kinds()
        if not kinds:
            return False
        async with self.db.connection() as conn:
            job = await store.claim(conn, kinds, self.worker, self.stale_seconds)
        if job is None:
            return False
        await self._run(job)
        return True

    async def _run(self, job: Job) -> None:
        log.info("job started", extra={"job": str(job.id), "kind": job.kind, "tenant_id": job.tenant_id})
        beat = asyncio.create_task(self._heartbeat(job))
        ctx = JobContext(self.db, job, self.worker)
        try:
            result = await _KINDS[job.kind](ctx)
        except JobLost:
            log.info("job no longer held (cancelled or taken over)", extra={"job": str(job.id)})
            return
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                async with self.db.connection() as conn:
                    await store.release(conn, job, self.worker)
            raise
        except Exception as exc:
            log.exception("job failed", extra={"job": str(job.id), "kind": job.kind})
            async with self.db.connection() as conn:
                await store.finish(conn, job, self.worker, "failed", error=f"{type(exc).__name__}: {exc}"[:2000])
            return
        finally:
            beat.cancel()
        async with self.db.connection() as conn:
            await store.finish(conn, job, self.worker, "completed", result=result)
        log.info("job completed", extra={"job": str(job.id), "kind": job.kind})

    async def _heartbeat(self, job: Job) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_seconds)
            try:
                async with self.db.connection() as conn:
                    if not await store.heartbeat(conn, job, self.worker):
                        return
            except Exception:
                log.warning("job heartbeat failed", extra={"job": str(job.id)}, exc_info=True)
