"""Batching writer of audit rows for reads, searches, history and failures.

Rows are buffered in memory and written with COPY every ``interval`` seconds (or at ``max_batch``
rows) and on shutdown. A crash can lose at most the last interval of read audits; successful writes
never depend on this path (their audit row is part of the write's own statement).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from fhir_server.audit.rows import COLUMNS
from fhir_server.storage.db import Database

log = logging.getLogger("fhir_server.audit")

_COPY = f"COPY audit_event ({', '.join(COLUMNS)}) FROM STDIN"
_MAX_BUFFERED = 100_000  # if the database is unreachable, keep at most this many rows waiting


class AuditSink:
    def __init__(self, db: Database, *, interval: float = 0.2, max_batch: int = 1000) -> None:
        self.db = db
        self.interval = interval
        self.max_batch = max_batch
        self._rows: list[tuple[Any, ...]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def add(self, row: tuple[Any, ...]) -> None:
        self._rows.append(row)
        if len(self._rows) >= self.max_batch:
            self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="audit-sink")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            self._wake.clear()
            await self.flush()

    async def flush(self) -> None:
        rows, self._rows = self._rows, []
        if not rows:
            return
        try:
            async with self.db.connection() as conn, conn.cursor() as cur, cur.copy(_COPY) as copy:
                for row in rows:
                    await copy.write_row(row)
        except Exception:
            log.exception("audit rows could not be written; will retry", extra={"rows": len(rows)})
            self._rows = (rows + self._rows)[-_MAX_BUFFERED:]
