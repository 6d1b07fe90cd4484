"""The durable outbox (``hl7_outbox``, migration 0016): SQL only.

Life of a row: ``queued`` (written by the ServiceRequest hook in the write's own transaction) →
``sending`` (claimed: ``lease_owner``/``lease_until`` set, ``attempts`` + 1) → ``sent`` (MSA-1 AA/CA,
the ACK stored) | ``failed`` (AE/AR/CE/CR, timeout, refused connection: ``last_error`` and the ACK
stored, ``next_attempt_at`` = now + backoff) → … → ``dead`` (``max_attempts`` or ``max_age`` reached;
``fhir-server hl7 outbox retry --id N`` queues it again).

Order per destination: ``claim`` only takes a destination's HEAD — its lowest sequence still
queued/sending/failed — and only when it is due (or ``sending`` with an expired lease: its dispatcher
died). So message n+1 is never sent before n was acknowledged or is dead, however many dispatchers
run (``FOR UPDATE SKIP LOCKED``: a head another dispatcher holds is skipped, and the row behind it is
not a head).
"""

from __future__ import annotations

from typing import Any

__all__ = ["CHANNEL", "claim", "enqueue", "finish", "last_event", "list_rows", "requeue_dead"]

CHANNEL = "hl7_outbox"


async def last_event(conn: Any, tenant: str, resource_id: str, destination_id: int) -> str | None:
    """The event of the last message queued for this ServiceRequest to this destination."""
    cur = await conn.execute(
        "SELECT event FROM hl7_outbox WHERE tenant_id = %s AND resource_id = %s AND destination_id = %s "
        "ORDER BY sequence DESC LIMIT 1",
        (tenant, resource_id, destination_id),
    )
    row = await cur.fetchone()
    return row[0] if row else None


async def next_sequence(conn: Any, destination_id: int) -> int:
    """The destination's next sequence number; locks its row until the transaction ends, so
    concurrent writers queue in commit order."""
    cur = await conn.execute(
        "UPDATE hl7_destination SET last_sequence = last_sequence + 1 WHERE id = %s RETURNING last_sequence",
        (destination_id,),
    )
    row = await cur.fetchone()
    return int(row[0])


async def enqueue(conn: Any, *, tenant: str, destination_id: int, sequence: int, resource_id: str, version: int,
                  event: str, message_type: str, control_id: str, message: str, error: str | None = None) -> int:
    """A new row, ``queued`` (or ``dead`` with ``error`` when the message could not be built)."""
    cur = await conn.execute(
        "INSERT INTO hl7_outbox (tenant_id, destination_id, sequence, resource_id, resource_version, event, "
        "message_type, control_id, message, status, last_error) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
        (tenant, destination_id, sequence, resource_id, version, event, message_type, control_id, message,
         "dead" if error else "queued", error),
    )
    row = await cur.fetchone()
    await conn.execute(f"NOTIFY {CHANNEL}")  # delivered at COMMIT, not at all on ROLLBACK
    return int(row[0])


_CLAIM = """
UPDATE hl7_outbox o SET status = 'sending', attempts = o.attempts + 1, lease_owner = %(owner)s,
       lease_until = clock_timestamp() + make_interval(secs => %(lease)s),
       first_attempt_at = coalesce(o.first_attempt_at, clock_timestamp()), last_attempt_at = clock_timestamp()
FROM (
    SELECT h.id FROM hl7_outbox h JOIN hl7_destination d ON d.id = h.destination_id AND d.enabled
    WHERE h.status IN ('queued', 'failed', 'sending')
      AND h.sequence = (SELECT min(x.sequence) FROM hl7_outbox x
                        WHERE x.destination_id = h.destination_id AND x.status IN ('queued', 'sending', 'failed'))
      AND CASE WHEN h.status = 'sending' THEN h.lease_until < clock_timestamp()
               ELSE h.next_attempt_at <= clock_timestamp() END
      AND NOT (h.destination_id = ANY(%(busy)s))
    ORDER BY h.next_attempt_at
    LIMIT %(limit)s
    FOR UPDATE OF h SKIP LOCKED
) due
WHERE o.id = due.id
RETURNING o.id, o.destination_id, o.control_id, o.message, o.attempts, o.created_at
"""


async def claim(conn: Any, owner: str, lease_seconds: float, busy: list[int], limit: int) -> list[tuple[Any, ...]]:
    """Up to ``limit`` due heads of destinations not in ``busy`` (those this dispatcher is sending to)."""
    cur = await conn.execute(_CLAIM, {"owner": owner, "lease": lease_seconds, "busy": busy, "limit": limit})
    return list(await cur.fetchall())


async def extend(conn: Any, outbox_id: int, owner: str, lease_seconds: float) -> None:
    await conn.execute(
        "UPDATE hl7_outbox SET lease_until = clock_timestamp() + make_interval(secs => %s) "
        "WHERE id = %s AND lease_owner = %s AND status = 'sending'",
        (lease_seconds, outbox_id, owner),
    )


async def finish(conn: Any, outbox_id: int, owner: str, *, status: str, error: str | None = None,
                 ack_code: str | None = None, ack_text: str | None = None, ack: str | None = None,
                 retry_in: float | None = None) -> bool:
    """Record an attempt's outcome (only while this dispatcher holds the lease). ``last_error`` keeps
    the previous failure when an attempt succeeds (why it took more than one)."""
    cur = await conn.execute(
        "UPDATE hl7_outbox SET status = %s, last_error = coalesce(%s, last_error), ack_code = %s, ack_text = %s, ack = %s, "
        "lease_owner = NULL, lease_until = NULL, "
        "sent_at = CASE WHEN %s = 'sent' THEN clock_timestamp() END, "
        "next_attempt_at = CASE WHEN %s::float8 IS NULL THEN next_attempt_at "
        "                       ELSE clock_timestamp() + make_interval(secs => %s::float8) END "
        "WHERE id = %s AND lease_owner = %s AND status = 'sending'",
        (status, error, ack_code, ack_text, ack, status, retry_in, retry_in, outbox_id, owner),
    )
    return bool(cur.rowcount)


async def requeue_dead(conn: Any, outbox_id: int) -> bool:
    """``outbox retry``: a dead (or failed) row is due again now, with a fresh attempt budget."""
    cur = await conn.execute(
        "UPDATE hl7_outbox SET status = 'queued', attempts = 0, next_attempt_at = clock_timestamp(), "
        "created_at = clock_timestamp(), last_error = NULL WHERE id = %s AND status IN ('dead', 'failed') AND message <> ''",
        (outbox_id,),
    )
    if cur.rowcount:
        await conn.execute(f"NOTIFY {CHANNEL}")
    return bool(cur.rowcount)


LIST_COLUMNS = ["id", "tenant", "destination", "sequence", "resource", "event", "message_type", "control_id", "status",
                "attempts", "next_attempt_at", "last_error", "ack_code", "ack_text", "created_at", "sent_at"]


async def list_rows(conn: Any, *, status: str | None = None, tenant: str | None = None, destination: str | None = None,
                    limit: int = 50) -> list[dict[str, Any]]:
    sql = ("SELECT o.id, o.tenant_id, d.name, o.sequence, o.resource_type || '/' || o.resource_id || '/_history/' || "
           "o.resource_version, o.event, o.message_type, o.control_id, o.status, o.attempts, o.next_attempt_at, "
           "o.last_error, o.ack_code, o.ack_text, o.created_at, o.sent_at "
           "FROM hl7_outbox o JOIN hl7_destination d ON d.id = o.destination_id WHERE true")
    binds: list[Any] = []
    for col, value in (("o.status", status), ("o.tenant_id", tenant), ("d.name", destination)):
        if value:
            sql += f" AND {col} = %s"
            binds.append(value)
    sql += " ORDER BY o.id DESC LIMIT %s"
    binds.append(limit)
    cur = await conn.execute(sql, binds)
    return [dict(zip(LIST_COLUMNS, row, strict=True)) for row in await cur.fetchall()]
