"""What a caller may see and write inside its tenant: facility scoping and SMART patient context.

The tenant itself is not here: every statement carries ``tenant_id = …`` already. This module
narrows further, from the token (``Principal``) to an ``Access``:

* **Facilities.** A tenant's facilities are its Organization and Location resources. A resource
  belongs to facilities through ``meta.security`` labels of the system ``FACILITY_SYSTEM`` whose
  code is the Organization or Location id (several labels: shared by those facilities). A resource
  without such a label is tenant-wide (a Patient registered centrally, a Practitioner, a
  Medication). A caller bound to facilities (``Principal.facilities`` not None) sees a resource if
  it is tenant-wide or carries a label of one of its facilities.
* **Patient context.** A SMART token confined to a patient (``Principal.patient``) sees that
  Patient and the resources in its Patient compartment (R4 CompartmentDefinition/patient: e.g.
  Observation ``subject``/``performer``), nothing else.

Both are decided on the *current* index rows (``idx_token`` ``_security`` rows, ``idx_reference``
rows of the compartment's parameters), so every version of a resource, in vread and history, is
visible exactly when its current version is. ``visible_sql`` is the one SQL condition every read
path adds (read, vread, history, search and its chains/``_has``/includes, conditional matching,
transaction references, ``$everything``, bulk ``$export``, ``$meta``); an unrestricted caller
(the common case) gets None: no extra SQL at all.

Writes by a bound caller (``prepare_write``): a label of a facility it is not bound to is 403; a
new resource without a facility label gets the caller's facilities; an update without one keeps
the labels of the version it replaces (a bound caller cannot widen a resource by leaving them
out). A patient-context caller may only write the Patient itself or resources in its compartment
(``check_compartment``, 403 otherwise). What cannot be seen answers like what does not exist:
404 on reads, no match in searches and conditional criteria.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import orjson

from fhir_server.errors import Forbidden

__all__ = [
    "FACILITY_SYSTEM",
    "UNRESTRICTED",
    "Access",
    "check_compartment",
    "prepare_write",
    "visible_binds",
    "visible_sql",
]

# the project's canonical namespace (see services/binary.py STORAGE_EXTENSION)
FACILITY_SYSTEM = "https://fhir-server.example.org/fhir/CodeSystem/facility"


@dataclass(frozen=True, slots=True)
class Access:
    """The part of a Principal that narrows what it sees inside its tenant."""

    facilities: tuple[str, ...] | None = None  # None: every facility of the tenant
    patient: str | None = None  # a SMART patient context: only this patient's compartment

    @property
    def unrestricted(self) -> bool:
        return self.facilities is None and self.patient is None

    @classmethod
    def of(cls, principal: Any) -> Access:
        """From a ``Principal`` (None, development mode: unrestricted)."""
        if principal is None:
            return UNRESTRICTED
        facilities = getattr(principal, "facilities", None)
        patient = getattr(principal, "patient", None)
        if facilities is None and patient is None:
            return UNRESTRICTED
        return cls(tuple(facilities) if facilities is not None else None, patient)

    def to_json(self) -> dict[str, Any] | None:
        """For a job that runs later on the caller's behalf (bulk ``$export``)."""
        if self.unrestricted:
            return None
        return {"facilities": list(self.facilities) if self.facilities is not None else None, "patient": self.patient}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> Access:
        if not data:
            return UNRESTRICTED
        facilities = data.get("facilities")
        return cls(tuple(facilities) if facilities is not None else None, data.get("patient"))


UNRESTRICTED = Access()


@cache
def _patient_links() -> tuple[list[str], list[str]]:
    from fhir_server.definitions.compartments import compartment

    return compartment("Patient").links()


@cache
def _patient_params(resource_type: str) -> list[str]:
    """The reference parameters that put a ``resource_type`` in a Patient's compartment."""
    types, params = _patient_links()
    return sorted({p for t, p in zip(types, params, strict=True) if t == resource_type})


def _in_compartment(alias: str, owner: str, patient: str, bind: Callable[[Any], str], resource_type: str | None) -> str:
    """``alias`` is the patient or in its compartment. With the row's type known, only that type's
    links are tried (a short array, usually one or two names); else every (type, param) link."""
    link = f"v.target_type = 'Patient' AND v.target_id = {patient} AND v.url IS NULL"
    if resource_type is None:
        types, params = _patient_links()
        return (
            f"(({alias}.resource_type = 'Patient' AND {alias}.id = {patient}) OR EXISTS (SELECT 1 FROM idx_reference v"
            f" JOIN unnest({bind(types)}::text[], {bind(params)}::text[]) AS vc(rt, param)"
            f" ON v.resource_type = vc.rt AND v.param = vc.param WHERE {owner} AND {link}))"
        )
    conds = [f"{alias}.id = {patient}"] if resource_type == "Patient" else []
    params = _patient_params(resource_type)
    if params:
        conds.append(f"EXISTS (SELECT 1 FROM idx_reference v WHERE {owner} AND v.param = ANY({bind(params)}) AND {link})")
    return "(" + " OR ".join(conds) + ")" if conds else "FALSE"


def visible_sql(
    access: Access | None, alias: str, bind: Callable[[Any], str], resource_type: str | None = None
) -> str | None:
    """The condition limiting the rows of ``alias`` (a ``resource`` or ``resource_history`` row:
    ``tenant_id``, ``resource_type``, ``id``) to what ``access`` may see; None when unrestricted.
    ``bind`` turns a value into a placeholder (every value is a bind); ``resource_type``, when every
    row of ``alias`` is of that type, gives a shorter condition."""
    if access is None or access.unrestricted:
        return None
    conds = []
    owner = f"v.tenant_id = {alias}.tenant_id AND v.resource_type = {alias}.resource_type AND v.resource_id = {alias}.id"
    if access.facilities is not None:
        # unlabelled (no row: NULL → true) or one label among the caller's facilities. One scalar
        # subquery, not NOT EXISTS … OR EXISTS …: with two, PostgreSQL re-plans every execution of
        # the prepared statement (the generic plan never looks cheap enough), ≈ +1.5 ms a search.
        mine = bind(list(access.facilities))
        conds.append(
            f"COALESCE((SELECT bool_or(v.code = ANY({mine})) FROM idx_token v WHERE {owner}"
            f" AND v.param = '_security' AND v.system = {bind(FACILITY_SYSTEM)}), true)"
        )
    if access.patient is not None:
        conds.append(_in_compartment(alias, owner, bind(access.patient), bind, resource_type))
    return " AND ".join(conds)


def visible_binds(
    access: Access | None, alias: str, binds: dict[str, Any], prefix: str = "vis", resource_type: str | None = None
) -> str | None:
    """``visible_sql`` for a statement with named binds: the values go into ``binds``."""
    if access is None or access.unrestricted:
        return None

    def bind(value: Any) -> str:
        name = f"{prefix}{len(binds)}"
        binds[name] = value
        return f"%({name})s"

    return visible_sql(access, alias, bind, resource_type)


# ---- writes ---------------------------------------------------------------------------------
def _facility_labels(resource: dict[str, Any]) -> list[str]:
    meta = resource.get("meta")
    labels = meta.get("security") if isinstance(meta, dict) else None
    if not isinstance(labels, list):
        return []
    return [str(c.get("code")) for c in labels if isinstance(c, dict) and c.get("system") == FACILITY_SYSTEM]


def prepare_write(access: Access | None, resource: dict[str, Any], previous: str | None) -> None:
    """Facility labels of a write by a bound caller (see the module docstring). ``previous`` is the
    JSON of the version being replaced (None: a create, or a deleted one brought back)."""
    if access is None or access.facilities is None:
        return
    labels = _facility_labels(resource)
    foreign = sorted(set(labels) - set(access.facilities))
    if foreign:
        raise Forbidden(
            f"You are not bound to facility {', '.join(foreign)}: the resource cannot be labelled with it",
            expression="meta.security",
        )
    if labels:
        return
    inherited: list[str] = []
    if previous is not None:
        inherited = _facility_labels(orjson.loads(previous))
    codes = inherited or ([] if previous is not None else list(access.facilities))
    if not codes:
        return  # an update of a tenant-wide resource stays tenant-wide
    meta = resource.get("meta")
    meta = dict(meta) if isinstance(meta, dict) else {}
    security = list(meta.get("security") or [])
    security += [{"system": FACILITY_SYSTEM, "code": code} for code in codes]
    meta["security"] = security
    resource["meta"] = meta


def check_compartment(access: Access | None, resource_type: str, resource_id: str, references: list[tuple[Any, ...]]) -> None:
    """A patient-context caller writes only its Patient or resources in that Patient's compartment.
    ``references`` are the resource's ``idx_reference`` rows (param, target_type, target_id, …)."""
    if access is None or access.patient is None:
        return
    if resource_type == "Patient" and resource_id == access.patient:
        return
    links = set(_patient_params(resource_type))
    for row in references:
        if row[0] in links and row[1] == "Patient" and row[2] == access.patient and (len(row) < 5 or row[4] is None):
            return
    raise Forbidden(
        f"This token is limited to Patient/{access.patient}: the {resource_type} is not in that patient's compartment"
    )
