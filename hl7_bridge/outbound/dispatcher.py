"""The outbox dispatcher: claims due outbox rows and sends them over MLLP (HL7 v2 Appendix C; ACK per
v2.5.1 §2.9 original acknowledgment mode: MSA-1 AA/CA accepted, AE/AR/CE/CR refused).

One asyncio task per destination in flight, at most one message in flight per destination (the
claim only returns destination heads, hl7_bridge/outbound/outbox.py). An attempt: connect
(``connect_timeout``), send one framed message, read one framed ACK (``ack_timeout``), parse it with
``hl7_bridge.decode``; MSA-2 must echo our MSH-10. AA/CA → ``sent``; anything else (AE/AR/CE/CR,
an unreadable ACK, timeout, refused or dropped connection) → ``failed`` with ``next_attempt_at`` =
now + ``base_delay`` · 2^(attempts-1) (capped at ``max_delay``, ±20 % jitter), or ``dead`` once
``max_attempts`` or ``max_age`` is reached. Outcomes are written only by the holder of the lease.

Durable: rows are in PostgreSQL; a dispatcher that dies leaves its row ``sending`` with a lease that
runs out (``connect_timeout`` + ``ack_timeout`` + 30 s), after which any dispatcher takes it again (the
receiver may then get the message twice, with the same MSH-10: MLLP delivery is at-least-once).
Wakes on ``NOTIFY hl7_outbox`` (sent by the enqueueing transaction at commit) and polls every
``poll`` seconds for retries that come due.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import socket
import ssl
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import psycopg

from hl7_bridge.decode import HL7ParseError, decode, parse
from hl7_bridge.mllp import Framer, frame
from hl7_bridge.outbound import outbox
from hl7_bridge.outbound.destinations import Destination, destination_by_id

__all__ = ["Dispatcher", "deliver", "run_dispatcher"]

log = logging.getLogger("hl7_bridge.outbound")

_ACCEPTED = {"AA", "CA"}
_CLAIM_LEASE = 120.0


class DeliveryError(Exception):
    """An attempt failed; ``ack`` is the ACK text when the receiver answered."""

    def __init__(self, reason: str, ack_code: str | None = None, ack_text: str | None = None, ack: str | None = None) -> None:
        super().__init__(reason)
        self.ack_code, self.ack_text, self.ack = ack_code, ack_text, ack


def client_ssl(tls: dict[str, Any]) -> ssl.SSLContext | None:
    if not tls.get("enabled"):
        return None
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls.get("ca"))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.get("cert"):
        ctx.load_cert_chain(tls["cert"], tls.get("key"))
    if tls.get("verify") is False:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def deliver(dest: Destination, message: str, control_id: str) -> tuple[str, str, str]:
    """Send one message and read its ACK: (MSA-1, text, the ACK). Raises ``DeliveryError``."""
    ctx = client_ssl(dest.tls)
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(dest.host, dest.port, ssl=ctx,
                                    server_hostname=(dest.tls.get("server_hostname") or dest.host) if ctx else None),
            dest.policy("connect_timeout"),
        )
    except TimeoutError as exc:
        raise DeliveryError(f"connect to {dest.host}:{dest.port} timed out") from exc
    except (OSError, ssl.SSLError) as exc:
        raise DeliveryError(f"connect to {dest.host}:{dest.port} failed: {exc.strerror or exc}") from exc
    try:
        writer.write(frame(message.encode("utf-8")))
        await writer.drain()
        framer = Framer(1024 * 1024)
        deadline = time.monotonic() + dest.policy("ack_timeout")
        raw: bytes | None = None
        while raw is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DeliveryError(f"no ACK within {dest.policy('ack_timeout'):g} s")
            try:
                data = await asyncio.wait_for(reader.read(65536), left)
            except TimeoutError as exc:
                raise DeliveryError(f"no ACK within {dest.policy('ack_timeout'):g} s") from exc
            if not data:
                raise DeliveryError("the receiver closed the connection without an ACK")
            frames = [f for f in framer.feed(data) if f.kind == "message"]
            raw = frames[0].data if frames else None
    except (OSError, ssl.SSLError) as exc:
        raise DeliveryError(f"connection failed: {exc}") from exc
    finally:
        writer.close()
        try:
            await asyncio.wait_for(writer.wait_closed(), 2)
        except (Exception, asyncio.CancelledError):  # noqa: BLE001, S110 - closing a socket we are done with
            pass
    text, codec = decode(raw)
    try:
        ack = parse(text, codec, accept_lf=True)
    except HL7ParseError as exc:
        raise DeliveryError(f"unreadable ACK: {exc.reason}", ack=text) from exc
    msa = ack.first("MSA")
    if msa is None:
        raise DeliveryError("the ACK has no MSA segment", ack=text)
    code, answered = msa.get(1), msa.get(2)
    err = ack.first("ERR")
    reason = msa.get(3) or (err.get(8) if err else "") or (err.get(3, 2) if err else "")
    if answered != control_id:
        raise DeliveryError(f"the ACK answers MSA-2 {answered!r}, not {control_id!r}", code, reason, text)
    if code not in _ACCEPTED:
        raise DeliveryError(f"{code or 'no MSA-1'}: {reason or 'refused'}", code, reason, text)
    return code, reason, text


def backoff(dest: Destination, attempts: int) -> float:
    delay = min(dest.policy("max_delay"), dest.policy("base_delay") * 2 ** max(attempts - 1, 0))
    return delay * (0.8 + 0.4 * random.random())


class Dispatcher:
    def __init__(self, db: Any, url: str, *, poll: float = 0.5, max_parallel: int = 16) -> None:
        self.db = db
        self.url = url
        self.poll = poll
        self.max_parallel = max_parallel
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.busy: dict[int, asyncio.Task[None]] = {}  # destination id → its in-flight attempt
        self.wake = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        listener = asyncio.create_task(self._listen(stop))
        try:
            while not stop.is_set():
                try:
                    await self.tick()
                except (psycopg.Error, OSError):
                    log.exception("HL7 outbox: claim failed; retrying")
                self.wake.clear()
                waits = [asyncio.create_task(self.wake.wait()), asyncio.create_task(stop.wait())]
                await asyncio.wait(waits, timeout=self.poll, return_when=asyncio.FIRST_COMPLETED)
                for w in waits:
                    w.cancel()
        finally:
            listener.cancel()
            tasks = list(self.busy.values())
            for t in tasks:
                t.cancel()  # their rows stay 'sending' until the lease runs out, then are re-sent
            await asyncio.gather(listener, *tasks, return_exceptions=True)
            await self._release()

    async def _release(self) -> None:
        """On a clean stop: this dispatcher's rows still in flight are due again at once."""
        try:
            async with self.db.connection() as conn:
                await conn.execute(
                    "UPDATE hl7_outbox SET status = 'queued', lease_owner = NULL, lease_until = NULL, "
                    "next_attempt_at = clock_timestamp() WHERE lease_owner = %s AND status = 'sending'", (self.owner,))
        except Exception:
            log.warning("HL7 outbox: could not release in-flight rows", exc_info=True)

    async def _listen(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                async with await psycopg.AsyncConnection.connect(self.url, autocommit=True,
                                                                 application_name="hl7-outbox-listen") as conn:
                    await conn.execute(f"LISTEN {outbox.CHANNEL}")
                    self.wake.set()
                    async for _ in conn.notifies():
                        self.wake.set()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("HL7 outbox: LISTEN connection lost; polling", exc_info=True)
                await asyncio.sleep(2)

    async def tick(self) -> int:
        """Claim what is due and start sending it; the number of rows claimed."""
        free = self.max_parallel - len(self.busy)
        if free <= 0:
            return 0
        async with self.db.transaction() as conn:
            rows = await outbox.claim(conn, self.owner, _CLAIM_LEASE, list(self.busy), free)
        for row in rows:
            dest_id = int(row[1])
            task = asyncio.create_task(self._attempt(row))
            self.busy[dest_id] = task
            task.add_done_callback(lambda _t, d=dest_id: self._done(d))
        return len(rows)

    def _done(self, dest_id: int) -> None:
        self.busy.pop(dest_id, None)
        self.wake.set()  # the destination's next message may go now

    async def _attempt(self, row: tuple[Any, ...]) -> None:
        outbox_id, dest_id, control_id, message, attempts, created_at = row
        try:
            async with self.db.connection() as conn:
                dest = await destination_by_id(conn, dest_id)
                if dest is None:
                    return
                await outbox.extend(conn, outbox_id, self.owner,
                                    dest.policy("connect_timeout") + dest.policy("ack_timeout") + 30)
            try:
                code, text, ack = await deliver(dest, message, control_id)
            except DeliveryError as exc:
                age = (datetime.now(UTC) - created_at).total_seconds()
                dead = attempts >= dest.policy("max_attempts") or age >= dest.policy("max_age")
                delay = None if dead else backoff(dest, attempts)
                log.warning("HL7 outbox: attempt failed", extra={
                    "outbox_id": outbox_id, "destination": dest.name, "attempt": attempts, "error": str(exc),
                    "dead": dead, "retry_in": delay})
                async with self.db.connection() as conn:
                    await outbox.finish(conn, outbox_id, self.owner, status="dead" if dead else "failed", error=str(exc),
                                        ack_code=exc.ack_code, ack_text=exc.ack_text, ack=exc.ack, retry_in=delay)
                return
            async with self.db.connection() as conn:
                await outbox.finish(conn, outbox_id, self.owner, status="sent", ack_code=code, ack_text=text or None, ack=ack)
            log.info("HL7 outbox: sent", extra={"outbox_id": outbox_id, "destination": dest.name, "ack": code})
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("HL7 outbox: attempt crashed", extra={"outbox_id": outbox_id})


async def run_dispatcher(database_url: str, *, poll: float = 0.5) -> None:
    """``fhir-server hl7 outbox run`` (and the child of ``serve --hl7-outbox``): until SIGTERM/SIGINT."""
    from fhir_server.storage.db import Database

    db = Database(database_url, min_size=1, max_size=4, application_name="hl7-outbox")
    await db.open()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print("HL7 outbox dispatcher running", flush=True)
    try:
        await Dispatcher(db, database_url, poll=poll).run(stop)
    finally:
        await db.close()
        log.info("HL7 outbox dispatcher stopped")
