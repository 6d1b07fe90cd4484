"""Outbound destinations (``hl7_destination``, migration 0016): where a tenant's orders go over MLLP.

A destination takes the ServiceRequests whose category is one of its ``categories`` (``lab``,
``imaging``, or ``*`` for any) and, when set, whose code is one of ``codes`` (``system|code`` or a
bare code), whose performer is one of ``performers`` and whose location is one of ``locations``
(references such as ``Organization/lab-1``). Categories are read from ServiceRequest.category:
SNOMED CT 108252007 (laboratory procedure) → lab, 363679005 (imaging) → imaging, HL7 table 0074
diagnostic service sections (LAB, CH, HM … / RAD, CT, MR, US …) through
``mappings/vocab/DiagnosticServiceSection_ServiceRequestCategory.csv``, and local additions in
``mappings/outbound/Category.csv``.

Looked up per tenant and cached for ``TTL`` seconds in each process (so a write in a tenant
without destinations costs a dictionary lookup), managed with ``fhir-server hl7 destination``.
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass, field
from functools import cache
from importlib.resources import files
from typing import Any

import orjson

__all__ = ["DEFAULT_RETRY", "Destination", "add_destination", "categories_of", "destinations_for",
           "list_destinations", "remove_destination"]

TTL = 5.0
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
DEFAULT_RETRY: dict[str, float] = {
    "max_attempts": 10,  # then dead
    "max_age": 86400.0,  # seconds since the row was queued; then dead
    "base_delay": 2.0,  # seconds before the 2nd attempt; doubles each time (with ±20 % jitter)
    "max_delay": 300.0,
    "connect_timeout": 5.0,
    "ack_timeout": 30.0,
}
_TLS_KEYS = {"enabled", "ca", "cert", "key", "verify", "server_hostname"}

_COLUMNS = ("id, tenant_id, name, host, port, message_type, version, sending_app, sending_facility, receiving_app, "
            "receiving_facility, categories, codes, performers, locations, tls, retry, forward_hl7, enabled")


@dataclass(frozen=True, slots=True)
class Destination:
    id: int
    tenant: str
    name: str
    host: str
    port: int
    message_type: str = "ORM^O01"
    version: str = "2.5.1"
    sending_app: str = "FHIR-SERVER"
    sending_facility: str = ""
    receiving_app: str = ""
    receiving_facility: str = ""
    categories: tuple[str, ...] = ("lab",)
    codes: tuple[str, ...] = ()
    performers: tuple[str, ...] = ()
    locations: tuple[str, ...] = ()
    tls: dict[str, Any] = field(default_factory=dict)
    retry: dict[str, Any] = field(default_factory=dict)
    forward_hl7: bool = False
    enabled: bool = True

    def policy(self, key: str) -> float:
        return float(self.retry.get(key, DEFAULT_RETRY[key]))

    @property
    def peer_client_id(self) -> str:
        """The client id the inbound bridge gives this destination's own messages (no echo back)."""
        return f"hl7:{self.receiving_app}@{self.receiving_facility}"

    def takes(self, sr: dict[str, Any], actor_client_id: str | None) -> bool:
        """Does this destination take the ServiceRequest ``sr`` written by ``actor_client_id``?"""
        from_hl7 = bool(actor_client_id and actor_client_id.startswith("hl7:"))
        if from_hl7 and (not self.forward_hl7 or actor_client_id == self.peer_client_id):
            return False
        if "*" not in self.categories and not (categories_of(sr) & set(self.categories)):
            return False
        if self.codes:
            codings = (sr.get("code") or {}).get("coding") or []
            have = {f"{c.get('system', '')}|{c.get('code', '')}" for c in codings} | {str(c.get("code")) for c in codings}
            if not have & set(self.codes):
                return False
        if self.performers and not {p.get("reference") for p in sr.get("performer") or []} & set(self.performers):
            return False
        return not (self.locations and not {p.get("reference") for p in sr.get("locationReference") or []} & set(self.locations))


@cache
def _category_table() -> dict[tuple[str, str], str]:
    """(system, code) → lab | imaging."""
    out: dict[tuple[str, str], str] = {}
    text = files("mappings").joinpath("outbound", "Category.csv").read_text(encoding="utf-8")
    for row in csv.DictReader(text.splitlines()):
        out[(row["fhir_system"], row["fhir_code"])] = row["category"]
    snomed = {k[1]: v for k, v in out.items() if k[0] == "http://snomed.info/sct"}
    from hl7_bridge.mapper import vocab

    for code, (fhir_code, _, _) in vocab("DiagnosticServiceSection_ServiceRequestCategory").items():
        if fhir_code in snomed:
            out.setdefault((V2_0074, code), snomed[fhir_code])
    return out


def categories_of(sr: dict[str, Any]) -> set[str]:
    table = _category_table()
    found: set[str] = set()
    for concept in sr.get("category") or []:
        for c in concept.get("coding") or []:
            hit = table.get((c.get("system", ""), c.get("code", "")))
            if hit:
                found.add(hit)
    return found


def _from_row(row: Any) -> Destination:
    return Destination(
        int(row[0]), row[1], row[2], row[3], int(row[4]), row[5], row[6], row[7], row[8], row[9], row[10],
        tuple(row[11] or ()), tuple(row[12] or ()), tuple(row[13] or ()), tuple(row[14] or ()),
        dict(row[15] or {}), dict(row[16] or {}), bool(row[17]), bool(row[18]),
    )


_cache: dict[str, tuple[float, tuple[Destination, ...]]] = {}


async def destinations_for(conn: Any, tenant: str) -> tuple[Destination, ...]:
    """The tenant's enabled destinations (cached ``TTL`` seconds per process)."""
    now = time.monotonic()
    hit = _cache.get(tenant)
    if hit is not None and now - hit[0] < TTL:
        return hit[1]
    cur = await conn.execute(
        f"SELECT {_COLUMNS} FROM hl7_destination WHERE tenant_id = %s AND enabled ORDER BY id", (tenant,)
    )
    found = tuple(_from_row(r) for r in await cur.fetchall())
    _cache[tenant] = (now, found)
    return found


async def destination_by_id(conn: Any, destination_id: int) -> Destination | None:
    """One destination, enabled or not, read now (no cache: the dispatcher sends with its current settings)."""
    cur = await conn.execute(f"SELECT {_COLUMNS} FROM hl7_destination WHERE id = %s", (destination_id,))
    found = await cur.fetchone()
    return _from_row(found) if found is not None else None


def validate(message_type: str, categories: list[str], tls: dict[str, Any], retry: dict[str, Any]) -> None:
    if message_type not in ("ORM^O01", "OML^O21"):
        raise ValueError("message type must be ORM^O01 or OML^O21")
    bad = [c for c in categories if c not in ("lab", "imaging", "*")]
    if bad:
        raise ValueError(f"unknown categories {bad} (lab, imaging or *)")
    if set(tls) - _TLS_KEYS:
        raise ValueError(f"unknown TLS options {sorted(set(tls) - _TLS_KEYS)} (known: {sorted(_TLS_KEYS)})")
    if set(retry) - set(DEFAULT_RETRY):
        raise ValueError(f"unknown retry options {sorted(set(retry) - set(DEFAULT_RETRY))} (known: {sorted(DEFAULT_RETRY)})")
    for key, value in retry.items():
        if not isinstance(value, int | float) or value < 0:
            raise ValueError(f"retry option {key} must be a number ≥ 0")


async def add_destination(conn: Any, tenant: str, name: str, host: str, port: int, *, message_type: str = "ORM^O01",
                          version: str = "2.5.1", sending_app: str = "FHIR-SERVER", sending_facility: str = "",
                          receiving_app: str = "", receiving_facility: str = "", categories: list[str] | None = None,
                          codes: list[str] | None = None, performers: list[str] | None = None,
                          locations: list[str] | None = None, tls: dict[str, Any] | None = None,
                          retry: dict[str, Any] | None = None, forward_hl7: bool = False, enabled: bool = True) -> int:
    """Create or replace (same tenant + name) a destination; its id (kept on replace, so the outbox
    order and history stay)."""
    categories = categories or ["lab"]
    tls, retry = tls or {}, retry or {}
    validate(message_type, categories, tls, retry)
    await conn.execute("INSERT INTO tenant (id, name) VALUES (%s, %s) ON CONFLICT (id) DO NOTHING", (tenant, tenant))
    cur = await conn.execute(
        "INSERT INTO hl7_destination (tenant_id, name, host, port, message_type, version, sending_app, sending_facility, "
        "receiving_app, receiving_facility, categories, codes, performers, locations, tls, retry, forward_hl7, enabled) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s::jsonb, %s, %s) "
        "ON CONFLICT (tenant_id, name) DO UPDATE SET host = EXCLUDED.host, port = EXCLUDED.port, "
        "message_type = EXCLUDED.message_type, version = EXCLUDED.version, sending_app = EXCLUDED.sending_app, "
        "sending_facility = EXCLUDED.sending_facility, receiving_app = EXCLUDED.receiving_app, "
        "receiving_facility = EXCLUDED.receiving_facility, categories = EXCLUDED.categories, codes = EXCLUDED.codes, "
        "performers = EXCLUDED.performers, locations = EXCLUDED.locations, tls = EXCLUDED.tls, retry = EXCLUDED.retry, "
        "forward_hl7 = EXCLUDED.forward_hl7, enabled = EXCLUDED.enabled RETURNING id",
        (tenant, name, host, port, message_type, version, sending_app, sending_facility, receiving_app,
         receiving_facility, categories, codes or [], performers or [], locations or [],
         orjson.dumps(tls).decode(), orjson.dumps(retry).decode(), forward_hl7, enabled),
    )
    row = await cur.fetchone()
    return int(row[0])


async def remove_destination(conn: Any, tenant: str, name: str) -> bool:
    """Delete a destination (and its outbox rows)."""
    cur = await conn.execute("DELETE FROM hl7_destination WHERE tenant_id = %s AND name = %s", (tenant, name))
    return bool(cur.rowcount)


async def list_destinations(conn: Any, tenant: str | None = None) -> list[dict[str, Any]]:
    sql = f"SELECT {_COLUMNS} FROM hl7_destination"
    binds: list[Any] = []
    if tenant:
        sql += " WHERE tenant_id = %s"
        binds.append(tenant)
    cur = await conn.execute(sql + " ORDER BY tenant_id, name", binds)
    cols = [c.strip() for c in _COLUMNS.split(",")]
    return [dict(zip(cols, row, strict=True)) for row in await cur.fetchall()]
