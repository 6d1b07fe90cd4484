"""Custom SearchParameters without a database (searchparameter.html, search.html#custom):
the checks on write, the overlay registry and extraction with it."""

from __future__ import annotations

from typing import Any

import pytest

from fhir_server.errors import UnprocessableEntity
from fhir_server.search.compile import build_where
from fhir_server.search.custom import check_search_parameter
from fhir_server.search.extract import extract_index_rows
from fhir_server.search.registry import get_registry

RASA = "http://example.org/fhir/StructureDefinition/rasa"


def search_parameter(**kw: Any) -> dict[str, Any]:
    sp = {
        "resourceType": "SearchParameter",
        "id": "local-taste",
        "url": "http://example.org/fhir/SearchParameter/local-taste",
        "name": "local-taste",
        "status": "active",
        "description": "local-taste",
        "code": "local-taste",
        "base": ["Medication"],
        "type": "token",
        "expression": f"Medication.extension('{RASA}').value.coding",
    }
    sp.update(kw)
    return {k: v for k, v in sp.items() if v is not None}


def medication(code: str) -> dict[str, Any]:
    return {
        "resourceType": "Medication",
        "id": "m1",
        "extension": [{"url": RASA, "valueCodeableConcept": {"coding": [{"system": "http://x", "code": code}]}}],
    }


def test_active_parameter_is_accepted_and_extracted_through_the_overlay() -> None:
    """search.html#custom: an extension becomes searchable once the registry has the parameter."""
    core = get_registry()
    sp = check_search_parameter(search_parameter(), core)
    assert sp is not None and sp.code == "local-taste"
    overlay = core.overlay({"local-taste": sp})
    assert overlay.get("Medication", "local-taste") is sp
    assert core.get("Medication", "local-taste") is None  # the core registry is untouched
    rows = extract_index_rows(medication("a"), registry=overlay)
    assert ("local-taste", "http://x", "a", None) in rows.token
    assert not any(r[0] == "local-taste" for r in extract_index_rows(medication("a")).token)
    where = build_where("Medication", [("local-taste", "http://x|a")], registry=overlay)
    assert not where.warnings and "idx_token" in where.sql
    assert build_where("Medication", [("local-taste", "a")]).warnings  # unknown without the overlay


@pytest.mark.parametrize(
    ("expression", "resource", "expected"),
    [
        # extension('url').value and .value.ofType(X) forms (fhirpath.html#functions, extension())
        ("Patient.extension('http://e/rel').value", {"valueCodeableConcept": {"coding": [{"code": "b"}]}}, "b"),
        ("Patient.extension('http://e/rel').value.ofType(Coding)", {"valueCoding": {"code": "c"}}, "c"),
        ("Patient.extension.where(url='http://e/rel').value", {"valueCode": "d"}, "d"),
    ],
)
def test_extension_value_forms_are_extracted(expression: str, resource: dict, expected: str) -> None:
    sp = check_search_parameter(
        search_parameter(id="rel", url="http://e/sp/rel", code="religion", base=["Patient"], expression=expression),
        get_registry(),
    )
    assert sp is not None
    patient = {"resourceType": "Patient", "extension": [{"url": "http://e/rel", **resource}, {"url": "http://e/x", "valueCode": "no"}]}
    codes = [r[2] for r in extract_index_rows(patient, registry=get_registry().overlay({"rel": sp})).token if r[0] == "religion"]
    assert codes == [expected]


@pytest.mark.parametrize(
    ("changes", "element"),
    [
        ({"code": None}, "SearchParameter.code"),
        ({"code": "_mine"}, "SearchParameter.code"),
        ({"code": "a.b"}, "SearchParameter.code"),
        ({"code": "name", "base": ["Patient"], "expression": "Patient.name"}, "SearchParameter.code"),  # core clash
        ({"base": ["Unicorn"]}, "SearchParameter.base[0]"),
        ({"type": "composite"}, "SearchParameter.type"),
        ({"type": "special"}, "SearchParameter.type"),
        ({"expression": None}, "SearchParameter.expression"),
        ({"expression": "Medication.nonsense"}, "SearchParameter.expression"),
        ({"expression": "Medication.code.where("}, "SearchParameter.expression"),
        ({"expression": "Patient.name"}, "SearchParameter.expression"),  # no branch for Medication
        ({"type": "reference", "target": ["Unicorn"], "expression": "Medication.manufacturer"}, "SearchParameter.target[0]"),
        ({"type": "date", "comparator": ["eq", "xx"], "expression": "Medication.batch.expirationDate"}, "SearchParameter.comparator[1]"),
    ],
)
def test_bad_active_parameter_is_422_naming_the_element(changes: dict, element: str) -> None:
    with pytest.raises(UnprocessableEntity) as info:
        check_search_parameter(search_parameter(**changes), get_registry())
    assert info.value.status == 422
    assert element in [i.expression for i in info.value.issues]


def test_code_of_another_custom_parameter_on_the_same_base_is_rejected() -> None:
    core = get_registry()
    first = check_search_parameter(search_parameter(), core)
    assert first is not None
    overlay = core.overlay({"local-taste": first})
    other = search_parameter(id="rasa2", url="http://example.org/fhir/SearchParameter/rasa2")
    with pytest.raises(UnprocessableEntity, match="SearchParameter/local-taste"):
        check_search_parameter(other, overlay)
    # the same resource updated is not a clash with itself
    assert check_search_parameter(search_parameter(description="changed"), overlay) is not None


def test_non_active_and_core_copies_do_not_apply() -> None:
    """Only status=active applies; draft/retired are stored unchecked, a copy of a core definition is a no-op."""
    core = get_registry()
    assert check_search_parameter(search_parameter(status="draft", base=["Unicorn"]), core) is None
    assert check_search_parameter(search_parameter(status="retired"), core) is None
    copy = search_parameter(url="http://hl7.org/fhir/SearchParameter/Patient-name", code="name", base=["Patient"])
    assert check_search_parameter(copy, core) is None
