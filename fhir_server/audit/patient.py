"""The patient whose data an interaction touched: AuditEvent.entity with role 1 (Patient).

A Patient is its own patient. Any other resource belongs to the patient its Patient-compartment
parameters reference (compartmentdefinition-patient.html: Observation ``subject``, ``performer``),
taken from the index rows a write computes anyway, or, for a read, from the resource read. A
search names its patient in a ``patient``/``subject`` criterion (or ``_id`` of a Patient search).
One patient per row: the first link in the compartment definition's order that has one.
"""

from __future__ import annotations

from functools import cache
from typing import Any
from urllib.parse import parse_qsl

from fhir_server.definitions.compartments import compartment
from fhir_server.search.rows import IndexRows


@cache
def compartment_links(resource_type: str) -> tuple[str, ...]:
    """The Patient-compartment parameters of a type, in the definition's order."""
    return tuple(p for p in compartment("Patient").params.get(resource_type, ()) if p != "{def}")


def patient_from_rows(resource_type: str, resource_id: str | None, rows: Any) -> str | None:
    """From a write's index rows (``reference`` rows: param, target type, id, version, url)."""
    if resource_type == "Patient":
        return resource_id
    links = compartment_links(resource_type)
    if rows is None or not links:
        return None
    best: tuple[int, str] | None = None
    for param, target_type, target_id, _version, url in rows.reference:
        if target_type == "Patient" and target_id and url is None and param in links:
            rank = links.index(param)
            if best is None or rank < best[0]:
                best = (rank, target_id)
    return best[1] if best else None


@cache
def _plan(resource_type: str) -> tuple[tuple[str, Any, Any], ...]:
    from fhir_server.search.extract import plan_for_type

    links = compartment_links(resource_type)
    return tuple(step for step in plan_for_type(resource_type) if step[0] in links)


def patient_of_resource(resource: dict[str, Any]) -> str | None:
    """From a resource (a read): only the compartment parameters' expressions are evaluated."""
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str):
        return None
    if rtype == "Patient":
        rid = resource.get("id")
        return rid if isinstance(rid, str) else None
    rows = IndexRows()
    for code, converter, extractor in _plan(rtype):
        try:
            items = extractor(resource)
        except Exception:  # noqa: BLE001, S112 - an audit annotation never fails the request
            continue
        if items:
            converter(code, items, rows)
    return patient_from_rows(rtype, resource.get("id"), rows)


_CRITERIA = (b"patient", b"subject", b"_id")


def patient_from_query(resource_type: str | None, query_string: bytes) -> str | None:
    """From a search's criteria: ``patient=``/``subject=`` (``Patient/1``, ``1``, or an absolute URL
    ending in ``Patient/1``), or ``_id=`` of a Patient search. A list of several is no one patient."""
    if not query_string or not any(c in query_string for c in _CRITERIA):
        return None
    names = ("_id",) if resource_type == "Patient" else ("patient", "subject", "patient:Patient", "subject:Patient")
    for name, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=False):
        if name not in names or "," in value:
            continue
        ref = value.rstrip("/")
        if name == "_id":
            return ref or None
        head, _, last = ref.rpartition("/")
        if not head:
            return last or None
        if head.rsplit("/", 1)[-1] == "Patient" and last:
            return last
    return None
