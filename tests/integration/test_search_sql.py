"""Search SQL against a real PostgreSQL: extracted index rows + compiled WHERE -> expected ids.

A fresh database on the session's PostgreSQL at the current schema; a handful of resources (tenant
'default', plus altered copies under tenant 'other') stored through the server's own write statement
with the rows ``extract_index_rows`` gives; then ``build_where`` queries.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from fhir_server.search.compile import build_where
from tests.integration.searchdb import insert_indexed, seeded_database

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2025, 1, 1, tzinfo=UTC)
NARRATIVE = '<div xmlns="http://www.w3.org/1999/xhtml">Peter Chalmers, a patient</div>'

P1 = {
    "resourceType": "Patient",
    "id": "p1",
    "meta": {
        "tag": [{"system": "http://tags", "code": "vip"}],
        "profile": ["http://example.org/StructureDefinition/my-patient"],
        "source": "http://source.org/feed#1",
    },
    "text": {"status": "generated", "div": NARRATIVE},
    "active": True,
    "identifier": [{"system": "http://ids", "value": "12345", "type": {"text": "Medical record number"}}],
    "name": [{"family": "Chalmers", "given": ["Peter", "James"]}],
    "telecom": [{"system": "phone", "value": "555-1234"}, {"system": "email", "value": "peter@example.org"}],
    "gender": "male",
    "birthDate": "1974-12-25",
    "address": [{"city": "Pleasantville", "postalCode": "3999"}],
    "managingOrganization": {"reference": "Organization/o1"},
    "generalPractitioner": [{"reference": "http://other.org/fhir/Practitioner/x9"}],
}
P2 = {
    "resourceType": "Patient",
    "id": "p2",
    "active": False,
    "identifier": [{"system": "http://ids", "value": "67890"}],
    "name": [{"family": "Müller", "given": ["Zoë"]}],
    "gender": "female",
    "birthDate": "1980-03",
    "deceasedDateTime": "2020-01-01T10:00:00Z",
    "managingOrganization": {"reference": "Organization/o2"},
    "generalPractitioner": [{"reference": "Practitioner/pr1/_history/3"}],
}
P3 = {
    "resourceType": "Patient",
    "id": "p3",
    "name": [{"family": "Van,Der Berg", "given": ["Ann"]}],
    "gender": "female",
    "birthDate": "2000",
    "telecom": [{"system": "phone", "value": "555|999"}],
    "generalPractitioner": [{"reference": "PractitionerRole/r1"}],
}
P4 = {
    "resourceType": "Patient",
    "id": "p4",
    "gender": "unknown",
    "generalPractitioner": [{"identifier": {"system": "http://npi", "value": "999"}}],
}
P5_DELETED = {
    "resourceType": "Patient",
    "id": "p5",
    "name": [{"family": "Chalmers"}],
    "gender": "male",
    "birthDate": "1974-12-25",
}

UCUM = "http://unitsofmeasure.org"
LOINC = "http://loinc.org"
SCT = "http://snomed.info/sct"
O1 = {
    "resourceType": "Observation",
    "id": "o1",
    "status": "final",
    "code": {"coding": [{"system": LOINC, "code": "29463-7", "display": "Body weight"}], "text": "Weight"},
    "subject": {"reference": "Patient/p1"},
    "effectiveDateTime": "2024-03-15T10:30:00Z",
    "valueQuantity": {"value": 185, "unit": "lbs", "system": UCUM, "code": "[lb_av]"},
}
O2 = {
    "resourceType": "Observation",
    "id": "o2",
    "status": "preliminary",
    "code": {"coding": [{"system": LOINC, "code": "8480-6", "display": "Systolic blood pressure"}]},
    "subject": {"reference": "Group/g1"},
    "effectivePeriod": {"start": "2024-03-01", "end": "2024-03-31"},
    "valueQuantity": {"value": Decimal("120.5"), "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"},
}
O3 = {
    "resourceType": "Observation",
    "id": "o3",
    "status": "final",
    "code": {"coding": [{"system": LOINC, "code": "29463-7"}]},
    "subject": {"reference": "Patient/p2/_history/2"},
    "effectiveDateTime": "2023",
    "valueQuantity": {"value": Decimal("70.0"), "unit": "kg", "system": UCUM, "code": "kg"},
}
O4 = {
    "resourceType": "Observation",
    "id": "o4",
    "status": "final",
    "code": {"text": "Glucose"},
    "subject": {"reference": "http://example.org/fhir/Patient/p1"},
    "effectiveDateTime": "2024-03-15",
    "valueQuantity": {"value": 5, "comparator": "<", "unit": "mg", "system": UCUM, "code": "mg"},
}
O5 = {
    "resourceType": "Observation",
    "id": "o5",
    "status": "amended",
    "code": {"coding": [{"system": SCT, "code": "271649006"}]},
    "subject": {"reference": "Patient/p3"},
    "effectivePeriod": {"start": "2024-03-10T00:00:00Z"},
    "valueCodeableConcept": {"coding": [{"system": SCT, "code": "373066001", "display": "Yes"}]},
}
O6 = {
    "resourceType": "Observation",
    "id": "o6",
    "status": "final",
    "code": {"coding": [{"system": LOINC, "code": "29463-7"}]},
    "subject": {"reference": "Patient/p1"},
    "effectiveDateTime": "2024-03-15T12:30:00+02:00",
    "valueQuantity": {"value": Decimal("185.0"), "unit": "lbs", "system": UCUM, "code": "[lb_av]"},
}

RA1 = {
    "resourceType": "RiskAssessment",
    "id": "ra1",
    "status": "final",
    "subject": {"reference": "Patient/p1"},
    "prediction": [{"probabilityDecimal": Decimal("0.35")}],
}
RA2 = {
    "resourceType": "RiskAssessment",
    "id": "ra2",
    "status": "final",
    "subject": {"reference": "Patient/p1"},
    "prediction": [{"probabilityRange": {"low": {"value": Decimal("0.2")}, "high": {"value": Decimal("0.4")}}}],
}
RA3 = {
    "resourceType": "RiskAssessment",
    "id": "ra3",
    "status": "final",
    "subject": {"reference": "Patient/p1"},
    "prediction": [{"probabilityDecimal": 100}],
}

VALUE_SETS = [
    {"resourceType": "ValueSet", "id": vid, "status": "active", "url": url}
    for vid, url in [
        ("vs1", "http://acme.org/fhir/ValueSet/123"),
        ("vs2", "http://acme.org/fhir/ValueSet/124"),
        ("vs3", "http://other.org/vs"),
        ("vs4", "http://acme.org/fhirx/ValueSet/1"),
        ("vs5", "http://acme.org/fhir"),
    ]
]
QR1 = {
    "resourceType": "QuestionnaireResponse",
    "id": "qr1",
    "status": "completed",
    "questionnaire": "http://x.org/Questionnaire/q1|2.0",
}
QR2 = {
    "resourceType": "QuestionnaireResponse",
    "id": "qr2",
    "status": "completed",
    "questionnaire": "http://x.org/Questionnaire/q1",
}
E1 = {
    "resourceType": "Encounter",
    "id": "e1",
    "status": "finished",
    "class": {"code": "AMB"},
    "period": {"start": "2024-01-01T08:00:00Z", "end": "2024-01-01T12:00:00Z"},
}
E2 = {
    "resourceType": "Encounter",
    "id": "e2",
    "status": "in-progress",
    "class": {"code": "IMP"},
    "period": {"start": "2024-01-05"},
}

LONG_NAME = "Hôpital " + "é" * 3000  # over PostgreSQL's btree entry limit once UTF-8 encoded
LONG_ID = "A" * 5000
ORG_LONG = {
    "resourceType": "Organization",
    "id": "org-long",
    "name": LONG_NAME,
    "identifier": [{"system": "http://ids", "value": LONG_ID}],
    "endpoint": [{"reference": "http://x.org/" + "e" * 3000}],
}

LAST_UPDATED = {
    "p1": "2024-01-10T12:00:00Z",
    "p2": "2024-02-01T00:00:00Z",
    "p3": "2024-02-15T08:30:00Z",
    "p4": "2025-06-01T00:00:00Z",
    "p5": "2024-01-10T12:00:00Z",
}
DEFAULT = [P1, P2, P3, P4, O1, O2, O3, O4, O5, O6, RA1, RA2, RA3, *VALUE_SETS, QR1, QR2, E1, E2, ORG_LONG]


def other_tenant_resources() -> list[dict]:
    """Tenant 'other': the same ids, but p4 and a p9 are male Chalmers born 1974 with identifier 12345."""
    out = [copy.deepcopy(r) for r in DEFAULT]
    p4 = next(r for r in out if r["id"] == "p4")
    extra = {
        "name": [{"family": "Chalmers", "given": ["Peter"]}],
        "gender": "male",
        "birthDate": "1974-12-25",
        "identifier": [{"system": "http://ids", "value": "12345"}],
    }
    p4.update(copy.deepcopy(extra))
    out.append({"resourceType": "Patient", "id": "p9", **copy.deepcopy(extra)})
    return out


@pytest.fixture(scope="module")
def conn(pg_admin_url: str) -> Iterator[psycopg.Connection]:
    with seeded_database(pg_admin_url) as c:
        for resource in DEFAULT:
            insert_indexed(c, "default", resource, last_updated=LAST_UPDATED.get(resource["id"], "2024-06-01T00:00:00Z"))
        insert_indexed(c, "default", P5_DELETED, deleted=True)
        for resource in other_tenant_resources():
            insert_indexed(c, "other", resource, last_updated=LAST_UPDATED.get(resource["id"], "2024-06-01T00:00:00Z"))
        yield c


def search(
    conn: psycopg.Connection, rtype: str, params: list[tuple[str, str]], tenant: str = "default", **kwargs: Any
) -> set[str]:
    where = build_where(rtype, params, now=NOW, **kwargs)
    sql = (
        "SELECT r.id FROM resource r WHERE r.tenant_id = %(tenant)s AND r.resource_type = %(rtype)s"
        f" AND NOT r.deleted AND ({where.sql})"
    )
    return {row[0] for row in conn.execute(sql, {**where.binds, "tenant": tenant, "rtype": rtype}).fetchall()}


def q(query: str) -> list[tuple[str, str]]:
    """'a=1&b=2' -> [('a', '1'), ('b', '2')], values already URL-decoded (as the API layer gives them)."""
    return [tuple(part.split("=", 1)) for part in query.split("&")]  # type: ignore[misc]


PATIENTS = [
    # string (search.html#string)
    ("name=peter", {"p1"}),
    ("name=PETER", {"p1"}),
    ("name=muller", {"p2"}),
    ("name=zoe", {"p2"}),
    ("family=chal", {"p1"}),
    ("family:exact=Chalmers", {"p1"}),
    ("family:exact=chalmers", set()),
    ("family:contains=alm", {"p1"}),
    ("name:contains=üll", {"p2"}),
    (r"family=van\,der", {"p3"}),
    ("family=van,chalmers", {"p1", "p3"}),
    ("name=peter&name=james", {"p1"}),
    ("name=peter&name=zoe", set()),
    ("name:missing=true", {"p4"}),
    ("name:missing=false", {"p1", "p2", "p3"}),
    ("address-city=pleasant", {"p1"}),
    # token (search.html#token)
    ("gender=male", {"p1"}),
    ("gender=female,unknown", {"p2", "p3", "p4"}),
    ("gender:not=male", {"p2", "p3", "p4"}),
    ("gender:not=male,female", {"p4"}),
    ("identifier=12345", {"p1"}),
    ("identifier=http://ids|12345", {"p1"}),
    ("identifier=http://ids|", {"p1", "p2"}),
    ("identifier=|12345", set()),
    ("identifier=http://other|12345", set()),
    ("identifier:text=medical", {"p1"}),
    ("identifier:text=record", {"p1"}),
    ("identifier:text=ecord", set()),
    ("identifier:missing=true", {"p3", "p4"}),
    ("telecom=555-1234", {"p1"}),
    ("telecom=phone|555-1234", {"p1"}),
    ("phone=555-1234", {"p1"}),
    ("email=peter@example.org", {"p1"}),
    (r"telecom=555\|999", {"p3"}),
    ("active=true", {"p1"}),
    ("active=false", {"p2"}),
    ("deceased=true", {"p2"}),
    ("deceased=false", {"p1", "p3", "p4"}),
    ("_tag=http://tags|vip", {"p1"}),
    ("_profile=http://example.org/StructureDefinition/my-patient", {"p1"}),
    ("_source=http://source.org/feed#1", {"p1"}),
    # date (search.html#date, #prefix): p1 1974-12-25, p2 1980-03, p3 2000
    ("birthdate=1974-12-25", {"p1"}),
    ("birthdate=1974", {"p1"}),
    ("birthdate=1974-12", {"p1"}),
    ("birthdate=eq1980", {"p2"}),
    ("birthdate=1980-03-15", set()),
    ("birthdate=ne1974", {"p2", "p3"}),
    ("birthdate=gt1975", {"p2", "p3"}),
    ("birthdate=lt1980", {"p1"}),
    ("birthdate=ge1980-03", {"p2", "p3"}),
    ("birthdate=le1980-03", {"p1", "p2"}),
    ("birthdate=sa1980", {"p3"}),
    ("birthdate=eb1980", {"p1"}),
    ("birthdate=gt2000-06", {"p3"}),
    ("birthdate=lt2000-06", {"p1", "p2", "p3"}),
    ("birthdate=ap1975", {"p1", "p2"}),
    ("birthdate=1974-12-25T10:00:00Z", set()),
    ("birthdate=gt1974-12-25T10:00:00Z", {"p1", "p2", "p3"}),
    ("birthdate=1974,2000", {"p1", "p3"}),
    ("birthdate=ge1974&birthdate=lt1990", {"p1", "p2"}),
    ("birthdate:missing=true", {"p4"}),
    # reference (search.html#reference)
    ("organization=o1", {"p1"}),
    ("organization=Organization/o1", {"p1"}),
    ("organization:Organization=o2", {"p2"}),
    ("general-practitioner=http://other.org/fhir/Practitioner/x9", {"p1"}),
    ("general-practitioner=Practitioner/pr1", {"p2"}),
    ("general-practitioner=Practitioner/pr1/_history/3", {"p2"}),
    ("general-practitioner=Practitioner/pr1/_history/4", set()),
    ("general-practitioner:PractitionerRole=r1", {"p3"}),
    ("general-practitioner:identifier=http://npi|999", {"p4"}),
    ("general-practitioner:missing=true", set()),
    ("general-practitioner:missing=false", {"p1", "p2", "p3", "p4"}),
    # resource row (search.html#all)
    ("_id=p1,p3", {"p1", "p3"}),
    ("_id:not=p1", {"p2", "p3", "p4"}),
    ("_lastUpdated=2024-01-10", {"p1"}),
    ("_lastUpdated=gt2024-02", {"p4"}),
    ("_lastUpdated=ge2024-02", {"p2", "p3", "p4"}),
    ("_lastUpdated=lt2024-02-01", {"p1"}),
    ("_lastUpdated=le2024-02-01T00:00:00Z", {"p1", "p2"}),
    ("_lastUpdated=sa2024-12-31", {"p4"}),
    ("_text=chalmers", {"p1"}),
    # unknown parameters are ignored
    ("nope=1&gender=male", {"p1"}),
]

OBSERVATIONS = [
    ("code=29463-7", {"o1", "o3", "o6"}),
    ("code=http://loinc.org|29463-7", {"o1", "o3", "o6"}),
    ("code=http://loinc.org|", {"o1", "o2", "o3", "o6"}),
    ("code=http://snomed.info/sct|271649006", {"o5"}),
    ("code=29463-7,271649006", {"o1", "o3", "o5", "o6"}),
    ("code:not=29463-7", {"o2", "o4", "o5"}),
    ("code:text=weight", {"o1"}),
    ("code:text=glucose", {"o4"}),
    ("code:text=body", {"o1"}),
    ("status=final", {"o1", "o3", "o4", "o6"}),
    ("status=final&code=29463-7", {"o1", "o3", "o6"}),
    ("value-concept=http://snomed.info/sct|373066001", {"o5"}),
    # references and where(resolve() is Patient)
    ("subject=Patient/p1", {"o1", "o4", "o6"}),
    ("subject=http://example.org/fhir/Patient/p1", {"o4"}),
    ("subject=Patient/p2/_history/2", {"o3"}),
    ("subject:Group=g1", {"o2"}),
    ("subject=g1", {"o2"}),
    ("patient=p1", {"o1", "o4", "o6"}),
    ("patient=Patient/p2", {"o3"}),
    ("patient=g1", set()),
    # dates: o1 03-15T10:30Z, o2 March period, o3 2023, o4 03-15, o5 from 03-10 (open), o6 03-15T10:30Z
    ("date=2024-03-15", {"o1", "o4", "o6"}),
    ("date=2024-03", {"o1", "o2", "o4", "o6"}),
    ("date=2024-03-15T10:30:00Z", {"o1", "o6"}),
    ("date=2024-03-15T10:30Z", {"o1", "o6"}),
    ("date=2024-03-15T12:30:00+02:00", {"o1", "o6"}),
    ("date=gt2024-03-15", {"o2", "o5"}),
    ("date=lt2024", {"o3"}),
    ("date=ge2024-03-15", {"o1", "o2", "o4", "o5", "o6"}),
    ("date=le2024-03-10", {"o2", "o3"}),
    ("date=sa2024-03-09", {"o1", "o4", "o5", "o6"}),
    ("date=eb2024-03-10", {"o3"}),
    ("date=ne2024-03-15", {"o2", "o3", "o5"}),
    ("date:missing=true", set()),
    # quantities: o1 185, o2 120.5, o3 70.0 kg, o4 <5 mg, o6 185.0
    ("value-quantity=185", {"o1", "o6"}),
    ("value-quantity=185.0", {"o6"}),
    ("value-quantity=185|http://unitsofmeasure.org|[lb_av]", {"o1", "o6"}),
    ("value-quantity=185||lbs", {"o1", "o6"}),
    ("value-quantity=185||kg", set()),
    ("value-quantity=gt100", {"o1", "o2", "o6"}),
    ("value-quantity=lt10", {"o4"}),
    ("value-quantity=lt4", {"o4"}),
    ("value-quantity=le70", {"o3", "o4"}),
    ("value-quantity=ge120.5", {"o1", "o2", "o6"}),
    ("value-quantity=70|http://unitsofmeasure.org|kg", {"o3"}),
    ("value-quantity=sa100", {"o1", "o2", "o6"}),
    ("value-quantity=eb100", {"o3", "o4"}),
    ("value-quantity=ap120", {"o2"}),
    ("value-quantity=ne185", {"o2", "o3", "o4"}),
    ("value-quantity=5.4|http://unitsofmeasure.org|mg", set()),
    ("value-quantity:missing=true", {"o5"}),
]

OTHERS = [
    # number (search.html#number): ra1 0.35, ra2 Range 0.2-0.4, ra3 100
    ("RiskAssessment", "probability=0.35", {"ra1"}),
    ("RiskAssessment", "probability=0.3", set()),
    ("RiskAssessment", "probability=gt0.3", {"ra1", "ra2", "ra3"}),
    ("RiskAssessment", "probability=lt0.3", {"ra2"}),
    ("RiskAssessment", "probability=1e2", {"ra3"}),
    ("RiskAssessment", "probability=100", {"ra3"}),
    ("RiskAssessment", "probability=sa0.5", {"ra3"}),
    ("RiskAssessment", "probability=eb0.5", {"ra1", "ra2"}),
    ("RiskAssessment", "probability=ge0.35", {"ra1", "ra2", "ra3"}),
    ("RiskAssessment", "probability=le0.2", {"ra2"}),
    ("RiskAssessment", "probability=ap0.36", {"ra1", "ra2"}),
    ("RiskAssessment", "probability=0.35,100", {"ra1", "ra3"}),
    ("RiskAssessment", "probability:missing=false", {"ra1", "ra2", "ra3"}),
    # uri (search.html#uri)
    ("ValueSet", "url=http://acme.org/fhir/ValueSet/123", {"vs1"}),
    ("ValueSet", "url=http://ACME.org/fhir/ValueSet/123", set()),
    ("ValueSet", "url:below=http://acme.org/fhir", {"vs1", "vs2", "vs5"}),
    ("ValueSet", "url:below=http://acme.org/fhir/ValueSet", {"vs1", "vs2"}),
    ("ValueSet", "url:above=http://acme.org/fhir/ValueSet/123/_history/5", {"vs1", "vs5"}),
    ("ValueSet", "url:missing=false", {"vs1", "vs2", "vs3", "vs4", "vs5"}),
    # canonical references (search.html#versions)
    ("QuestionnaireResponse", "questionnaire=http://x.org/Questionnaire/q1", {"qr1", "qr2"}),
    ("QuestionnaireResponse", "questionnaire=http://x.org/Questionnaire/q1|2.0", {"qr1"}),
    ("QuestionnaireResponse", "questionnaire=http://x.org/Questionnaire/q1|3.0", set()),
    ("QuestionnaireResponse", "questionnaire=Questionnaire/q1", {"qr1", "qr2"}),
    # Period (search.html#date): e1 2024-01-01 08:00-12:00Z, e2 from 2024-01-05 (open)
    ("Encounter", "date=2024-01-01", {"e1"}),
    ("Encounter", "date=2024-01", {"e1"}),
    ("Encounter", "date=gt2024-06", {"e2"}),
    ("Encounter", "date=lt2024-01-02", {"e1"}),
    ("Encounter", "date=2024-01-01T10:00:00Z", set()),
    ("Encounter", "date=ap2024-01-01T10:00:00Z", {"e1", "e2"}),  # now 2025-01-01: +/- 36.5 days
]


@pytest.mark.parametrize(("query", "expected"), PATIENTS, ids=[p[0] for p in PATIENTS])
def test_patient_search(conn: psycopg.Connection, query: str, expected: set[str]) -> None:
    """search.html: string/token/date/reference/_id/_lastUpdated/_text forms on Patient."""
    assert search(conn, "Patient", q(query)) == expected


@pytest.mark.parametrize(("query", "expected"), OBSERVATIONS, ids=[o[0] for o in OBSERVATIONS])
def test_observation_search(conn: psycopg.Connection, query: str, expected: set[str]) -> None:
    """search.html: token/reference/date prefixes/quantity forms on Observation."""
    assert search(conn, "Observation", q(query)) == expected


@pytest.mark.parametrize(("rtype", "query", "expected"), OTHERS, ids=[f"{o[0]}?{o[1]}" for o in OTHERS])
def test_other_search(conn: psycopg.Connection, rtype: str, query: str, expected: set[str]) -> None:
    """search.html#number, #uri, canonical references and Periods."""
    assert search(conn, rtype, q(query)) == expected


def test_base_url_makes_own_absolute_references_local(conn: psycopg.Connection) -> None:
    """search.html#reference: an absolute URL on this server's base is a local reference."""
    got = search(
        conn, "Observation", q("subject=http://example.org/fhir/Patient/p1"), base_url="http://example.org/fhir"
    )
    assert got == {"o1", "o4", "o6"}


@pytest.mark.parametrize(
    ("query", "default", "other"),
    [
        ("family=chalmers", {"p1"}, {"p1", "p4", "p9"}),
        ("identifier=http://ids|12345", {"p1"}, {"p1", "p4", "p9"}),
        ("gender=male&birthdate=1974-12-25", {"p1"}, {"p1", "p4", "p9"}),
        ("gender=unknown", {"p4"}, set()),
        ("_id=p9", set(), {"p9"}),
    ],
)
def test_tenant_isolation(conn: psycopg.Connection, query: str, default: set[str], other: set[str]) -> None:
    """search.html#search + security.html (multi-tenancy): another tenant's index rows never match."""
    assert search(conn, "Patient", q(query), tenant="default") == default
    assert search(conn, "Patient", q(query), tenant="other") == other


def test_deleted_resources_are_not_found(conn: psycopg.Connection) -> None:
    """http.html#delete: a deleted resource (p5, a male Chalmers) is not a search result."""
    assert "p5" not in search(conn, "Patient", q("family=chalmers"))
    # the write path stores a deletion without index rows; the resource row stays, flagged
    assert conn.execute("SELECT count(*) FROM idx_string WHERE resource_id = 'p5'").fetchone()[0] == 0
    assert conn.execute("SELECT deleted FROM resource WHERE id = 'p5'").fetchone()[0] is True


@pytest.mark.parametrize(
    "query",
    [
        [("name", "hopital eee")],
        [("name", LONG_NAME)],
        [("name:exact", LONG_NAME)],
        [("name:contains", "eeee")],
        [("identifier", f"http://ids|{LONG_ID}")],
        [("identifier", LONG_ID)],
        [("endpoint", "http://x.org/" + "e" * 3000)],
    ],
    ids=["prefix", "full-value", "exact", "contains", "token", "token-code", "reference-url"],
)
def test_values_beyond_index_limits(conn: psycopg.Connection, query: list[tuple[str, str]]) -> None:
    """search.html#string/#token/#reference: values beyond the btree limit are cut but still found."""
    assert search(conn, "Organization", query) == {"org-long"}
