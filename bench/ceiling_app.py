"""The framework ceiling: the real server's application stack with no database and no FHIR logic.

Same FastAPI app construction, same middleware (RequestIdAndLog with the access log setting of
the real server, BearerAuth with verifier=None as in --dev), same exception handlers
(fhir_server.api.errors.install), same logging configuration and the same uvicorn flags
(uvloop, httptools, log_config=None, access_log=False, server_header=False, same workers).
One route, ``GET /fhir/Patient/{id}``, answers a fixed JSON body (the bytes in the file named by
CEILING_BODY_FILE: a Patient as the real server returns it) with the same headers as a real read:
content-type application/fhir+json; charset=utf-8, ETag, Last-Modified (and x-request-id).

    python bench/ceiling_app.py --port 8081 --workers 1
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from fastapi import APIRouter, FastAPI
from starlette.requests import Request
from starlette.responses import Response

from fhir_server.api import errors
from fhir_server.api.middleware import RequestIdAndLog
from fhir_server.auth.middleware import BearerAuth
from fhir_server.settings import Settings

_DEFAULT_BODY = (
    b'{"resourceType":"Patient","id":"00000000-0000-4000-8000-000000000000","meta":{"versionId":"1",'
    b'"lastUpdated":"2026-01-01T00:00:00.000000Z"},"active":true}'
)


def create_app() -> FastAPI:
    settings = Settings()
    body_file = os.environ.get("CEILING_BODY_FILE")
    body = Path(body_file).read_bytes() if body_file else _DEFAULT_BODY
    headers = {"ETag": 'W/"1"', "Last-Modified": "Thu, 01 Jan 2026 00:00:00 GMT"}

    router = APIRouter()

    @router.get("/Patient/{resource_id}")
    async def read(resource_id: str, request: Request) -> Response:
        return Response(body, status_code=200, headers=dict(headers), media_type="application/fhir+json; charset=utf-8")

    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None, title="fhir-server-ceiling")
    app.state.settings = settings
    app.include_router(router, prefix="/fhir")
    errors.install(app)
    app.add_middleware(BearerAuth, verifier=None)
    app.add_middleware(RequestIdAndLog, access_log=settings.access_log)
    return app


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    from fhir_server import logs

    p = argparse.ArgumentParser(description="framework-ceiling server")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8081)
    p.add_argument("--workers", type=int, default=1)
    a = p.parse_args(argv)
    logs.configure(os.environ.get("FHIR_LOG_LEVEL", "INFO"))  # as `fhir-server serve` does
    # worker processes (workers > 1) import this module by name
    here = str(Path(__file__).resolve().parent)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))
    signal.signal(signal.SIGTERM, _exit_cleanly)
    signal.signal(signal.SIGINT, _exit_cleanly)
    from fhir_server.cli import UVICORN_OPTIONS

    uvicorn.run("ceiling_app:create_app", host=a.host, port=a.port, workers=a.workers, **UVICORN_OPTIONS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
