"""Chaining, _has and :of-type in fhir_server.search.compile: SQL shape, binds, tenant, errors."""

from __future__ import annotations

import re

import pytest

from fhir_server.errors import InvalidSearch
from fhir_server.search.compile import SearchWhere, build_where
from fhir_server.search.extract import extract_index_rows

PLACEHOLDER = re.compile(r"%\((\w+)\)s")
TABLE_ALIAS = re.compile(r"(?:FROM|JOIN) (\w+) (\w+)")
V2 = "http://terminology.hl7.org/CodeSystem/v2-0203"


def check(w: SearchWhere) -> None:
    """Every placeholder is bound, and every table a nested query touches carries the tenant."""
    assert set(PLACEHOLDER.findall(w.sql)) - {"tenant"} == set(w.binds)
    assert "%" not in PLACEHOLDER.sub("", w.sql)
    aliases = TABLE_ALIAS.findall(w.sql)
    assert aliases
    for _table, alias in aliases:
        assert f"{alias}.tenant_id = %(tenant)s" in w.sql, alias


def test_chain_one_level() -> None:
    """search.html#chaining: "subject.name=peter" -- every target of subject that has a name."""
    w = build_where("Observation", [("subject.name", "peter")])
    check(w)
    # uncorrelated: the matching targets first, then the links to them (bench/README.md)
    assert w.sql.startswith("(r.resource_type, r.id) IN (SELECT l1.resource_type, l1.resource_id FROM idx_reference l1")
    assert "NOT r1.deleted" in w.sql
    assert "(l1.target_type, l1.target_id) IN (SELECT r1.resource_type, r1.id FROM resource r1" in w.sql
    assert "t.resource_type = r1.resource_type AND t.resource_id = r1.id" in w.sql
    targets = next(v for v in w.binds.values() if isinstance(v, list) and len(v) == 2)
    assert sorted(targets) == ["Location", "Patient"]  # Group and Device have no `name`
    assert "peter%" in w.binds.values()


def test_chain_type_modifier_and_levels() -> None:
    """search.html#chaining: "subject:Patient.name=peter" and several levels."""
    w = build_where("Observation", [("subject:Patient.name", "peter")])
    check(w)
    assert ["Patient"] in w.binds.values()
    w = build_where("Encounter", [("subject:Patient.organization.name", "acme")])
    check(w)
    assert "FROM resource r2" in w.sql and "(r1.resource_type, r1.id) IN (SELECT l2.resource_type, l2.resource_id" in w.sql
    w = build_where("Observation", [("encounter.subject.identifier", "http://ids|1")])
    check(w)
    assert {"encounter", "subject", "identifier", "http://ids", "1"} <= {
        v for v in w.binds.values() if isinstance(v, str)
    }


def test_chain_final_id_modifiers_and_or() -> None:
    """search.html#chaining: the last parameter may be _id and keeps its modifiers; commas OR."""
    w = build_where("Observation", [("subject:Patient._id", "a,b")])
    check(w)
    assert "r1.id = ANY(" in w.sql and ["a", "b"] in w.binds.values()
    w = build_where("Observation", [("subject:Patient.gender:not", "male")])
    check(w)
    assert "NOT EXISTS (SELECT 1 FROM idx_token t" in w.sql
    w = build_where("Observation", [("subject:Patient.birthdate", "ge1970,lt1960")])
    check(w)
    assert w.sql.count("EXISTS") == 1 and " OR " in w.sql  # the date EXISTS; the chain is an IN


def test_chain_local_references_only() -> None:
    """Only references to this server are followed; base_url makes its absolute URLs local."""
    assert "l1.url IS NULL" in build_where("Observation", [("subject.name", "x")]).sql
    w = build_where("Observation", [("subject.name", "x")], base_url="http://s/fhir")
    check(w)
    assert "http://s/fhir/" in w.binds.values()


def test_has_shapes() -> None:
    """search.html#has: "_has:Observation:patient:code=1234-5" and the nested AuditEvent form."""
    w = build_where("Patient", [("_has:Observation:patient:code", "1234-5")])
    check(w)
    assert "l1.resource_id IN (SELECT r1.id FROM resource r1" in w.sql
    assert "(r.resource_type, r.id) IN (SELECT l1.target_type, l1.target_id FROM idx_reference l1" in w.sql
    assert {"Observation", "patient", "code", "1234-5"} <= set(w.binds.values())
    w = build_where("Patient", [("_has:Observation:patient:_has:AuditEvent:entity:agent", "Practitioner/1")])
    check(w)
    assert "(r1.resource_type, r1.id) IN (SELECT l2.target_type, l2.target_id" in w.sql
    assert "NOT r2.deleted" in w.sql


def test_unique_aliases_and_binds_across_parameters() -> None:
    w = build_where(
        "Patient",
        [("_has:Observation:patient:code", "1"), ("organization.name", "a"), ("name", "x")],
    )
    check(w)
    assert "FROM resource r1" in w.sql and "FROM resource r2" in w.sql


def test_values_are_binds() -> None:
    evil = "x'); DROP TABLE resource; --"
    for rtype, name in [("Observation", "subject.name"), ("Patient", "_has:Observation:patient:code")]:
        w = build_where(rtype, [(name, evil)])
        check(w)
        assert "DROP" not in w.sql


@pytest.mark.parametrize(
    ("rtype", "name", "fragment"),
    [
        ("Observation", "subject.foo", "foo"),  # no target of subject has `foo`
        ("Observation", "subject:Patient.foo", "foo"),
        ("Observation", "subject:Medication.name", "Medication"),
        ("Observation", "subject:Nope.name", "Nope"),
        ("Observation", "code.name", "code"),  # not a reference parameter
        ("Observation", "nope.name", "nope"),
        ("Observation", "subject:Patient.organization.nope", "nope"),
        ("Patient", "_has:Nope:patient:code", "Nope"),
        ("Patient", "_has:Observation:nope:code", "nope"),
        ("Patient", "_has:Observation:code:code", "code"),
        ("Patient", "_has:Observation:patient:nope", "nope"),
        ("Patient", "_has:Observation:patient", "_has"),
        ("Patient", "_has", "_has"),
        ("Patient", "_has:Encounter:service-provider:_id", "Encounter"),  # refers to Organization
        ("Patient", "_has:Observation:patient:_has:AuditEvent:nope:agent", "nope"),
        ("Patient", "identifier:of-type", "of-type"),
    ],
)
def test_invalid(rtype: str, name: str, fragment: str) -> None:
    """search.html#errors: unknown links, types and parameters in chains and _has are 400s."""
    value = "MR|12345" if name.endswith("of-type") else "x"
    with pytest.raises(InvalidSearch) as exc:
        build_where(rtype, [(name, value)])
    assert fragment in str(exc.value)


def test_unsupported_final_parameter_is_ignored_with_a_warning() -> None:
    w = build_where("Observation", [("subject:Patient._query", "x")])
    assert w.sql == "TRUE" and w.warnings
    w = build_where("Observation", [("subject:Patient._content", "x")])  # full text at the end of a chain
    assert "idx_text" in w.sql and not w.warnings


def test_of_type_extraction_and_query() -> None:
    """search.html#token: identifier:of-type=http://terminology.hl7.org/CodeSystem/v2-0203|MR|12345."""
    patient = {
        "resourceType": "Patient",
        "id": "p",
        "identifier": [
            {"system": "http://h", "value": "12345", "type": {"coding": [{"system": V2, "code": "MR"}], "text": "MRN"}},
            {"system": "http://h", "value": "9"},
        ],
    }
    rows = extract_index_rows(patient).token
    assert ("identifier:of-type", V2, "MR|12345", None) in rows
    assert [r for r in rows if r[0] == "identifier:of-type"] == [("identifier:of-type", V2, "MR|12345", None)]
    w = build_where("Patient", [("identifier:of-type", f"{V2}|MR|12345,{V2}|DL|1")])
    assert {"identifier:of-type", V2, "MR|12345", "DL|1"} <= set(w.binds.values())
    assert w.sql.count("EXISTS") == 1
