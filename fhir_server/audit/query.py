"""Searching the audit trail: AuditEvent search parameters → SQL over ``audit_event`` (binds only).

Not the resource search (``fhir_server.search``): AuditEvents are not stored as resources. Each
parameter maps to a column; a comma is OR (``= ANY(array)``), a repeated parameter AND. Results are
newest first, paged by keyset on the primary key ``(tenant_id, recorded, id)``.

| parameter | column | values |
|---|---|---|
| ``_id`` | recorded, id | AuditEvent ids (``fhir_server.audit.resource.resource_id``) |
| ``patient`` | patient | ``Patient/1``, ``1`` or a URL ending in ``Patient/1`` |
| ``agent`` | agent or fhir_user | the subject, or the FHIR identity ``Practitioner/1`` |
| ``altid`` | agent | the subject |
| ``address`` | network | an IP address |
| ``date`` | recorded | FHIR dates with prefixes eq ne lt le gt ge sa eb (ap as eq) |
| ``type`` | type | ``rest``, ``110114`` (with or without their system) |
| ``subtype`` | interaction | ``read``, ``search-type``, ``login``… or ``system|code`` |
| ``action`` | action | C R U D E |
| ``outcome`` | outcome | 0 4 8 12 |
| ``entity`` | resource_type, resource_id | ``Type/id`` or ``id`` |
| ``entity-type`` | resource_type | a resource type (this server's reading: what the entity is) |
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from fhir_server.audit.resource import COLUMNS, DCM, DCM_SUBTYPES, TYPE_SYSTEMS, parse_resource_id
from fhir_server.errors import InvalidSearch, Issue
from fhir_server.search.compile import range_condition
from fhir_server.search.query_values import split_prefix, split_unescaped, unescape
from fhir_server.search.ranges import date_range

PARAMS = frozenset({
    "_id", "patient", "agent", "altid", "address", "date", "type", "subtype", "action", "outcome", "entity",
    "entity-type",
})
_DCM_INTERACTION = {code: name for name, (code, _) in DCM_SUBTYPES.items()}
SELECT = ", ".join(f"a.{c}" for c in COLUMNS)


@dataclass(slots=True)
class AuditSearch:
    tenant: str
    clauses: list[str] = field(default_factory=list)
    binds: dict[str, Any] = field(default_factory=dict)
    warnings: list[Issue] = field(default_factory=list)
    applied: list[tuple[str, str]] = field(default_factory=list)

    def bind(self, value: Any) -> str:
        key = f"p{len(self.binds)}"
        self.binds[key] = value
        return f"%({key})s"


def _values(raw: str) -> list[str]:
    return [unescape(v) for v in split_unescaped(raw, ",") if v != ""]


def _reference_id(value: str, resource_type: str) -> str | None:
    head, _, last = value.rstrip("/").rpartition("/")
    if not head:
        return last or None
    return last if head.rsplit("/", 1)[-1] == resource_type and last else None


def _token(value: str) -> tuple[str | None, str]:
    if "|" in value:
        system, _, code = value.partition("|")
        return system, code
    return None, value


def _date_clause(q: AuditSearch, value: str, name: str) -> str:
    prefix, text = split_prefix(value)
    if prefix == "??":
        raise InvalidSearch(f"'{value}' is not a date with an optional prefix", expression=name)
    try:
        low, high = date_range(text)
    except ValueError:
        raise InvalidSearch(f"'{value}' is not a FHIR date", expression=name) from None
    # ap as eq (module docstring); a.recorded is an instant: target range [recorded, recorded]
    prefix = "eq" if prefix in (None, "ap") else prefix
    return range_condition(prefix, low, high, "a.recorded", "a.recorded", q.bind, datetime.now(UTC))


def _clause(q: AuditSearch, name: str, values: list[str]) -> str | None:
    """One parameter occurrence (its comma-separated values OR-ed) as SQL, or None if it can match nothing."""
    if name == "date":
        return "(" + " OR ".join(_date_clause(q, v, name) for v in values) + ")"
    if name == "_id":
        keys = [k for v in values if (k := parse_resource_id(v)) is not None]
        if not keys:
            return None
        return "(" + " OR ".join(f"(a.recorded = {q.bind(r)} AND a.id = {q.bind(i)})" for r, i in keys) + ")"
    if name == "patient":
        ids = [i for v in values if (i := _reference_id(v, "Patient"))]
        return f"a.patient = ANY({q.bind(ids)}::text[])" if ids else None
    if name == "agent":
        arr = q.bind(values)
        return f"(a.agent = ANY({arr}::text[]) OR a.fhir_user = ANY({arr}::text[]))"
    if name == "altid":
        return f"a.agent = ANY({q.bind(values)}::text[])"
    if name == "address":
        return f"a.network = ANY({q.bind(values)}::text[])"
    if name == "type":
        codes = [code for system, code in map(_token, values) if system in (None, "", TYPE_SYSTEMS.get(code))]
        return f"a.type = ANY({q.bind(codes)}::text[])" if codes else None
    if name == "subtype":
        names = []
        for system, code in map(_token, values):
            if system == DCM:
                if code in _DCM_INTERACTION:
                    names.append(_DCM_INTERACTION[code])
            else:
                names.append(code)
        return f"a.interaction = ANY({q.bind(names)}::text[])" if names else None
    if name in ("action", "outcome"):
        codes = [code for _, code in map(_token, values)]
        return f"a.{name} = ANY({q.bind(codes)}::text[])"
    if name == "entity":
        parts = []
        for v in values:
            head, _, last = v.rstrip("/").rpartition("/")
            if head:
                parts.append(f"(a.resource_type = {q.bind(head.rsplit('/', 1)[-1])} AND a.resource_id = {q.bind(last)})")
            else:
                parts.append(f"a.resource_id = {q.bind(last)}")
        return "(" + " OR ".join(parts) + ")"
    if name == "entity-type":
        return f"a.resource_type = ANY({q.bind(values)}::text[])"
    raise AssertionError(name)  # pragma: no cover - PARAMS lists every name handled above


def build(tenant: str, pairs: list[tuple[str, str]], result_params: frozenset[str]) -> AuditSearch:
    """The WHERE clauses of a search; unknown parameters become warnings (the caller decides on strict)."""
    q = AuditSearch(tenant)
    for raw_name, raw_value in pairs:
        if raw_name in result_params:
            continue
        name, _, modifier = raw_name.partition(":")
        if name not in PARAMS:
            q.warnings.append(Issue("warning", "not-supported", f"Search parameter '{raw_name}' is not supported on AuditEvent: ignored", raw_name))
            continue
        if modifier:
            raise InvalidSearch(f"Modifier ':{modifier}' is not supported on AuditEvent {name}", expression=raw_name)
        values = _values(raw_value)
        if not values:
            continue
        clause = _clause(q, name, values)
        q.clauses.append(clause or "FALSE")
        q.applied.append((raw_name, raw_value))
    return q


def page_sql(q: AuditSearch, count: int, after: tuple[datetime, UUID] | None) -> tuple[str, dict[str, Any]]:
    """Newest first; ``after``: the (recorded, id) of the previous page's last row."""
    where = ["a.tenant_id = " + q.bind(q.tenant), *q.clauses]
    if after is not None:
        where.append(f"(a.recorded, a.id) < ({q.bind(after[0])}, {q.bind(after[1])})")
    sql = (
        f"SELECT {SELECT} FROM audit_event a WHERE {' AND '.join(where)} "
        f"ORDER BY a.recorded DESC, a.id DESC LIMIT {q.bind(count + 1)}"
    )
    return sql, q.binds


def read_sql(tenant: str, recorded: datetime, audit_id: UUID) -> tuple[str, tuple[Any, ...]]:
    return (
        f"SELECT {SELECT} FROM audit_event a WHERE a.tenant_id = %s AND a.recorded = %s AND a.id = %s",
        (tenant, recorded, audit_id),
    )
