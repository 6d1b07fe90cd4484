"""Shared by the Synthea tests: a separate server on a fresh database loaded with ``fhir-server import``."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx

from tests.conftest import ServerProcess, issue_token, make_database, server_env
from tests.integration.test_cli import run_cli


def imported_server(pg_admin_url: str, files: Sequence[Path]) -> Iterator[httpx.Client]:
    """Import ``files`` into a fresh database, start a server on it and yield an admin client."""
    url = make_database(pg_admin_url)
    result = run_cli(url, "import", *map(str, files))
    assert result.returncode == 0, result.stdout + result.stderr
    srv = ServerProcess(server_env(DATABASE_URL=url))
    srv.start()
    try:
        token = issue_token(url, tenant="default", role="admin")
        with httpx.Client(
            base_url=srv.base, headers={"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"}, timeout=60
        ) as c:
            yield c
    finally:
        srv.stop()
