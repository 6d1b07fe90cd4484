"""Unexpected errors become a 500 OperationOutcome with the request id and no stack trace
(operationoutcome.html); the error is logged with that id."""

from __future__ import annotations

import logging

import pytest
from fastapi import FastAPI
from starlette.testclient import TestClient

from fhir_server.api import errors
from fhir_server.api.middleware import RequestIdAndLog


def _app() -> FastAPI:
    app = FastAPI()

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret detail: patient MRN-123")

    errors.install(app)
    app.add_middleware(RequestIdAndLog, access_log=False)
    return app


def test_unhandled_error_is_500_outcome_with_request_id(caplog: pytest.LogCaptureFixture) -> None:
    with TestClient(_app(), raise_server_exceptions=False) as client, caplog.at_level(logging.ERROR):
        r = client.get("/boom", headers={"X-Request-Id": "req-42"})
    assert r.status_code == 500
    body = r.json()
    assert body["resourceType"] == "OperationOutcome" and body["id"] == "req-42"
    assert body["issue"][0]["code"] == "exception" and "req-42" in body["issue"][0]["diagnostics"]
    assert "secret detail" not in r.text and "Traceback" not in r.text
    assert any(getattr(rec, "request_id", None) == "req-42" for rec in caplog.records)
