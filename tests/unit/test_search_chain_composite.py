"""Composite search parameters (fhir_server.search.composite): extraction rows, SQL, errors."""

from __future__ import annotations

from decimal import Decimal

import pytest

from fhir_server.errors import InvalidSearch
from fhir_server.search.compile import build_where
from fhir_server.search.extract import extract_index_rows

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
BP = {
    "resourceType": "Observation",
    "id": "bp",
    "status": "final",
    "code": {"coding": [{"system": LOINC, "code": "85354-9"}], "text": "BP"},
    "component": [
        {
            "code": {"coding": [{"system": LOINC, "code": "8480-6"}]},
            "valueQuantity": {"value": 107, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"},
        },
        {
            "code": {"coding": [{"system": LOINC, "code": "8462-4"}]},
            "valueQuantity": {"value": 60, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"},
        },
    ],
}


def test_rows_pair_values_of_the_same_element() -> None:
    """search.html#composite: component-code-value-quantity pairs a component's code with its value."""
    rows = [r for r in extract_index_rows(BP).composite if r[0] == "component-code-value-quantity"]
    assert rows == [
        (
            "component-code-value-quantity",
            LOINC,
            "8480-6",
            UCUM,
            "mm[Hg]",
            "mmHg",
            Decimal(107),
            Decimal("106.5"),
            Decimal("107.5"),
            None,
            None,
            None,
            None,
        ),
        (
            "component-code-value-quantity",
            LOINC,
            "8462-4",
            UCUM,
            "mm[Hg]",
            "mmHg",
            Decimal(60),
            Decimal("59.5"),
            Decimal("60.5"),
            None,
            None,
            None,
            None,
        ),
    ]
    combo = {r[2] for r in extract_index_rows(BP).composite if r[0] == "combo-code-value-quantity"}
    assert combo == {"8480-6", "8462-4"}  # the Observation itself has no value
    assert not [r for r in extract_index_rows(BP).composite if r[0] == "code-value-quantity"]


def test_token_token_rows() -> None:
    """context-type-value (useContext: Coding code, CodeableConcept value) and Group characteristic-value."""
    vs = {
        "resourceType": "ValueSet",
        "status": "active",
        "useContext": [
            {
                "code": {"system": "http://terminology.hl7.org/CodeSystem/usage-context-type", "code": "focus"},
                "valueCodeableConcept": {"coding": [{"system": "http://snomed.info/sct", "code": "123"}], "text": "x"},
            },
            {"code": {"code": "age"}, "valueRange": {"low": {"value": 18}}},
        ],
    }
    rows = extract_index_rows(vs).composite
    ctv = [r for r in rows if r[0] == "context-type-value"]
    assert ctv == [
        (
            "context-type-value",
            "http://terminology.hl7.org/CodeSystem/usage-context-type",
            "focus",
            "http://snomed.info/sct",
            "123",
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
        )
    ]
    ctq = [r for r in rows if r[0] == "context-type-quantity"]
    assert len(ctq) == 1 and ctq[0][2] == "age" and ctq[0][6].is_nan()  # a Range: NaN + bounds


def test_sql_shape() -> None:
    """search.html#composite: Observation?component-code-value-quantity=http://loinc.org|8480-6$lt60."""
    w = build_where("Observation", [("component-code-value-quantity", f"{LOINC}|8480-6$lt60,8462-4$gt1")])
    assert w.sql.startswith("EXISTS (SELECT 1 FROM idx_composite t WHERE t.tenant_id = %(tenant)s")
    assert w.sql.count("EXISTS") == 1 and " OR " in w.sql
    assert "t.system1 = " in w.sql and "t.code1 = " in w.sql and "t.low < " in w.sql
    assert {"component-code-value-quantity", LOINC, "8480-6", "8462-4", Decimal(60), Decimal(1)} <= set(
        w.binds.values()
    )
    w = build_where("Observation", [("code-value-concept", "a$http://s|b")])
    assert "t.code1 = " in w.sql and "t.system = " in w.sql and "t.code = " in w.sql


def test_date_and_string_rows() -> None:
    """search.html#composite: Observation code-value-date (value as dateTime | Period) and code-value-string."""
    from datetime import UTC, datetime

    obs = {"resourceType": "Observation", "status": "final", "code": {"coding": [{"system": LOINC, "code": "x"}]}}
    rows = extract_index_rows({**obs, "valueDateTime": "2024-03"}).composite
    dated = [r for r in rows if r[0] == "code-value-date"]
    assert len(dated) == 1 and dated[0][1:3] == (LOINC, "x")
    assert dated[0][-2] == datetime(2024, 3, 1, tzinfo=UTC)
    assert dated[0][-1] == datetime(2024, 3, 31, 23, 59, 59, 999999, tzinfo=UTC)
    rows = extract_index_rows({**obs, "valuePeriod": {"start": "2024-01-01"}}).composite
    assert [r[-1].year for r in rows if r[0] == "code-value-date"] == [9999]  # an open end
    rows = extract_index_rows({**obs, "valueString": "Négatif"}).composite
    assert [r[-4:] for r in rows if r[0] == "code-value-string"] == [("negatif", "Négatif", None, None)]


def test_date_and_string_sql() -> None:
    w = build_where("Observation", [("code-value-date", f"{LOINC}|x$ge2024-01")])
    assert "t.dlow >= " in w.sql and "t.code1 = " in w.sql
    w = build_where("Observation", [("code-value-string", "x$neg")])
    assert "t.value_norm LIKE " in w.sql and "neg%" in w.binds.values()


@pytest.mark.parametrize(
    ("rtype", "name", "value"),
    [
        ("Observation", "code-value-quantity", "8480-6"),  # one component
        ("Observation", "code-value-quantity", "a$1$2"),
        ("Observation", "code-value-quantity", "a$"),
        ("Observation", "code-value-quantity", "a$abc"),  # not a number
        ("Observation", "code-value-quantity:missing", "true"),
        ("Observation", "code-value-date", "a$2020-13"),  # not a date
        ("Observation", "code-value-date", "a$xx2020"),  # unknown prefix
        ("DocumentReference", "relationship", "a$b"),
        ("MolecularSequence", "chromosome-window-coordinate", "1$gt1$lt2"),
    ],
)
def test_invalid(rtype: str, name: str, value: str) -> None:
    with pytest.raises(InvalidSearch) as exc:
        build_where(rtype, [(name, value)])
    assert name.split(":")[0] in str(exc.value)
