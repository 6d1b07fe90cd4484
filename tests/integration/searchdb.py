"""Seeding a fresh database for the search SQL tests through the real write statement."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

import psycopg

from fhir_server.search.extract import extract_index_rows
from fhir_server.storage.repository import StoredVersion, create_statement
from tests.conftest import make_database


def insert_indexed(
    conn: psycopg.Connection, tenant: str, resource: dict, *, deleted: bool = False,
    last_updated: str = "2024-06-01T00:00:00Z",
) -> None:
    """Store ``resource`` (with its id) as version 1, with the index rows the server would write."""
    version = StoredVersion(
        resource["resourceType"], resource["id"], 1, datetime.fromisoformat(last_updated), deleted,
        json.dumps(resource, default=float), "PUT",
    )
    rows = None if deleted else extract_index_rows(resource)
    conn.execute(*create_statement(tenant, version, rows))


@contextmanager
def seeded_database(pg_admin_url: str) -> Iterator[psycopg.Connection]:
    """A new database at the current schema, with tenants 'default' and 'other'."""
    url = make_database(pg_admin_url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO tenant (id, name) VALUES ('other', 'Other tenant') ON CONFLICT DO NOTHING")
        yield conn
