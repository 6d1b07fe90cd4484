"""Audit rows of events outside the REST interactions: tokens issued by commands, logins.

REST requests and the OAuth endpoints are recorded by ``audit.middleware``; this is for code that
runs without a request (``fhir-server token``), writing its row directly (synchronous psycopg).
"""

from __future__ import annotations

import getpass
from typing import Any

from fhir_server.audit import switch
from fhir_server.audit.actor import Actor
from fhir_server.audit.rows import INSERT_SQL, TYPE_USER_AUTHENTICATION, event_row
from fhir_server.timeutil import now


def record_token_issue(
    conn: Any, *, tenant: str, subject: str, role: str | None, fhir_user: str | None = None, status: int = 200,
) -> None:
    """``fhir-server token``: a token for ``subject`` issued by the operating-system user running
    the command (AuditEvent type 110114 User Authentication, subtype ``token``)."""
    if not switch.enabled():
        return
    try:
        operator = getpass.getuser()
    except (KeyError, OSError):
        operator = "unknown"
    actor = Actor(subject, None, "CLI", f"fhir-server token (run by {operator})", fhir_user=fhir_user, role=role)
    row = event_row(tenant, now(), actor, action="E", interaction="token", status=status, type=TYPE_USER_AUTHENTICATION)
    conn.execute(INSERT_SQL, row)
