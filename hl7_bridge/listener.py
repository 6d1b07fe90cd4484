"""Run the MLLP listener with the bridge behind it (``fhir-server hl7 listen``, and the child
process ``fhir-server serve --mllp-port`` starts)."""

from __future__ import annotations

import asyncio
import logging
import signal

from fhir_server.settings import Settings
from fhir_server.storage.db import Database
from hl7_bridge.bridge import Bridge
from hl7_bridge.mllp import MLLPServer, ssl_context

__all__ = ["open_listener", "run_listener"]

log = logging.getLogger("hl7_bridge")


async def open_listener(settings: Settings, database_url: str, host: str, port: int) -> tuple[MLLPServer, Database]:
    db = Database(database_url, min_size=2, max_size=settings.hl7_pool_max_size, application_name="mllp")
    await db.open()
    _warm_up()
    server = MLLPServer(
        Bridge(db, settings), host=host, port=port,
        ssl=ssl_context(settings.hl7_tls_cert, settings.hl7_tls_key, settings.hl7_tls_client_ca),
        max_message_bytes=settings.hl7_max_message_bytes, idle_timeout=settings.hl7_idle_timeout,
        max_connections=settings.hl7_max_connections,
    )
    await server.start()
    return server, db


def _warm_up() -> None:
    """Load the R4 definitions and the mapping tables before the first message, not during it."""
    import gc

    from fhir_server.search.registry import get_registry
    from fhir_server.validation import validate_resource
    from hl7_bridge.router import routes

    get_registry()
    validate_resource({"resourceType": "Basic", "code": {"text": "warm-up"}})
    routes()
    gc.collect()
    gc.freeze()


async def run_listener(settings: Settings, database_url: str, host: str, port: int) -> None:
    server, db = await open_listener(settings, database_url, host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"MLLP listening on {host}:{server.port}", flush=True)
    try:
        await stop.wait()
    finally:
        await server.close()
        await db.close()
        log.info("MLLP listener stopped")
