"""The message log (``hl7_message``): raw bytes stored first, duplicates found by
(sending application, sending facility, MSH-10), status and ACK recorded."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

__all__ = ["MessageFilter", "Stored", "get", "lock_for_processing", "mark_error", "mark_processed", "search", "store"]


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


# ---- reading the log (admin API ``/admin/hl7/messages``, ``fhir-server hl7 messages``) -------------
SUMMARY_COLUMNS = (
    "id", "received_at", "processed_at", "tenant_id", "sending_app", "sending_facility", "control_id", "message_type",
    "version", "status", "ack_code", "error", "error_location", "error_code", "attempts", "resources", "peer",
)


@dataclass(frozen=True, slots=True)
class MessageFilter:
    """Criteria over the log; every one optional, all ANDed. ``tenant`` confines to one tenant's
    messages: those stored for it and those of the senders mapped to it (their earlier errors too).
    ``message_type`` ``SIU`` or ``SIU^S12``; ``sender`` ``APP`` or ``APP@FACILITY``; ``before``: keyset
    position (ids below it: newest first)."""

    status: str | None = None
    message_type: str | None = None
    control_id: str | None = None
    sender: str | None = None
    since: Any = None  # datetime: received at or after
    until: Any = None  # datetime: received before
    tenant: str | None = None
    before: int | None = None


def _where(f: MessageFilter) -> tuple[str, list[Any]]:
    sql, binds = ["true"], []
    if f.status:
        sql.append("status = %s")
        binds.append(f.status)
    if f.message_type:
        sql.append("(message_type = %s OR message_type LIKE %s)")
        binds += [f.message_type, f.message_type.replace("%", r"\%").replace("_", r"\_") + "^%"]
    if f.control_id:
        sql.append("control_id = %s")
        binds.append(f.control_id)
    if f.sender:
        app, sep, facility = f.sender.partition("@")
        sql.append("sending_app = %s" + (" AND sending_facility = %s" if sep else ""))
        binds += [app, facility] if sep else [app]
    if f.since is not None:
        sql.append("received_at >= %s")
        binds.append(f.since)
    if f.until is not None:
        sql.append("received_at < %s")
        binds.append(f.until)
    if f.tenant is not None:
        sql.append("(tenant_id = %s OR (sending_app, sending_facility) IN "
                   "(SELECT sending_app, sending_facility FROM hl7_sender WHERE tenant_id = %s))")
        binds += [f.tenant, f.tenant]
    if f.before is not None:
        sql.append("id < %s")
        binds.append(f.before)
    return " AND ".join(sql), binds


async def search(conn: Any, f: MessageFilter, limit: int) -> list[dict[str, Any]]:
    """Log rows (never the bodies), newest first, at most ``limit``."""
    where, binds = _where(f)
    cur = await conn.execute(
        f"SELECT {', '.join(SUMMARY_COLUMNS)} FROM hl7_message WHERE {where} ORDER BY id DESC LIMIT %s", [*binds, limit]
    )
    return [dict(zip(SUMMARY_COLUMNS, row, strict=True)) for row in await cur.fetchall()]


async def get(conn: Any, message_id: int, tenant: str | None = None) -> dict[str, Any] | None:
    """One whole row, the raw bytes (``raw``) and the ACK (``ack``) included; None if there is no such
    message (or it is not ``tenant``'s)."""
    where, binds = _where(MessageFilter(tenant=tenant))
    cur = await conn.execute(
        f"SELECT {', '.join(SUMMARY_COLUMNS)}, raw, ack FROM hl7_message WHERE id = %s AND {where}", [message_id, *binds]
    )
    row = await cur.fetchone()
    return dict(zip((*SUMMARY_COLUMNS, "raw", "ack"), row, strict=True)) if row is not None else None
