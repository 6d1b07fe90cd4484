"""Chaining, reverse chaining (_has), token :of-type and composites against a real PostgreSQL.

Like ``test_search_sql``: a fresh database on the session PostgreSQL, migrated to head
by the real migrations, resources stored by the server's write statement under
tenant 'default' and (altered, so that they would match) under tenant 'other'.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from fhir_server.search.compile import build_where
from fhir_server.search.extract import extract_index_rows
from tests.integration.searchdb import insert_indexed, seeded_database

NOW = datetime(2025, 1, 1, tzinfo=UTC)
BASE = "http://example.org/fhir"
V2 = "http://terminology.hl7.org/CodeSystem/v2-0203"
LOINC = "http://loinc.org"
SCT = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"


def _obs(oid: str, subject: str, code: str, **extra: Any) -> dict:
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "subject": {"reference": subject},
        **extra,
    }


def _mr(type_code: str, value: str) -> dict:
    return {"system": "http://hospital", "value": value, "type": {"coding": [{"system": V2, "code": type_code}]}}


ORG1 = {"resourceType": "Organization", "id": "org1", "name": "Acme Health"}
ORG2 = {"resourceType": "Organization", "id": "org2", "name": "Beta Clinic"}
PA1 = {
    "resourceType": "Patient",
    "id": "pa1",
    "name": [{"family": "Chalmers", "given": ["Peter"]}],
    "birthDate": "1974-12-25",
    "identifier": [_mr("MR", "12345")],
    "managingOrganization": {"reference": "Organization/org1"},
}
PA2 = {
    "resourceType": "Patient",
    "id": "pa2",
    "name": [{"family": "Smith", "given": ["Anna"]}],
    "birthDate": "1990-01-01",
    "identifier": [_mr("DL", "67890")],
    "managingOrganization": {"reference": "Organization/org2"},
}
PA3_DELETED = {"resourceType": "Patient", "id": "pa3", "name": [{"given": ["Peter"]}]}
LOC1 = {"resourceType": "Location", "id": "loc1", "name": "Peterborough ward"}
PRAC1 = {"resourceType": "Practitioner", "id": "prac1"}
ENC1 = {
    "resourceType": "Encounter",
    "id": "enc1",
    "status": "finished",
    "class": {"code": "AMB"},
    "subject": {"reference": "Patient/pa1"},
}
ENC2 = {
    "resourceType": "Encounter",
    "id": "enc2",
    "status": "finished",
    "class": {"code": "AMB"},
    "subject": {"reference": "Patient/pa2"},
}
OB1 = _obs("ob1", "Patient/pa1", "1234-5", encounter={"reference": "Encounter/enc1"})
OB2 = _obs(
    "ob2",
    "Patient/pa2",
    "8480-6",
    encounter={"reference": "Encounter/enc2"},
    valueQuantity={"value": 120, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"},
)
OB3 = _obs("ob3", "Patient/pa3", "1234-5")  # its subject is deleted
OB4 = _obs("ob4", "Location/loc1", "1234-5", valueCodeableConcept={"coding": [{"system": SCT, "code": "373066001"}]})
OB5 = _obs("ob5", BASE + "/Patient/pa1", "9999-9")  # absolute, this server's base
OB6 = _obs("ob6", "http://elsewhere.org/fhir/Patient/pa1", "6666-6")  # another server
OB9_DELETED = _obs("ob9", "Patient/pa2", "4444-4")
AE1 = {
    "resourceType": "AuditEvent",
    "id": "ae1",
    "type": {"code": "rest"},
    "recorded": "2024-01-01T00:00:00Z",
    "agent": [{"who": {"reference": "Practitioner/prac1"}, "requestor": True}],
    "source": {"observer": {"reference": "Device/d1"}},
    "entity": [{"what": {"reference": "Observation/ob1"}}],
}


def _bp(oid: str, systolic: int, diastolic: int) -> dict:
    """A blood pressure (search.html#composite: component-code-value-quantity)."""

    def comp(code: str, value: int) -> dict:
        return {
            "code": {"coding": [{"system": LOINC, "code": code}]},
            "valueQuantity": {"value": value, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"},
        }

    return _obs(oid, "Device/d1", "85354-9", component=[comp("8480-6", systolic), comp("8462-4", diastolic)])


OB10 = _obs(
    "ob10", "Device/d1", "2823-3", valueQuantity={"value": 5.5, "unit": "mmol/L", "system": UCUM, "code": "mmol/L"}
)
OB11 = _bp("ob11", 107, 60)
OB12 = _bp("ob12", 150, 95)
OB13 = _obs("ob13", "Device/d1", "11111-1", valueDateTime="2024-03-20T10:00:00+05:30")
OB14 = _obs("ob14", "Device/d1", "22222-2", valueString="Positive")
DR1 = {
    "resourceType": "DiagnosticReport",
    "id": "dr1",
    "status": "final",
    "code": {"text": "lab"},
    "result": [{"reference": "Observation/ob10"}],
}
GRP1 = {
    "resourceType": "Group",
    "id": "grp1",
    "type": "person",
    "actual": True,
    "characteristic": [
        {
            "code": {"coding": [{"code": "gender"}]},
            "valueCodeableConcept": {"coding": [{"code": "mixed"}]},
            "exclude": False,
        }
    ],
}
DEFAULT = [
    ORG1,
    ORG2,
    PA1,
    PA2,
    LOC1,
    PRAC1,
    ENC1,
    ENC2,
    OB1,
    OB2,
    OB3,
    OB4,
    OB5,
    OB6,
    AE1,
    OB10,
    OB11,
    OB12,
    OB13,
    OB14,
    DR1,
    GRP1,
]
DELETED = [PA3_DELETED, OB9_DELETED]


def other_tenant_resources() -> list[dict]:
    """Tenant 'other': same ids, altered so that every query below would also match pa2/ob2 there."""
    out = {r["id"]: copy.deepcopy(r) for r in DEFAULT}
    out["org2"]["name"] = "Acme Other"
    out["pa2"]["name"] = [{"given": ["Peter"]}]
    out["pa2"]["identifier"] = [_mr("MR", "12345")]
    out["ob2"]["code"]["coding"][0]["code"] = "1234-5"
    out["ob7"] = _obs("ob7", "Patient/pa2", "9999-9")
    out["ob8"] = _obs("ob8", "Patient/pa2", "4444-4")
    out["ae2"] = {**copy.deepcopy(AE1), "id": "ae2", "entity": [{"what": {"reference": "Observation/ob2"}}]}
    out["pa3"] = copy.deepcopy(PA3_DELETED)  # alive in 'other'
    out["ob11"]["component"][0]["valueQuantity"]["value"] = 200
    return list(out.values())


@pytest.fixture(scope="module")
def conn(pg_admin_url: str) -> Iterator[psycopg.Connection]:
    with seeded_database(pg_admin_url) as c:
        for resource in DEFAULT:
            insert_indexed(c, "default", resource)
        for resource in DELETED:
            insert_indexed(c, "default", resource, deleted=True)
        for resource in other_tenant_resources():
            insert_indexed(c, "other", resource)
        yield c


def search(conn: psycopg.Connection, rtype: str, query: str, tenant: str = "default", **kwargs: Any) -> set[str]:
    params = [tuple(part.split("=", 1)) for part in query.split("&")]
    where = build_where(rtype, params, now=NOW, **kwargs)  # type: ignore[arg-type]
    sql = (
        "SELECT r.id FROM resource r WHERE r.tenant_id = %(tenant)s AND r.resource_type = %(rtype)s"
        f" AND NOT r.deleted AND ({where.sql})"
    )
    return {row[0] for row in conn.execute(sql, {**where.binds, "tenant": tenant, "rtype": rtype}).fetchall()}


CHAINS = [
    # search.html#chaining: "subject.name=peter" -- any target type of subject that has `name`
    ("subject.name=peter", {"ob1", "ob4"}),
    ("subject:Patient.name=peter", {"ob1"}),
    ("subject:Location.name=peter", {"ob4"}),
    ("subject.name=peter,anna", {"ob1", "ob2", "ob4"}),  # OR on the final values
    ("subject.name=peter&subject.name=chalmers", {"ob1"}),
    ("subject:Patient.name:exact=Peter", {"ob1"}),
    ("subject:Patient.name:exact=peter", set()),
    ("subject:Patient.birthdate=lt1980", {"ob1"}),
    ("subject:Patient.organization.name=acme", {"ob1"}),  # several levels
    ("encounter.subject.identifier=http://hospital|12345", {"ob1"}),
    ("encounter.subject:Patient.name=anna", {"ob2"}),
    ("subject._id=pa1,pa2", {"ob1", "ob2"}),
    ("subject:Patient._id=pa3", set()),  # deleted targets never match
    ("subject.name=zzz", set()),
    (f"subject:Patient.identifier:of-type={V2}|MR|12345", {"ob1"}),
    ("subject:Patient._has:Encounter:subject:_id=enc2", {"ob2"}),
]
HAS = [
    # search.html#has: "_has:Observation:patient:code=1234-5"
    ("_has:Observation:patient:code=1234-5", {"pa1"}),
    ("_has:Observation:patient:code=1234-5,8480-6", {"pa1", "pa2"}),
    ("_has:Observation:subject:code=8480-6", {"pa2"}),
    ("_has:Observation:patient:value-quantity=gt100", {"pa2"}),
    ("_has:Observation:patient:code=4444-4", set()),  # the only source is deleted
    ("_has:Observation:patient:code=6666-6", set()),  # a reference to another server
    ("_has:Observation:patient:code=9999-9", set()),  # absolute, but no base_url known
    # nested: "_has:Observation:patient:_has:AuditEvent:entity:agent=..."
    ("_has:Observation:patient:_has:AuditEvent:entity:agent=Practitioner/prac1", {"pa1"}),
    ("_has:Encounter:subject:_id=enc2", {"pa2"}),
    ("_has:Observation:patient:subject.name=anna", {"pa2"}),
    ("organization.name=acme", {"pa1"}),
    (f"identifier:of-type={V2}|MR|12345", {"pa1"}),
    (f"identifier:of-type={V2}|DL|67890", {"pa2"}),
    (f"identifier:of-type={V2}|MR|67890", set()),
    ("identifier:of-type=http://other|MR|12345", set()),
]


@pytest.mark.parametrize(("query", "expected"), CHAINS)
def test_chained(conn: psycopg.Connection, query: str, expected: set[str]) -> None:
    """search.html#chaining on Observation."""
    assert search(conn, "Observation", query) == expected


@pytest.mark.parametrize(("query", "expected"), HAS)
def test_reverse_chained_and_of_type(conn: psycopg.Connection, query: str, expected: set[str]) -> None:
    """search.html#has and search.html#token (:of-type) on Patient."""
    assert search(conn, "Patient", query) == expected


def test_own_absolute_references_are_followed_with_base_url(conn: psycopg.Connection) -> None:
    """search.html#chaining: an absolute reference to this server's base is a local reference."""
    assert search(conn, "Observation", "subject:Patient.name=peter", base_url=BASE) == {"ob1", "ob5"}
    assert search(conn, "Patient", "_has:Observation:patient:code=9999-9", base_url=BASE + "/") == {"pa1"}
    assert search(conn, "Observation", "subject:Patient.name=peter", base_url="http://elsewhere.org/fhir") == {
        "ob1",
        "ob6",
    }


@pytest.mark.parametrize(
    ("rtype", "query", "default", "other"),
    [
        ("Observation", "subject:Patient.name=peter", {"ob1"}, {"ob1", "ob2", "ob3", "ob7", "ob8"}),
        ("Observation", "subject:Patient.organization.name=acme", {"ob1"}, {"ob1", "ob2", "ob7", "ob8"}),
        ("Observation", f"subject:Patient.identifier:of-type={V2}|MR|12345", {"ob1"}, {"ob1", "ob2", "ob7", "ob8"}),
        ("Observation", "subject:Patient._id=pa3", set(), {"ob3"}),
        ("Patient", "_has:Observation:patient:code=1234-5", {"pa1"}, {"pa1", "pa2", "pa3"}),
        ("Patient", "_has:Observation:patient:code=9999-9", set(), {"pa2"}),
        ("Patient", "_has:Observation:patient:_has:AuditEvent:entity:agent=prac1", {"pa1"}, {"pa1", "pa2"}),
        ("Patient", "organization.name=acme", {"pa1"}, {"pa1", "pa2"}),
    ],
)
def test_tenant_isolation(conn: psycopg.Connection, rtype: str, query: str, default: set[str], other: set[str]) -> None:
    """Data of another tenant never matches through a chain or _has, at any level."""
    assert search(conn, rtype, query) == default
    assert search(conn, rtype, query, tenant="other") == other


COMPOSITES = [
    # search.html#composite
    ("Observation", f"component-code-value-quantity={LOINC}|8480-6$gt100", {"ob11", "ob12"}),
    ("Observation", f"component-code-value-quantity={LOINC}|8480-6$gt120", {"ob12"}),
    ("Observation", f"component-code-value-quantity={LOINC}|8462-4$gt100", set()),  # pairs stay within a component
    ("Observation", f"component-code-value-quantity={LOINC}|8462-4$lt61", {"ob11"}),
    ("Observation", f"component-code-value-quantity={LOINC}|8480-6$lt60", set()),
    ("Observation", "component-code-value-quantity=8480-6$107||mm[Hg]", {"ob11"}),
    ("Observation", f"code-value-quantity={LOINC}|2823-3$gt5.4|{UCUM}|mmol/L", {"ob10"}),
    ("Observation", f"code-value-quantity={LOINC}|2823-3$gt5.4|{UCUM}|mg", set()),
    ("Observation", f"code-value-quantity={LOINC}|8462-4$gt10", set()),  # a component is not the code
    ("Observation", f"combo-code-value-quantity={LOINC}|2823-3$gt5,{LOINC}|8480-6$gt140", {"ob10", "ob12"}),
    ("Observation", f"code-value-concept={LOINC}|1234-5${SCT}|373066001", {"ob4"}),
    ("Observation", "code-value-concept=1234-5$373066001", {"ob4"}),
    ("Observation", "code-value-concept=1234-5$|373066001", set()),
    ("Observation", f"code-value-quantity={LOINC}|2823-3$gt5.4&code-value-quantity={LOINC}|2823-3$lt6", {"ob10"}),
    # "DiagnosticReport?result.code-value-quantity=http://loinc.org|2823-3$gt5.4|http://unitsofmeasure.org|mmol/L"
    ("DiagnosticReport", f"result.code-value-quantity={LOINC}|2823-3$gt5.4|{UCUM}|mmol/L", {"dr1"}),
    ("DiagnosticReport", f"result.code-value-quantity={LOINC}|2823-3$gt6", set()),
    ("Observation", f"code-value-date={LOINC}|11111-1$2024-03", {"ob13"}),
    ("Observation", f"code-value-date={LOINC}|11111-1$gt2024-03-31", set()),
    ("Observation", "code-value-date=11111-1$ge2024-03-15", {"ob13"}),  # 20 March is after the 15th
    ("Observation", f"code-value-date={LOINC}|2823-3$2024-03", set()),  # another code
    ("Observation", "code-value-string=22222-2$posi", {"ob14"}),  # case-insensitive starts-with
    ("Observation", "code-value-string=22222-2$neg", set()),
    ("Group", "characteristic-value=gender$mixed", {"grp1"}),
    ("Group", "characteristic-value=gender$male", set()),
]


@pytest.mark.parametrize(("rtype", "query", "expected"), COMPOSITES)
def test_composite(conn: psycopg.Connection, rtype: str, query: str, expected: set[str]) -> None:
    """search.html#composite: both components must match the same stored pair."""
    assert search(conn, rtype, query) == expected


def test_composite_tenant_isolation(conn: psycopg.Connection) -> None:
    query = f"component-code-value-quantity={LOINC}|8480-6$gt160"
    assert search(conn, "Observation", query) == set()
    assert search(conn, "Observation", query, tenant="other") == {"ob11"}


def test_write_path_stores_composite_rows(conn: psycopg.Connection) -> None:
    """The repository's one-statement write inserts idx_composite rows (INDEX_TABLES)."""
    from fhir_server.storage import repository

    resource = _obs("wp1", "Device/d1", "wp-code", valueCodeableConcept={"coding": [{"code": "wp-value"}]})
    version = repository.StoredVersion("Observation", "wp1", 1, NOW, False, json.dumps(resource))
    conn.execute(*repository.create_statement("default", version, extract_index_rows(resource)))
    assert search(conn, "Observation", "code-value-concept=wp-code$wp-value") == {"wp1"}
    empty = {"resourceType": "Observation", "id": "wp2", "status": "final", "code": {"text": "none"}}
    version = repository.StoredVersion("Observation", "wp2", 1, NOW, False, json.dumps(empty))
    conn.execute(*repository.create_statement("default", version, extract_index_rows(empty)))
    assert search(conn, "Observation", "_id=wp2") == {"wp2"}
