"""The embedded default: `fhir-server serve --data-dir D` runs a real PostgreSQL in D,
keeps the data across a restart, and stops it cleanly on SIGTERM and SIGINT."""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

from tests.conftest import ServerProcess, server_env
from tests.integration.test_crud import new_patient


def _postgres_running(data_dir: Path) -> bool:
    pid_file = data_dir / "pgdata" / "postmaster.pid"
    return pid_file.exists()


def test_persistence_across_restart_and_clean_stop() -> None:
    """http.html#read after a restart: what was acknowledged (201) is still there; PostgreSQL stops with the server."""
    data_dir = Path(tempfile.mkdtemp(prefix="fhir-embedded-"))
    data_dir.chmod(0o755)
    srv = ServerProcess(server_env(), ["--dev", "--data-dir", str(data_dir)])
    srv.start(timeout=120)
    try:
        created = httpx.post(f"{srv.base}/Patient", json=new_patient()).json()
        assert _postgres_running(data_dir)
    finally:
        assert srv.stop(signal.SIGTERM) == 0
    assert not _postgres_running(data_dir), "PostgreSQL must stop with the server"
    srv.start(timeout=120)
    try:
        r = httpx.get(f"{srv.base}/Patient/{created['id']}")
        assert r.status_code == 200 and r.json() == created
    finally:
        srv.stop(signal.SIGINT)
    assert not _postgres_running(data_dir)
    # every command finds the same database through --data-dir
    out = subprocess.run(
        [sys.executable, "-m", "fhir_server.cli", "db", "current", "--data-dir", str(data_dir)],
        env=server_env(), capture_output=True, text=True, check=True,
    )
    assert "schema revision" in out.stdout
