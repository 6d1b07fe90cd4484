"""Shared by the audit tests: reading ``audit_event`` rows, which the batching sink may write a little later."""

from __future__ import annotations

import time

import psycopg


def audit_rows(db: psycopg.Connection, request_id: str, columns: str, *, n: int = 1, timeout: float = 30.0,
               order_by_id: bool = False) -> list[tuple]:
    """``columns`` of the request's audit rows, polled until at least ``n`` are there or ``timeout``
    seconds have passed (``timeout=0``: read once, no waiting)."""
    order = " ORDER BY id" if order_by_id else ""
    deadline = time.monotonic() + timeout
    while True:
        rows = db.execute(f"SELECT {columns} FROM audit_event WHERE request_id = %s{order}", (request_id,)).fetchall()
        if len(rows) >= n or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)
