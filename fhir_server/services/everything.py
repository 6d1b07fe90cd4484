"""``$everything`` (https://hl7.org/fhir/R4/patient-operation-everything.html,
https://hl7.org/fhir/R4/encounter-operation-everything.html): what goes in the record.

* ``Patient/[id]/$everything``: the patient, every resource in its Patient compartment (the R4
  CompartmentDefinition: for each type the reference parameters that link it to the patient,
  e.g. Observation ``subject``/``performer``, Patient ``link``), and every resource those
  reference (one level: Practitioner, Organization, Location, Medication, Device, Encounter…),
  except resources that belong to another patient's compartment and other Patient resources.
* ``Patient/$everything``: the same for every live patient of the tenant (no exclusion needed).
* ``Encounter/[id]/$everything``: the encounter, every resource in its Encounter compartment
  (CompartmentDefinition/encounter: ``encounter``, ``context``…), and what they reference
  (the encounter's patient included), except data of patients other than the encounter's.

References are followed one level and only when local (``Type/id``), through the reference
index: a reference counts when an R4 reference search parameter covers its element (Encounter
``participant``/``serviceProvider``, Observation ``performer``, EOB ``claim``/``care-team``…), so
references in unindexed elements (e.g. Claim ``supportingInfo.valueReference``, ``prescription``,
``diagnosis.diagnosisReference``) are not followed, nor references inside ``contained`` resources,
nor a second level (PractitionerRole → Practitioner). Deleted resources never appear. See
``fhir_server.storage.compartment`` for the SQL.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from fhir_server.auth.visibility import Access
from fhir_server.definitions.compartments import compartment
from fhir_server.errors import ResourceGone, ResourceNotFound
from fhir_server.search.paging import PageToken
from fhir_server.services.resources import BoundDatabase
from fhir_server.storage import repository as repo
from fhir_server.storage.compartment import EverythingPage, EverythingQuery, everything_page, focus_patients
from fhir_server.storage.db import Database


@dataclass(slots=True)
class EverythingRequest:
    focus_type: str  # Patient | Encounter
    focus_id: str | None  # None: type level (every patient)
    types: list[str] | None
    since: datetime | None
    count: int
    page: PageToken | None


async def everything(
    db: Database | BoundDatabase, tenant: str, req: EverythingRequest, access: Access | None = None
) -> EverythingPage:
    """The page; the focus and every resource in it among those the caller (``access``) may see."""
    members = compartment(req.focus_type)
    patient = compartment("Patient")
    m_types, m_params = members.links()
    p_types, p_params = patient.links()
    async with db.connection() as conn:
        patients: list[str] | None = None
        if req.focus_id is not None:
            current = await repo.fetch_current(conn, tenant, req.focus_type, req.focus_id, access=access)
            if current is None:
                raise ResourceNotFound(f"{req.focus_type}/{req.focus_id} is not known")
            if current.deleted:
                raise ResourceGone(f"{req.focus_type}/{req.focus_id} was deleted")
            if req.focus_type == "Patient":
                patients = [req.focus_id]
            else:
                links = list(patient.params.get(req.focus_type, ()))
                patients = await focus_patients(conn, tenant, req.focus_type, req.focus_id, links)
        q = EverythingQuery(
            tenant=tenant,
            focus_type=req.focus_type,
            focus_ids=[req.focus_id] if req.focus_id is not None else None,
            member_types=m_types,
            member_params=m_params,
            patients=patients,
            patient_types=p_types,
            patient_params=p_params,
            types=req.types,
            since=req.since,
            count=req.count,
            page=req.page,
            access=access,
        )
        return await everything_page(conn, q)
