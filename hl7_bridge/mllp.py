"""MLLP (Minimal Lower Layer Protocol, HL7 v2 Appendix C): <VT> message <FS><CR>, bytes only.

``Framer`` turns received bytes into events (pure, tested by feeding bytes); ``MLLPServer`` runs
one task per connection on asyncio streams (optionally TLS), answers each message in order, and
survives anything a peer sends: a frame cut by a new start block or larger than
``max_message_bytes`` is answered AR (it can be delimited); bytes that never form a frame, idle
connections and too many connections are closed. One connection's trouble never touches another's.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

__all__ = ["CR", "EB", "SB", "Frame", "Framer", "MLLPServer", "MessageSink", "frame", "ssl_context"]

log = logging.getLogger("hl7_bridge.mllp")

SB, EB, CR = b"\x0b", b"\x1c", b"\x0d"
_HEAD = 4096  # bytes of an oversized message kept (enough for its MSH, to address the AR)


def frame(message: bytes) -> bytes:
    return SB + message + EB + CR


@dataclass(frozen=True, slots=True)
class Frame:
    kind: str  # "message" | "truncated" | "oversized"
    data: bytes


class Framer:
    """Incremental MLLP framing. ``feed`` returns the complete frames; ``junk`` counts bytes seen
    outside any frame (a peer not speaking MLLP), so the server can give up on it."""

    def __init__(self, max_message_bytes: int) -> None:
        self.max = max_message_bytes
        self.buf = bytearray()
        self.in_frame = False
        self.oversized = False
        self.head = b""
        self.junk = 0
        self.pending_eb = False  # an <FS> was the last byte seen; its <CR> may come in the next read

    def feed(self, data: bytes) -> list[Frame]:
        out: list[Frame] = []
        i, n = 0, len(data)
        if self.pending_eb and n:
            self.pending_eb = False
            if data[0:1] == CR:
                i = 1
        while i < n:
            if not self.in_frame:
                start = data.find(SB, i)
                if start < 0:
                    self.junk += len(data[i:].strip(b"\r\n\t "))
                    break
                self.junk += len(data[i:start].strip(b"\r\n\t "))
                self.in_frame, self.oversized, self.head = True, False, b""
                self.buf.clear()
                i = start + 1
                continue
            eb = data.find(EB, i)
            sb = data.find(SB, i)
            if sb >= 0 and (eb < 0 or sb < eb):  # a new start block inside a frame: the frame was cut
                self._take(data[i:sb])
                out.append(Frame("truncated", self.head if self.oversized else bytes(self.buf)))
                self.buf.clear()
                self.oversized, self.head = False, b""
                i = sb + 1
                continue
            if eb < 0:
                self._take(data[i:])
                break
            self._take(data[i:eb])
            out.append(Frame("oversized", self.head) if self.oversized else Frame("message", bytes(self.buf)))
            self.buf.clear()
            self.in_frame, self.oversized, self.head = False, False, b""
            i = eb + 1
            if i < n and data[i:i + 1] == CR:
                i += 1
            elif i >= n:
                self.pending_eb = True
        return out

    def _take(self, chunk: bytes) -> None:
        if self.oversized:
            return
        self.buf += chunk
        if len(self.buf) > self.max:
            self.oversized = True
            self.head = bytes(self.buf[:_HEAD])
            self.buf.clear()

    @property
    def partial(self) -> bool:
        return self.in_frame


class MessageSink(Protocol):
    async def handle(self, raw: bytes, peer: str | None) -> bytes: ...

    async def reject(self, raw: bytes, reason: str, code: str, peer: str | None) -> bytes: ...


def ssl_context(cert: Path | None, key: Path | None, client_ca: Path | None) -> ssl.SSLContext | None:
    """TLS for MLLP when a certificate is configured; with ``client_ca`` clients must present a
    certificate signed by it (mutual TLS, the usual way to authenticate an MLLP peer)."""
    if cert is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert), str(key) if key else None)
    if client_ca is not None:
        ctx.load_verify_locations(str(client_ca))
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class MLLPServer:
    def __init__(
        self, sink: MessageSink, *, host: str = "127.0.0.1", port: int = 2575, ssl: ssl.SSLContext | None = None,
        max_message_bytes: int = 1024 * 1024, idle_timeout: float = 300.0, max_connections: int = 200,
        reuse_port: bool = False,
    ) -> None:
        self.sink = sink
        self.host, self.port = host, port
        self.ssl = ssl
        self.max_message_bytes = max_message_bytes
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.reuse_port = reuse_port
        self.server: asyncio.Server | None = None
        self.connections: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(
            self._client, self.host, self.port, ssl=self.ssl, reuse_port=self.reuse_port or None,
            limit=2**16,
        )
        sock = self.server.sockets[0].getsockname()
        self.port = sock[1]
        log.info("MLLP listening", extra={"host": self.host, "port": self.port, "tls": self.ssl is not None})

    async def serve_forever(self) -> None:
        if self.server is None:
            await self.start()
        assert self.server is not None
        async with self.server:
            await self.server.serve_forever()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        for task in list(self.connections):
            task.cancel()
        if self.connections:
            await asyncio.gather(*self.connections, return_exceptions=True)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        peername = writer.get_extra_info("peername")
        peer = f"{peername[0]}:{peername[1]}" if isinstance(peername, tuple) else None
        if len(self.connections) >= self.max_connections:
            log.warning("MLLP connection refused: too many connections", extra={"peer": peer})
            writer.close()
            return
        self.connections.add(task)
        framer = Framer(self.max_message_bytes)
        try:
            while True:
                try:
                    data = await asyncio.wait_for(reader.read(65536), self.idle_timeout)
                except TimeoutError:
                    log.info("MLLP connection idle; closed", extra={"peer": peer})
                    break
                if not data:
                    if framer.partial:
                        log.info("MLLP connection closed inside a frame; the partial message is dropped", extra={"peer": peer})
                    break
                for fr in framer.feed(data):
                    answer = await self._answer(fr, peer)
                    writer.write(frame(answer))
                    await writer.drain()
                if framer.junk > self.max_message_bytes:
                    log.info("MLLP peer sends bytes outside frames; closed", extra={"peer": peer})
                    break
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError) as exc:
            log.info("MLLP connection dropped", extra={"peer": peer, "reason": type(exc).__name__})
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("MLLP connection failed", extra={"peer": peer})
        finally:
            self.connections.discard(task)
            writer.close()
            try:
                await asyncio.wait_for(writer.wait_closed(), 5)
            except (Exception, asyncio.CancelledError):  # noqa: BLE001, S110  (closing a dead peer: nothing to report)
                pass

    async def _answer(self, fr: Frame, peer: str | None) -> bytes:
        if fr.kind == "message":
            return await self.sink.handle(fr.data, peer)
        if fr.kind == "truncated":
            return await self.sink.reject(fr.data, "frame truncated: a start block (0x0B) came before the end block (0x1C)", "100", peer)
        return await self.sink.reject(fr.data, f"message larger than {self.max_message_bytes} bytes", "104", peer)


Handler = Callable[[bytes, str | None], Awaitable[bytes]]
