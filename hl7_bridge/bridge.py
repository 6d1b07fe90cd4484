"""One inbound message, start to finish: decode → parse → sender → store (own commit) → route →
handler → ONE transaction (Bundle service + log row update) → ACK.

Reliability rules (hl7_bridge/README.md "Reliability"):
* the raw bytes are committed to ``hl7_message`` before anything else happens;
* the resources and the log row's ``processed`` status commit together; AA is built only after
  that commit returned, so an AA always means "it is in the database";
* any failure rolls the resources back, records status ``error`` with the ERR details and answers
  AE (a processing/data problem) or AR (malformed, unknown sender, unsupported type);
* a repeat of (MSH-3, MSH-4, MSH-10) gets the stored ACK and writes nothing; a concurrent repeat
  waits on the row lock and then does the same.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from psycopg import errors as pg_errors

from fhir_server.audit.actor import Actor
from fhir_server.errors import FhirError, VersionConflict
from fhir_server.search.custom import pinned_registry, tenant_registry
from fhir_server.services.bundles import BundleService
from fhir_server.services.resources import BoundDatabase, ResourceService
from fhir_server.settings import Settings
from hl7_bridge import inbox
from hl7_bridge.ack import Ack, ErrorDetail, build_ack
from hl7_bridge.decode import HL7ParseError, Message, decode, parse
from hl7_bridge.handlers.common import HandlerContext, Work
from hl7_bridge.mapper import Context, Mapper
from hl7_bridge.router import HANDLERS, find_route
from hl7_bridge.senders import Sender, SenderRegistry
from mappings.functions import MappingError

__all__ = ["Bridge", "Outcome"]

log = logging.getLogger("hl7_bridge")

_MAX_TRIES = 4  # a transaction that lost a lock race (deadlock, serialization) is run again
_LOCATION = re.compile(r"([A-Z][A-Z0-9]{2})(?:-(\d+))?")


@dataclass(frozen=True, slots=True)
class Outcome:
    ack: Ack
    codec: str
    message_id: int | None
    duplicate: bool = False

    def encode(self) -> bytes:
        return self.ack.encode(self.codec)


def _salvage(text: str) -> dict[str, str]:
    """MSH fields read naively from a message that failed to parse, for the AR's addressing."""
    if not text.startswith("MSH") or len(text) < 4:
        return {}
    fs = text[3]
    line = re.split(r"[\r\n]", text, maxsplit=1)[0]
    parts = line.split(fs)
    out = {}
    for n in (3, 4, 5, 6, 10, 11, 12):
        if len(parts) > n - 1:
            out[str(n)] = parts[n - 1].split("^")[0][:199]
    if len(parts) > 8:
        out["9.2"] = (parts[8].split("^") + [""])[1][:20]
    return out


class Bridge:
    def __init__(self, db: Any, settings: Settings) -> None:
        self.db = db
        self.settings = settings
        self.senders = SenderRegistry(db, unknown_policy=settings.hl7_unknown_sender, default_tenant=settings.default_tenant)

    # -- the MLLP server's sink --
    async def handle(self, raw: bytes, peer: str | None) -> bytes:
        """The framed answer to a delimited message. A failure of the bridge itself (the database is
        down…) answers AE without storing anything: the sender keeps the message and sends it again."""
        try:
            return (await self.receive(raw, peer)).encode()
        except Exception:
            log.exception("hl7 message could not be stored")
            text, _ = decode(raw, self.settings.hl7_default_charset)
            err = ErrorDetail("temporarily unable to accept the message; send it again", "207")
            return build_ack("AE", None, error=err, fallback=_salvage(text)).encode()

    async def reject(self, raw: bytes, reason: str, code: str, peer: str | None) -> bytes:
        """A frame that can be delimited but not accepted (truncated, oversized): AR, kept for review."""
        text, _ = decode(raw, self.settings.hl7_default_charset)
        fallback = _salvage(text)
        err = ErrorDetail(reason, code)
        ack = build_ack("AR", None, error=err, fallback=fallback)
        try:
            await self._store_refused(raw, fallback, ack, err, peer)
        except Exception:
            log.exception("rejected frame could not be logged")
        return ack.encode()

    async def receive(self, raw: bytes, peer: str | None = None) -> Outcome:
        """The ACK for one delimited message (never raises for anything in ``raw``)."""
        text, codec = decode(raw, self.settings.hl7_default_charset)
        try:
            msg = parse(text, codec, accept_lf=self.settings.hl7_accept_lf)
        except HL7ParseError as exc:
            return await self._unparsable(raw, text, codec, exc, peer)
        sender = await self.senders.resolve(msg.sending_app, msg.sending_facility)
        stored = await inbox.store(
            self.db, raw, tenant=sender.tenant if sender else None, app=msg.sending_app,
            facility=msg.sending_facility, control_id=msg.control_id, message_type=msg.message_type,
            version=msg.version, peer=peer,
        )
        if stored.duplicate and stored.status != "received" and stored.ack:
            log.info("duplicate message: original ACK returned", extra={"hl7_message": stored.id})
            return Outcome(Ack(_ack_code(stored.ack), stored.ack), codec, stored.id, duplicate=True)
        ack = await self.process(stored.id, msg, sender, peer=peer)
        return Outcome(ack, codec, stored.id, duplicate=stored.duplicate)

    async def _unparsable(self, raw: bytes, text: str, codec: str, exc: HL7ParseError, peer: str | None) -> Outcome:
        fallback = _salvage(text)
        err = ErrorDetail(exc.reason, exc.code, exc.segment, exc.position, exc.field)
        ack = build_ack("AR", None, error=err, fallback=fallback)
        message_id = await self._store_refused(raw, fallback, ack, err, peer)
        log.info("malformed message refused", extra={"hl7_message": message_id, "reason": exc.reason})
        return Outcome(ack, codec if codec != "utf-16" else "utf-8", message_id)

    async def _store_refused(self, raw: bytes, fallback: dict[str, str], ack: Ack, err: ErrorDetail,
                             peer: str | None) -> int:
        """Log a frame refused before routing (AR, no tenant; MSH fields salvaged from the text): its row id."""
        stored = await inbox.store(
            self.db, raw, tenant=None, app=fallback.get("3"), facility=fallback.get("4"), control_id=None,
            message_type=None, version=fallback.get("12"), peer=peer,
        )
        await inbox.mark_error(self.db, stored.id, "AR", ack.text, err.reason, err.location, err.code)
        return stored.id

    async def process(self, message_id: int, msg: Message, sender: Sender | None, *, peer: str | None = None,
                      replay: bool = False) -> Ack:
        """Route and run the message in one transaction; the ACK (AA only after commit)."""
        if sender is None:
            return await self._fail(message_id, msg, "AR", ErrorDetail(
                f"sender {msg.sending_app}@{msg.sending_facility} is not configured", "204", "MSH", 1, 3))
        route, unsupported = find_route(msg.message_code, msg.trigger)
        if route is None:
            what = "message type" if unsupported == "200" else "event"
            return await self._fail(message_id, msg, "AR", ErrorDetail(
                f"unsupported {what} {msg.message_type}", unsupported or "200", "MSH", 1, 9))
        handler = HANDLERS[route["handler"]]
        mapper = Mapper(Context(
            timezone=str(sender.options.get("timezone") or self.settings.hl7_default_timezone),
            identifier_systems=dict(sender.options.get("identifier_systems") or {}),
            sender_system=sender.system_base,
            overrides=dict(sender.options.get("overrides") or {}),
        ))
        actor = Actor(sender.agent, f"hl7-{message_id}", "SYSTEM", f"hl7/{msg.message_type}",
                      client_id=f"hl7:{sender.app}@{sender.facility}", role=sender.role, network=peer)
        work: Work | None = None
        for attempt in range(_MAX_TRIES):
            try:
                async with self.db.transaction() as conn:
                    status, stored_ack, _ = await inbox.lock_for_processing(conn, message_id)
                    if status != "received" and not replay and stored_ack:
                        return Ack(_ack_code(stored_ack), stored_ack)  # a concurrent duplicate finished first
                    # the tenant's SearchParameter registry: checked once for the message (the handler's
                    # matches and every Bundle entry), not once per lookup
                    with pinned_registry(sender.tenant, await tenant_registry(conn, sender.tenant)):
                        service = ResourceService(_Transaction(conn), sender.tenant, actor)
                        ctx = HandlerContext(msg, sender, mapper, conn, service, route, message_id)
                        work = await handler(ctx)
                        written = await self._run_bundle(service, work)
                    note = "; ".join(work.notes) or None
                    ack = build_ack("AA", msg, text=note or "")
                    await inbox.mark_processed(conn, message_id, "AA", ack.text, written, note)
                # committed: only now is AA answered
                log.info("hl7 message processed", extra={"hl7_message": message_id, "resources": len(written)})
                return ack
            except (pg_errors.DeadlockDetected, pg_errors.SerializationFailure, VersionConflict) as exc:
                if attempt + 1 < _MAX_TRIES:
                    log.info("hl7 message lost a lock race; retrying", extra={"hl7_message": message_id})
                    continue
                return await self._fail(message_id, msg, "AE", ErrorDetail(str(exc) or "conflict", "206", "MSH", 1, None))
            except MappingError as exc:
                return await self._fail(message_id, msg, "AE", self._detail(msg, exc.reason, exc.code, exc.location, exc.position))
            except FhirError as exc:
                return await self._fail(message_id, msg, "AE", self._fhir_detail(msg, exc, work))
            except Exception:
                log.exception("hl7 message failed", extra={"hl7_message": message_id})
                return await self._fail(message_id, msg, "AE", ErrorDetail("internal error; the message is kept for replay", "207"))
        raise AssertionError("unreachable")

    @staticmethod
    async def _run_bundle(service: ResourceService, work: Work) -> list[str]:
        """The handler's entries as one transaction Bundle on the message's transaction: Type/id/_history/n written."""
        if not work.entries:
            return []
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": work.entries}
        _, results, _ = await BundleService(service).run(bundle)
        return [f"{r.version.resource_type}/{r.version.id}/_history/{r.version.version_id}"
                for r in results if r.version is not None]

    @staticmethod
    def _detail(msg: Message, reason: str, code: str, location: str, position: int | None) -> ErrorDetail:
        m = _LOCATION.fullmatch(location or "")
        if m is None:
            return ErrorDetail(reason, code)
        seg = m[1]
        if position is None:
            first = msg.first(seg)
            position = first.index if first is not None else 1
        return ErrorDetail(reason, code, seg, position, int(m[2]) if m[2] else None)

    @staticmethod
    def _fhir_detail(msg: Message, exc: FhirError, work: Work | None) -> ErrorDetail:
        index = getattr(exc, "bundle_entry", None)
        reason = exc.issues[0].diagnostics if getattr(exc, "issues", None) else str(exc)
        reason = re.sub(r"^Bundle\.entry\[\d+\] \([^)]*\): ", "", reason)
        code = "102" if exc.status in (400, 422) else "207"
        if work is not None and index is not None and index < len(work.origins):
            seg, pos = work.origins[index]
            return ErrorDetail(reason, code, seg, pos, None)
        return ErrorDetail(reason, code)

    async def _fail(self, message_id: int, msg: Message, code: str, err: ErrorDetail) -> Ack:
        ack = build_ack(code, msg, error=err)
        await inbox.mark_error(self.db, message_id, code, ack.text, err.reason, err.location, err.code)
        log.info("hl7 message answered %s", code, extra={"hl7_message": message_id, "reason": err.reason})
        return ack

    async def replay(self, message_id: int) -> tuple[str, str]:
        """Process a stored message again (``fhir-server hl7 replay``): (ACK code, its text)."""
        async with self.db.connection() as conn:
            cur = await conn.execute("SELECT raw, peer FROM hl7_message WHERE id = %s", (message_id,))
            row = await cur.fetchone()
        if row is None:
            raise KeyError(message_id)
        raw, peer = bytes(row[0]), row[1]
        text, codec = decode(raw, self.settings.hl7_default_charset)
        try:
            msg = parse(text, codec, accept_lf=self.settings.hl7_accept_lf)
        except HL7ParseError as exc:
            ack = build_ack("AR", None, error=ErrorDetail(exc.reason, exc.code, exc.segment, exc.position, exc.field),
                            fallback=_salvage(text))
            await inbox.mark_error(self.db, message_id, "AR", ack.text, exc.reason, "", exc.code)
            return "AR", ack.text
        self.senders.invalidate()
        sender = await self.senders.resolve(msg.sending_app, msg.sending_facility)
        if sender is not None:
            async with self.db.connection() as conn:
                await conn.execute("UPDATE hl7_message SET tenant_id = %s WHERE id = %s", (sender.tenant, message_id))
        ack = await self.process(message_id, msg, sender, peer=peer, replay=True)
        return ack.code, ack.text


class _Transaction(BoundDatabase):
    """The message's open transaction, for the Bundle service: its ``transaction()`` is that same
    transaction, not a savepoint inside it (two round trips per message saved). Nothing is lost: any
    failure of the Bundle rolls the whole message transaction back (bridge.py never continues after one)."""

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Any]:
        yield self.conn


def _ack_code(ack: str) -> str:
    for seg in ack.split("\r"):
        if seg.startswith("MSA"):
            return seg[4:6]
    return "AA"

