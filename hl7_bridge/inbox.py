"""The message log (``hl7_message``): raw bytes stored first, duplicates found by
(sending application, sending facility, MSH-10), status and ACK recorded."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

__all__ = ["Stored", "lock_for_processing", "mark_error", "mark_processed", "store"]


@dataclass(frozen=True, slots=True)
class Stored:
    id: int
    duplicate: bool
    status: str
    ack: str | None


async def store(
    db: Any, raw: bytes, *, tenant: str | None, app: str | None, facility: str | None, control_id: str | None,
    message_type: str | None, version: str | None, peer: str | None,
) -> Stored:
    """INSERT the raw message in its own (autocommit) statement, or find the earlier one with the
    same key. Returns before any processing, so the message survives whatever happens next."""
    async with db.connection() as conn:
        cur = await conn.execute(
            "INSERT INTO hl7_message (tenant_id, sending_app, sending_facility, control_id, message_type, version, raw, peer) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (sending_app, sending_facility, control_id) WHERE control_id IS NOT NULL DO NOTHING RETURNING id",
            (tenant, app, facility, control_id, message_type, version, raw, peer), prepare=True,
        )
        row = await cur.fetchone()
        if row is not None:
            return Stored(int(row[0]), False, "received", None)
        cur = await conn.execute(
            "SELECT id, status, ack FROM hl7_message WHERE sending_app = %s AND sending_facility = %s AND control_id = %s",
            (app, facility, control_id),
        )
        found = await cur.fetchone()
    assert found is not None
    return Stored(int(found[0]), True, found[1], found[2])


async def lock_for_processing(conn: Any, message_id: int) -> tuple[str, str | None, int]:
    """In the processing transaction: lock the row (a concurrent duplicate waits here) and return
    (status, ack, attempts). ``attempts`` counts finished tries (processed or error)."""
    cur = await conn.execute("SELECT status, ack, attempts FROM hl7_message WHERE id = %s FOR UPDATE", (message_id,), prepare=True)
    row = await cur.fetchone()
    assert row is not None, f"hl7_message {message_id} vanished"
    return row[0], row[1], row[2]


async def mark_processed(conn: Any, message_id: int, ack_code: str, ack: str, resources: list[str], note: str | None) -> None:
    await conn.execute(
        "UPDATE hl7_message SET status = 'processed', processed_at = clock_timestamp(), ack_code = %s, ack = %s, "
        "resources = %s::jsonb, error = %s, error_location = NULL, error_code = NULL, attempts = attempts + 1 WHERE id = %s",
        (ack_code, ack, orjson.dumps(resources).decode(), note, message_id), prepare=True,
    )


async def mark_error(db: Any, message_id: int, ack_code: str, ack: str, error: str, location: str, code: str) -> None:
    """After the processing transaction rolled back: the error and the ACK sent, for review/replay."""
    async with db.connection() as conn:
        await conn.execute(
            "UPDATE hl7_message SET status = 'error', processed_at = clock_timestamp(), ack_code = %s, ack = %s, "
            "error = %s, error_location = %s, error_code = %s, attempts = attempts + 1 WHERE id = %s",
            (ack_code, ack, error, location, code, message_id),
        )
