"""Shared by the HL7 bridge tests: a test MLLP client, an in-process listener on a real socket
(the real Bridge on the real PostgreSQL), senders per test, and readers of what was written."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Self

import orjson
import psycopg
import pytest

from hl7_bridge.mllp import CR, EB, SB

SAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "hl7v2"


def sample(name: str) -> bytes:
    """A sample message with <CR> segment separators (some files use <LF>)."""
    raw = (SAMPLES / name).read_bytes()
    return raw.replace(b"\r\n", b"\r").replace(b"\n", b"\r").strip(b"\r") + b"\r"


def with_sender(raw: bytes, app: str, facility: str) -> bytes:
    """``raw`` with MSH-3/MSH-4 replaced (so a sample is sent by a test's own sender)."""
    first, _, rest = raw.partition(b"\r")
    fields = first.split(b"|")
    fields += [b""] * (5 - len(fields))
    fields[2], fields[3] = app.encode(), facility.encode()
    return b"|".join(fields) + b"\r" + rest


def msg(*segments: str) -> bytes:
    return ("\r".join(segments) + "\r").encode()


class MLLPClient:
    """A test client speaking MLLP over a real TCP connection."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> Self:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.writer is not None
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except ConnectionError:
            pass

    async def send_raw(self, data: bytes) -> None:
        assert self.writer is not None
        self.writer.write(data)
        await self.writer.drain()

    async def read_ack(self, timeout: float = 30) -> str:
        assert self.reader is not None
        data = await asyncio.wait_for(self.reader.readuntil(EB + CR), timeout)
        assert data.startswith(SB), data[:20]
        return data[1:-2].decode()

    async def send(self, message: bytes, timeout: float = 30) -> str:
        await self.send_raw(SB + message + EB + CR)
        return await self.read_ack(timeout)


def ack_code(ack: str) -> str:
    msa = next(s for s in ack.split("\r") if s.startswith("MSA"))
    return msa.split("|")[1]


def ack_segment(ack: str, name: str) -> list[str] | None:
    seg = next((s for s in ack.split("\r") if s.startswith(name + "|")), None)
    return seg.split("|") if seg else None


def new_sender(database_url: str, **options: Any) -> tuple[str, str, str]:
    """A sender of its own (app, facility) writing into a fresh tenant: (app, facility, tenant)."""
    app = f"LIS{uuid.uuid4().hex[:8].upper()}"
    facility = "LAB"
    tenant = f"t{uuid.uuid4().hex[:10]}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO tenant (id, name) VALUES (%s, %s)", (tenant, tenant))
        conn.execute(
            "INSERT INTO hl7_sender (sending_app, sending_facility, tenant_id, agent, role, options) "
            "VALUES (%s, %s, %s, %s, 'integration', %s::jsonb)",
            (app, facility, tenant, f"Device/{app.lower()}", orjson.dumps(options).decode()),
        )
    return app, facility, tenant


def resources(database_url: str, tenant: str, resource_type: str) -> list[dict[str, Any]]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT content::text FROM resource WHERE tenant_id = %s AND resource_type = %s AND NOT deleted ORDER BY id",
            (tenant, resource_type),
        ).fetchall()
    return [orjson.loads(r[0]) for r in rows]


def counts(database_url: str, tenant: str) -> dict[str, int]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT resource_type, count(*) FROM resource_history WHERE tenant_id = %s GROUP BY 1", (tenant,)
        ).fetchall()
    return {r[0]: int(r[1]) for r in rows}


def log_rows(database_url: str, app: str) -> list[dict[str, Any]]:
    cols = ["id", "status", "ack_code", "error", "error_location", "error_code", "attempts", "resources",
            "received_at", "processed_at", "control_id"]
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute(
            f"SELECT {', '.join(cols)} FROM hl7_message WHERE sending_app = %s ORDER BY id", (app,)
        ).fetchall()
    return [dict(zip(cols, r, strict=True)) for r in rows]


async def running_listener(database_url: str, **settings: Any) -> AsyncIterator[Any]:
    from fhir_server.settings import Settings
    from hl7_bridge.listener import open_listener

    s = Settings(database_url=database_url, **settings)
    server, db = await open_listener(s, database_url, "127.0.0.1", 0)
    try:
        yield server
    finally:
        await server.close()
        await db.close()


def listener_fixture(**settings: Any) -> Any:
    """A module-scoped ``listener`` fixture: ``running_listener`` with these ``settings``."""

    @pytest.fixture(scope="module")
    async def listener(database_url: str) -> AsyncIterator[Any]:
        async for server in running_listener(database_url, **settings):
            yield server

    return listener
