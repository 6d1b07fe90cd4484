"""Senders (MSH-3 sending application + MSH-4 sending facility) → tenant, integration identity, options.

Configured in the ``hl7_sender`` table (``fhir-server hl7 sender add|list|remove``). A sender that
is not configured follows ``FHIR_HL7_UNKNOWN_SENDER``: ``refuse`` (AR, the default) or ``accept``
(into ``FHIR_DEFAULT_TENANT`` as ``hl7:<app>@<facility>`` with the default options).

Options (JSON): ``unknown_patient`` ``create`` (default) | ``refuse`` (AE); ``identifier_systems``
{assigning authority namespace or universal id → Identifier.system}; ``overrides`` {table name →
rows replacing that table's rows for the same field}; ``timezone`` for v2 times without an offset;
``update_patient`` (ORU: also update the Patient's demographics from PID; default false).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import orjson

__all__ = ["Sender", "SenderRegistry", "add_sender", "list_senders", "remove_sender"]

_OPTION_KEYS = {"unknown_patient", "identifier_systems", "overrides", "timezone", "update_patient"}


@dataclass(frozen=True, slots=True)
class Sender:
    app: str
    facility: str
    tenant: str
    agent: str
    role: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    configured: bool = True

    @property
    def unknown_patient(self) -> str:
        return str(self.options.get("unknown_patient", "create"))

    @property
    def system_base(self) -> str:
        """Identifier.system for identifiers sent without an assigning authority: scoped to the sender."""
        from urllib.parse import quote

        return f"urn:hl7-v2:sender:{quote(self.app, safe='')}@{quote(self.facility, safe='')}"


def validate_options(options: dict[str, Any]) -> dict[str, Any]:
    unknown = set(options) - _OPTION_KEYS
    if unknown:
        raise ValueError(f"unknown sender options: {', '.join(sorted(unknown))} (known: {', '.join(sorted(_OPTION_KEYS))})")
    if options.get("unknown_patient", "create") not in ("create", "refuse"):
        raise ValueError("unknown_patient must be 'create' or 'refuse'")
    if "timezone" in options:
        from zoneinfo import ZoneInfo

        ZoneInfo(str(options["timezone"]))  # raises for an unknown zone
    return options


class SenderRegistry:
    """Looks senders up in ``hl7_sender``, cached for ``ttl`` seconds (so CLI changes apply soon)."""

    def __init__(self, db: Any, *, unknown_policy: str, default_tenant: str, ttl: float = 5.0) -> None:
        self.db = db
        self.unknown_policy = unknown_policy
        self.default_tenant = default_tenant
        self.ttl = ttl
        self._cache: dict[tuple[str, str], tuple[float, Sender | None]] = {}

    def invalidate(self) -> None:
        """Forget the cached configurations (a replay resolves the sender as it is configured now)."""
        self._cache.clear()

    async def resolve(self, app: str, facility: str) -> Sender | None:
        """The sender, or None when it is unconfigured (or disabled) and the policy refuses it."""
        key = (app, facility)
        hit = self._cache.get(key)
        now = time.monotonic()
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        async with self.db.connection() as conn:
            cur = await conn.execute(
                "SELECT tenant_id, agent, role, options, enabled FROM hl7_sender "
                "WHERE sending_app = %s AND sending_facility = %s",
                (app, facility),
            )
            row = await cur.fetchone()
        sender: Sender | None
        if row is not None:
            sender = Sender(app, facility, row[0], row[1], row[2], dict(row[3] or {})) if row[4] else None
        elif self.unknown_policy == "accept":
            sender = Sender(app, facility, self.default_tenant, f"hl7:{app}@{facility}", "integration", {}, configured=False)
        else:
            sender = None
        self._cache[key] = (now, sender)
        return sender


async def add_sender(conn: Any, app: str, facility: str, tenant: str, agent: str | None, role: str | None,
                     options: dict[str, Any]) -> None:
    validate_options(options)
    await conn.execute(
        "INSERT INTO tenant (id, name) VALUES (%s, %s) ON CONFLICT (id) DO NOTHING", (tenant, tenant)
    )
    await conn.execute(
        "INSERT INTO hl7_sender (sending_app, sending_facility, tenant_id, agent, role, options) "
        "VALUES (%s, %s, %s, %s, %s, %s::jsonb) ON CONFLICT (sending_app, sending_facility) DO UPDATE SET "
        "tenant_id = EXCLUDED.tenant_id, agent = EXCLUDED.agent, role = EXCLUDED.role, options = EXCLUDED.options, "
        "enabled = true",
        (app, facility, tenant, agent or f"hl7:{app}@{facility}", role, orjson.dumps(options).decode()),
    )


async def remove_sender(conn: Any, app: str, facility: str) -> bool:
    cur = await conn.execute(
        "DELETE FROM hl7_sender WHERE sending_app = %s AND sending_facility = %s", (app, facility)
    )
    return bool(cur.rowcount)


async def list_senders(conn: Any) -> list[dict[str, Any]]:
    cur = await conn.execute(
        "SELECT sending_app, sending_facility, tenant_id, agent, role, options, enabled FROM hl7_sender "
        "ORDER BY sending_app, sending_facility"
    )
    cols = ["sending_app", "sending_facility", "tenant", "agent", "role", "options", "enabled"]
    return [dict(zip(cols, row, strict=True)) for row in await cur.fetchall()]
