"""Index-row extraction (fhir_server.search.extract) and the SearchParameter registry."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from fhir_server.search import fhirpath_compiler, fhirpath_fallback
from fhir_server.search.expressions import expression_for_type, split_top_level
from fhir_server.search.extract import extract_index_rows, plan_for_type
from fhir_server.search.fhirpath_model import get_model
from fhir_server.search.normalize import MAX_NORM_BYTES, normalize, normalize_for_index
from fhir_server.search.ranges import DATE_MAX, DATE_MIN, NEG_INF, POS_INF, date_range, decimal_range
from fhir_server.search.registry import DATA_FILE, SearchParamRegistry, get_registry, project_search_parameters

EXAMPLES = Path(__file__).resolve().parents[3] / "shared" / "data" / "fhir-r4" / "examples"


def example(name: str) -> dict:
    path = EXAMPLES / f"{name}.json"
    if not path.exists():
        pytest.skip(f"official example {name} not available")
    return json.loads(path.read_text())


def rows_for(rows: list[tuple], param: str) -> list[tuple]:
    return [r[1:] for r in rows if r[0] == param]


def dt(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# -- registry ------------------------------------------------------------------------------------
def test_registry_loads_packaged_definitions() -> None:
    """search.html#all + SearchParameter registry: the packaged file, never /work/shared."""
    reg = get_registry()
    assert reg is get_registry()
    assert DATA_FILE.is_file() and "shared" not in DATA_FILE.parts
    # the 1375 R4 parameters + the project's own (fhir_server/definitions/project/searchparameters)
    assert len(reg.params) == 1375 + len(project_search_parameters())
    assert reg.get("Medication", "rasa") is not None  # a project parameter, in every tenant
    name = reg.get("Patient", "name")
    assert name is not None and name.type == "string" and name.expression == "Patient.name"
    assert "exact" in name.modifier and "contains" in name.modifier
    subject = reg.get("Observation", "subject")
    assert subject is not None and subject.type == "reference" and "Patient" in subject.target
    date = reg.get("Observation", "date")
    assert date is not None and "sa" in date.comparator


def test_registry_resource_level_params_apply_to_every_type() -> None:
    """search.html#all: _id, _lastUpdated, _tag, _profile, _security, _source everywhere; _text on DomainResources."""
    reg = get_registry()
    for rtype in ("Patient", "Observation", "Bundle", "Binary"):
        params = reg.for_type(rtype)
        for code in ("_id", "_lastUpdated", "_tag", "_profile", "_security", "_source"):
            assert code in params, (rtype, code)
    assert "_text" in reg.for_type("Patient")
    assert "_text" not in reg.for_type("Bundle")
    assert reg.for_type("NotAType") == {}
    assert reg.get("Patient", "nope") is None


def test_registry_from_custom_list() -> None:
    """SearchParameter: base/code/type make a parameter available for its base types."""
    reg = SearchParamRegistry.load()
    assert reg.get("Encounter", "date").expression.startswith("AllergyIntolerance.recordedDate")  # type: ignore[union-attr]


# -- helpers ---------------------------------------------------------------------------------------
def test_normalize_case_and_accents() -> None:
    """search.html#string: matching is case- and accent-insensitive."""
    assert normalize("Bénédicte MÜLLER") == "benedicte muller"
    assert normalize("Straße") == "strasse"
    assert normalize("ﬁne") == "fine"  # NFKD compatibility
    long = "é" * 5000
    assert len(normalize_for_index(long).encode()) <= MAX_NORM_BYTES


@pytest.mark.parametrize(
    ("text", "low", "high"),
    [
        ("2024", dt(2024, 1, 1), dt(2024, 12, 31, 23, 59, 59, 999999)),
        ("2024-02", dt(2024, 2, 1), dt(2024, 2, 29, 23, 59, 59, 999999)),
        ("2024-03-10", dt(2024, 3, 10), dt(2024, 3, 10, 23, 59, 59, 999999)),
        ("2024-03-10T10:00", dt(2024, 3, 10, 10), dt(2024, 3, 10, 10, 0, 59, 999999)),
        ("2024-03-10T10:00:05Z", dt(2024, 3, 10, 10, 0, 5), dt(2024, 3, 10, 10, 0, 5, 999999)),
        ("2024-03-10T10:00:05+02:00", dt(2024, 3, 10, 8, 0, 5), dt(2024, 3, 10, 8, 0, 5, 999999)),
        ("2024-03-10T10:00:05", dt(2024, 3, 10, 10, 0, 5), dt(2024, 3, 10, 10, 0, 5, 999999)),  # no zone: UTC
        ("2024-03-10T10:00:05.25Z", dt(2024, 3, 10, 10, 0, 5, 250000), dt(2024, 3, 10, 10, 0, 5, 259999)),
    ],
)
def test_date_range_precision(text: str, low: datetime, high: datetime) -> None:
    """search.html#date: a date is the range its precision covers; high is inclusive."""
    assert date_range(text) == (low, high)


@pytest.mark.parametrize("bad", ["2024-13", "2024-02-30", "24-01-01", "2024-01-01T25:00:00Z", "today"])
def test_date_range_rejects_bad_dates(bad: str) -> None:
    """datatypes.html#dateTime: malformed values are not dates."""
    with pytest.raises(ValueError):
        date_range(bad)


def test_decimal_range_precision() -> None:
    """search.html#number: 100 is [99.5, 100.5), 100.0 is [99.95, 100.05)."""
    assert decimal_range(Decimal(100)) == (Decimal("99.5"), Decimal("100.5"))
    assert decimal_range(Decimal("100.0")) == (Decimal("99.95"), Decimal("100.05"))
    assert decimal_range(Decimal("1e2")) == (Decimal(50), Decimal(150))


def test_expression_for_type_keeps_own_branches() -> None:
    """SearchParameter.expression: shared params list one branch per base type."""
    names = frozenset(get_model().parents)
    expr = "Patient.telecom.where(system='phone') | Person.telecom.where(system='phone')"
    assert expression_for_type(expr, "Person", names) == "Person.telecom.where(system='phone')"
    assert expression_for_type("Resource.meta.tag", "Patient", names) == "Patient.meta.tag"
    assert expression_for_type("(Observation.value as Quantity)", "Patient", names) is None
    assert split_top_level("(a | b).c | d") == ["(a | b).c", "d"]


# -- official examples ---------------------------------------------------------------------------
def test_patient_example_rows() -> None:
    """search.html#string (HumanName parts), #token (Identifier), #date (birthDate as a day)."""
    rows = extract_index_rows(example("Patient-example"))
    assert ("chalmers", "Chalmers") in rows_for(rows.string, "family")
    assert ("windsor", "Windsor") in rows_for(rows.string, "family")
    assert {("peter", "Peter"), ("james", "James"), ("jim", "Jim")} <= set(rows_for(rows.string, "given"))
    assert ("chalmers", "Chalmers") in rows_for(rows.string, "name")
    assert ("pleasantville", "PleasantVille") in rows_for(rows.string, "address-city")
    assert rows_for(rows.token, "identifier") == [("urn:oid:1.2.36.146.595.217.0.1", "12345", None)]
    assert rows_for(rows.token, "gender") == [(None, "male", None)]
    assert rows_for(rows.token, "active") == [(None, "true", None)]
    assert ("phone", "(03) 5555 6473", None) in rows_for(rows.token, "phone")
    assert rows_for(rows.date, "birthdate") == [(dt(1974, 12, 25), dt(1974, 12, 25, 23, 59, 59, 999999))]
    assert rows_for(rows.reference, "organization") == [("Organization", "1", None, None)]
    # _id and _lastUpdated live on the resource row
    assert not [r for r in rows.token if r[0] == "_id"] and not [r for r in rows.date if r[0] == "_lastUpdated"]


def test_patient_accented_contact_name() -> None:
    """search.html#string: value_norm drops accents, value_exact keeps them."""
    rows = extract_index_rows(example("Patient-example"))
    # contact names are not Patient.name; the index only has what the expressions select
    assert not [r for r in rows.string if r[2] == "du Marché"]
    patient = {"resourceType": "Patient", "name": [{"family": "du Marché", "given": ["Bénédicte"]}]}
    rows = extract_index_rows(patient)
    assert ("du marche", "du Marché") in rows_for(rows.string, "family")
    assert ("benedicte", "Bénédicte") in rows_for(rows.string, "given")


def test_observation_value_quantity_example() -> None:
    """search.html#quantity: (Observation.value as Quantity) keeps system/code/unit and a precision range."""
    rows = extract_index_rows(example("Observation-example"))
    assert rows_for(rows.quantity, "value-quantity") == [
        ("http://unitsofmeasure.org", "[lb_av]", "lbs", Decimal(185), Decimal("184.5"), Decimal("185.5"))
    ]
    assert ("http://loinc.org", "29463-7", "body weight") in rows_for(rows.token, "code")
    assert rows_for(rows.reference, "patient") == [("Patient", "example", None, None)]
    assert rows_for(rows.date, "date") == [(dt(2016, 3, 28), dt(2016, 3, 28, 23, 59, 59, 999999))]


def test_engines_agree_on_all_official_examples() -> None:
    """SearchParameter.expression: the translator and fhirpathpy give identical rows for every example."""
    files = sorted(EXAMPLES.glob("*.json"))
    if not files:
        pytest.skip("official examples not available")
    compared = 0
    for path in files:
        resource = json.loads(path.read_text())
        a = extract_index_rows(resource, engine="compiled")
        b = extract_index_rows(resource, engine="fhirpathpy")
        for table in ("string", "token", "reference", "date", "number", "quantity", "uri"):
            assert set(getattr(a, table)) == set(getattr(b, table)), (path.name, table)
        compared += a.count()
    assert compared > 5000


def test_translator_handles_every_core_expression() -> None:
    """SearchParameter.expression: no core parameter needs the fhirpathpy fallback."""
    names = frozenset(get_model().parents)
    reg = get_registry()
    for p in reg.params:
        if p.type in ("composite", "special") or not p.expression:
            continue
        for base in p.base:
            if base in ("Resource", "DomainResource"):
                base = "Patient"
            expr = expression_for_type(p.expression, base, names)
            if expr:
                fhirpath_compiler.compile_expression(expr, base)  # raises Unsupported otherwise


# -- hand-made resources -------------------------------------------------------------------------
def test_encounter_period_date() -> None:
    """search.html#date: a Period is [start lower bound, end upper bound]; an open end is unbounded."""
    enc = {
        "resourceType": "Encounter",
        "status": "finished",
        "class": {"code": "AMB"},
        "period": {"start": "2024-01-01T08:00:00Z", "end": "2024-01-01"},
    }
    assert rows_for(extract_index_rows(enc).date, "date") == [(dt(2024, 1, 1, 8), dt(2024, 1, 1, 23, 59, 59, 999999))]
    enc["period"] = {"start": "2024-01-05"}
    assert rows_for(extract_index_rows(enc).date, "date") == [(dt(2024, 1, 5), DATE_MAX)]
    enc["period"] = {"end": "2024"}
    assert rows_for(extract_index_rows(enc).date, "date") == [(DATE_MIN, dt(2024, 12, 31, 23, 59, 59, 999999))]


def test_timing_date_range() -> None:
    """search.html#date: a Timing covers its events and repeat.boundsPeriod."""
    plan = {
        "resourceType": "CarePlan",
        "status": "active",
        "intent": "plan",
        "subject": {"reference": "Patient/1"},
        "activity": [
            {
                "detail": {
                    "status": "scheduled",
                    "scheduledTiming": {
                        "event": ["2024-05-02T10:00:00Z", "2024-05-01"],
                        "repeat": {"boundsPeriod": {"start": "2024-04-20", "end": "2024-04-25"}},
                    },
                }
            }
        ],
    }
    assert rows_for(extract_index_rows(plan).date, "activity-date") == [
        (dt(2024, 4, 20), dt(2024, 5, 2, 10, 0, 0, 999999))
    ]


def test_where_resolve_is_patient() -> None:
    """search.html#reference: Observation.patient is subject.where(resolve() is Patient)."""
    obs = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "x"},
        "subject": {"reference": "Group/g1"},
    }
    rows = extract_index_rows(obs)
    assert rows_for(rows.reference, "subject") == [("Group", "g1", None, None)]
    assert rows_for(rows.reference, "patient") == []
    obs["subject"] = {"reference": "Patient/p1/_history/3"}
    rows = extract_index_rows(obs)
    assert rows_for(rows.reference, "patient") == [("Patient", "p1", "3", None)]


def test_reference_forms() -> None:
    """references.html#literal: relative, versioned, absolute, contained, identifier-only references."""
    obs = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "x"},
        "subject": {"reference": "http://other.org/fhir/Patient/9/_history/2"},
        "performer": [
            {"reference": "#c1"},
            {"reference": "urn:uuid:1234"},
            {"identifier": {"system": "http://npi", "value": "77", "type": {"text": "NPI"}}},
        ],
    }
    rows = extract_index_rows(obs)
    assert rows_for(rows.reference, "subject") == [("Patient", "9", "2", "http://other.org/fhir/Patient/9")]
    assert rows_for(rows.reference, "performer") == [(None, None, None, "urn:uuid:1234")]
    assert rows_for(rows.token, "performer:identifier") == [("http://npi", "77", "npi")]


def test_canonical_reference_and_uri() -> None:
    """search.html#reference (canonical url|version) and #uri."""
    qr = {
        "resourceType": "QuestionnaireResponse",
        "status": "completed",
        "questionnaire": "http://x.org/Questionnaire/q1|2.0",
    }
    rows = extract_index_rows(qr)
    assert rows_for(rows.reference, "questionnaire") == [
        ("Questionnaire", "q1", "2.0", "http://x.org/Questionnaire/q1")
    ]
    vs = {
        "resourceType": "ValueSet",
        "status": "active",
        "url": "http://acme.org/ValueSet/1",
        "meta": {"profile": ["http://p.org/sd"], "source": "http://src#a"},
    }
    rows = extract_index_rows(vs)
    assert rows_for(rows.uri, "url") == [("http://acme.org/ValueSet/1",)]
    assert rows_for(rows.uri, "_profile") == [("http://p.org/sd",)]
    assert rows_for(rows.uri, "_source") == [("http://src#a",)]


def test_token_forms() -> None:
    """search.html#token: CodeableConcept codings + text row, Coding (meta.tag), Identifier type text, boolean."""
    obs = {
        "resourceType": "Observation",
        "status": "final",
        "meta": {
            "tag": [{"system": "http://tags", "code": "vip", "display": "V.I.P."}],
            "security": [{"system": "http://sec", "code": "R"}],
        },
        "code": {
            "coding": [{"system": "http://loinc.org", "code": "1-8", "display": "Acétone"}],
            "text": "Acetone test",
        },
        "identifier": [{"system": "http://ids", "value": "A1", "type": {"text": "Lab number"}}],
        "valueBoolean": True,
    }
    rows = extract_index_rows(obs)
    assert rows_for(rows.token, "code") == [("http://loinc.org", "1-8", "acetone"), (None, None, "acetone test")]
    assert rows_for(rows.token, "_tag") == [("http://tags", "vip", "v.i.p.")]
    assert rows_for(rows.token, "_security") == [("http://sec", "R", None)]
    assert rows_for(rows.token, "identifier") == [("http://ids", "A1", "lab number")]
    assert rows_for(rows.token, "status") == [(None, "final", None)]


def test_choice_types_and_as() -> None:
    """fhirpath `as`: (Observation.value as CodeableConcept) and value-string's (... as CodeableConcept).text."""
    obs = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "x"},
        "valueCodeableConcept": {"coding": [{"system": "http://snomed.info/sct", "code": "373066001"}], "text": "Yes"},
    }
    rows = extract_index_rows(obs)
    assert rows_for(rows.token, "value-concept")[0] == ("http://snomed.info/sct", "373066001", None)
    assert rows_for(rows.string, "value-string") == [("yes", "Yes")]
    assert rows_for(rows.quantity, "value-quantity") == []


def test_quantity_forms() -> None:
    """search.html#quantity: comparator quantities, Money and Range become ranges (value NaN)."""
    obs = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "x"},
        "valueQuantity": {
            "value": Decimal("5.0"),
            "comparator": "<",
            "unit": "mg",
            "code": "mg",
            "system": "http://unitsofmeasure.org",
        },
    }
    ((system, code, unit, value, low, high),) = rows_for(extract_index_rows(obs).quantity, "value-quantity")
    assert (system, code, unit, low, high) == ("http://unitsofmeasure.org", "mg", "mg", NEG_INF, Decimal("5.0"))
    assert value.is_nan()
    inv = {"resourceType": "Invoice", "status": "issued", "totalNet": {"value": 40.5, "currency": "EUR"}}
    assert rows_for(extract_index_rows(inv).quantity, "totalnet") == [
        ("urn:iso:std:iso:4217", "EUR", None, Decimal("40.5"), Decimal("40.45"), Decimal("40.55"))
    ]
    cond = {
        "resourceType": "Condition",
        "subject": {"reference": "Patient/1"},
        "onsetRange": {"low": {"value": 10, "unit": "a", "system": "http://unitsofmeasure.org", "code": "a"}},
    }
    ((*unit_cols, value, low, high),) = rows_for(extract_index_rows(cond).quantity, "onset-age")
    assert unit_cols == ["http://unitsofmeasure.org", "a", "a"] and value.is_nan()
    assert (low, high) == (Decimal("9.5"), POS_INF)


def test_number_forms() -> None:
    """search.html#number: decimal with precision, Range as [low, high)."""
    ra = {
        "resourceType": "RiskAssessment",
        "status": "final",
        "subject": {"reference": "Patient/1"},
        "prediction": [
            {"probabilityDecimal": Decimal("0.35")},
            {"probabilityRange": {"low": {"value": 0.2}, "high": {"value": 0.4}}},
        ],
    }
    rows = rows_for(extract_index_rows(ra).number, "probability")
    assert rows[0] == (Decimal("0.35"), Decimal("0.345"), Decimal("0.355"))
    assert rows[1][0].is_nan() and rows[1][1:] == (Decimal("0.15"), Decimal("0.45"))


def test_deceased_exists_expression() -> None:
    """search.html#token (boolean): Patient.deceased.exists() and Patient.deceased != false."""
    assert rows_for(extract_index_rows({"resourceType": "Patient"}).token, "deceased") == [(None, "false", None)]
    p = {"resourceType": "Patient", "deceasedDateTime": "2020-01-01"}
    assert rows_for(extract_index_rows(p).token, "deceased") == [(None, "true", None)]
    assert rows_for(extract_index_rows(p).date, "death-date")[0][0] == dt(2020, 1, 1)


def test_bad_values_are_skipped_not_fatal() -> None:
    """search.html#date/#number: unparseable values are not indexed, and never fail the write."""
    p = {"resourceType": "Patient", "birthDate": "not-a-date", "name": [{"family": "Ok"}]}
    rows = extract_index_rows(p)
    assert rows_for(rows.date, "birthdate") == []
    assert rows_for(rows.string, "family") == [("ok", "Ok")]
    assert extract_index_rows({"no": "type"}).count() == 0
    assert extract_index_rows({"resourceType": "NotAType"}).count() == 0


def test_translator_subset() -> None:
    """FHIRPath: extension('url'), ofType(), where(x='y'), indexer, exists() in the translator."""
    p = {
        "resourceType": "Patient",
        "extension": [{"url": "http://e/a", "valueString": "A"}, {"url": "http://e/b", "valueCode": "B"}],
        "telecom": [{"system": "email", "value": "a@b"}, {"system": "phone", "value": "1"}],
    }
    run = lambda expr: fhirpath_compiler.compile_expression(expr, "Patient")(p)
    assert run("Patient.extension('http://e/b').value") == [("B", "code")]
    assert run("Patient.extension.value.ofType(string)") == [("A", "string"), ("B", "code")]  # code is a string
    assert run("Patient.extension.value.ofType(code)") == [("B", "code")]
    assert run("Patient.telecom.where(system = 'email').value") == [("a@b", "string")]
    assert run("Patient.telecom[1].value") == [("1", "string")]
    assert run("Patient.telecom.exists()") == [(True, "boolean")]
    assert run("Patient.birthDate.exists().not()") == [(True, "boolean")]
    with pytest.raises(fhirpath_compiler.Unsupported):
        fhirpath_compiler.compile_expression("Patient.name.count() > 1", "Patient")
    fb = fhirpath_fallback.compile_expression("Patient.telecom.where(system='phone')", "Patient")
    assert fb(p) == [({"system": "phone", "value": "1"}, "ContactPoint")]


def test_plan_is_built_once_per_type() -> None:
    """SearchParameter.expression: compiled once per resource type, not per resource."""
    assert plan_for_type("Patient") is plan_for_type("Patient")
    codes = [code for code, _, _ in plan_for_type("Patient")]
    assert "name" in codes and "_id" not in codes and "_lastUpdated" not in codes and "_text" not in codes
