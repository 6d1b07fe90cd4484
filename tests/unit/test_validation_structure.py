"""JSON representation rules (https://hl7.org/fhir/R4/json.html) and cardinality (resource pages)."""

from __future__ import annotations

import pytest

from fhir_server.errors import Issue
from fhir_server.validation import Validator, has_errors, validate_resource

OBS = {"resourceType": "Observation", "status": "final", "code": {"text": "Haemoglobin"}}


def errors(resource) -> list[tuple[str, str | None]]:
    return [(i.code, i.expression) for i in validate_resource(resource) if i.severity in ("error", "fatal")]


def test_minimal_valid_resources() -> None:
    """resource.html: a resource with only its required elements is valid."""
    assert errors({"resourceType": "Patient"}) == []
    assert errors(OBS) == []
    assert validate_resource({"resourceType": "Patient", "id": "x"}) == []


def test_resource_type_required_and_known() -> None:
    """json.html#resources: the resourceType property is required and names an R4 resource."""
    assert errors({"id": "x"}) == [("required", "resourceType")]
    assert errors({"resourceType": "Foo"})[0][0] == "structure"
    assert errors({"resourceType": "DomainResource"})[0][0] == "structure"  # abstract
    assert errors(["not", "an", "object"])[0][0] == "structure"


def test_unknown_element_is_named() -> None:
    """json.html: properties not defined for the type are errors, named by their path."""
    assert errors({"resourceType": "Patient", "foo": 1}) == [("structure", "Patient.foo")]
    assert errors({"resourceType": "Patient", "name": [{"family": "x", "middle": "y"}]}) == [
        ("structure", "Patient.name[0].middle")
    ]
    issues = validate_resource({"resourceType": "Patient", "foo": 1})
    assert isinstance(issues[0], Issue) and "foo" in issues[0].diagnostics


def test_choice_types() -> None:
    """formats.html#choice: value[x] only in its allowed typed forms, and only one of them."""
    assert errors({**OBS, "valueQuantity": {"value": 1, "unit": "g"}}) == []
    assert errors({**OBS, "valueFoo": 1}) == [("structure", "Observation.valueFoo")]
    assert errors({**OBS, "value": 1}) == [("structure", "Observation.value")]
    assert errors({**OBS, "valueString": "a", "valueBoolean": True}) == [("structure", "Observation.valueBoolean")]
    # two different choice elements together are fine
    assert errors({**OBS, "valueString": "a", "effectiveDateTime": "2020"}) == []


def test_arrays_where_max_is_star() -> None:
    """json.html#arrays: an element with max > 1 is always an array, even with one value."""
    assert errors({"resourceType": "Patient", "name": {"family": "x"}}) == [("structure", "Patient.name")]
    assert errors({"resourceType": "Patient", "name": [{"given": "x"}]}) == [("structure", "Patient.name[0].given")]


def test_single_values_not_arrays() -> None:
    """json.html#arrays: an element with max 1 is a single value, never an array."""
    assert errors({"resourceType": "Patient", "gender": ["male"]}) == [("structure", "Patient.gender")]
    assert errors({"resourceType": "Patient", "maritalStatus": [{"text": "x"}]}) == [
        ("structure", "Patient.maritalStatus")
    ]


def test_object_vs_primitive() -> None:
    """json.html: complex types are JSON objects, primitives are not."""
    assert errors({"resourceType": "Patient", "maritalStatus": "married"}) == [("structure", "Patient.maritalStatus")]
    assert errors({"resourceType": "Patient", "gender": {"value": "male"}}) == [("value", "Patient.gender")]


def test_empty_array_object_string_rejected() -> None:
    """json.html: no empty arrays, objects or strings — an element is either absent or has content."""
    assert errors({"resourceType": "Patient", "name": []}) == [("structure", "Patient.name")]
    assert errors({"resourceType": "Patient", "maritalStatus": {}}) == [("structure", "Patient.maritalStatus")]
    assert errors({"resourceType": "Patient", "gender": ""}) == [("value", "Patient.gender")]


def test_null_only_in_aligned_primitive_arrays() -> None:
    """json.html#primitive: null only stands in a primitive array to align it with its _x array."""
    ext = {"extension": [{"url": "http://example.org/x", "valueCode": "z"}]}
    ok = {"resourceType": "Patient", "name": [{"given": ["a", None], "_given": [None, ext]}]}
    assert errors(ok) == []
    assert errors({"resourceType": "Patient", "name": [{"given": ["a", None]}]}) == [
        ("structure", "Patient.name[0].given[1]")
    ]
    assert errors({"resourceType": "Patient", "gender": None}) == [("value", "Patient.gender")]
    assert errors({"resourceType": "Patient", "name": [None]})[0] == ("structure", "Patient.name[0]")
    misaligned = {"resourceType": "Patient", "name": [{"given": ["a", "b"], "_given": [ext]}]}
    assert ("structure", "Patient.name[0].given") in errors(misaligned)


def test_primitive_extension_siblings() -> None:
    """json.html#primitive: _birthDate carries id/extension of the primitive; it is validated too."""
    ext = {
        "extension": [
            {
                "url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime",
                "valueDateTime": "1974-12-25T14:35:45-05:00",
            }
        ]
    }
    assert errors({"resourceType": "Patient", "birthDate": "1974-12-25", "_birthDate": ext}) == []
    assert errors({"resourceType": "Patient", "_birthDate": ext}) == []  # extension without value
    bad = {"extension": [{"url": "http://x", "valueDateTime": "1974-13-25"}]}
    assert errors({"resourceType": "Patient", "_birthDate": bad}) == [
        ("value", "Patient.birthDate.extension[0].valueDateTime")
    ]
    assert errors({"resourceType": "Patient", "_birthDate": "x"}) == [("structure", "Patient.birthDate")]
    assert errors({"resourceType": "Patient", "_birthDate": {"foo": 1}}) == [("structure", "Patient.birthDate.foo")]
    # _x exists only for primitives
    assert errors({"resourceType": "Patient", "_name": [{"id": "a"}]}) == [("structure", "Patient._name")]


def test_required_element_missing() -> None:
    """observation.html: Observation.status is 1..1; missing it is a 'required' issue at Observation.status."""
    obs = {k: v for k, v in OBS.items() if k != "status"}
    assert errors(obs) == [("required", "Observation.status")]
    assert errors({"resourceType": "Observation"}) == [
        ("required", "Observation.status"),
        ("required", "Observation.code"),
    ]
    # nested backbone elements: Patient.link.other and .type are 1..1
    assert errors({"resourceType": "Patient", "link": [{"type": "seealso"}]}) == [("required", "Patient.link[0].other")]


def test_required_primitive_satisfied_by_extension() -> None:
    """json.html#primitive: a required primitive may be present as _x only (e.g. data-absent-reason)."""
    dar = {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "unknown"}]}
    obs = {"resourceType": "Observation", "_status": dar, "code": {"text": "x"}}
    assert errors(obs) == []


def test_required_choice_element() -> None:
    """extensibility.html / choice types: a required value[x] is satisfied by any of its typed forms."""
    ing = {"resourceType": "Medication", "ingredient": [{"itemCodeableConcept": {"text": "x"}}]}
    assert errors(ing) == []
    assert errors({"resourceType": "Medication", "ingredient": [{"isActive": True}]}) == [
        ("required", "Medication.ingredient[0].item")
    ]


def test_ele1_element_with_only_id() -> None:
    """element.html ele-1: all FHIR elements must have a @value or children."""
    assert errors({"resourceType": "Patient", "maritalStatus": {"id": "a"}}) == [("invalid", "Patient.maritalStatus")]


def test_recursive_content_reference() -> None:
    """questionnaire.html: Questionnaire.item.item reuses the definition of Questionnaire.item."""
    q = {
        "resourceType": "Questionnaire",
        "status": "draft",
        "item": [{"linkId": "1", "type": "group", "item": [{"linkId": "1.1", "type": "string"}]}],
    }
    assert errors(q) == []
    q["item"][0]["item"][0]["bogus"] = True
    assert errors(q) == [("structure", "Questionnaire.item[0].item[0].bogus")]
    q["item"][0]["item"][0] = {"type": "string"}
    assert errors(q) == [("required", "Questionnaire.item[0].item[0].linkId")]


def test_issues_are_error_severity_and_has_errors() -> None:
    """validation.html: errors make a write fail; the helper tells."""
    issues = validate_resource({"resourceType": "Patient", "foo": 1})
    assert has_errors(issues) and all(i.severity == "error" for i in issues)
    assert not has_errors(validate_resource({"resourceType": "Patient"}))


def test_validator_instances_are_independent() -> None:
    """The module-level validator and a fresh Validator agree on base R4."""
    v = Validator()
    assert v.validate({"resourceType": "Patient", "foo": 1}) == validate_resource({"resourceType": "Patient", "foo": 1})


@pytest.mark.parametrize("rt", ["Patient", "Bundle", "Parameters", "Binary", "Observation", "ValueSet"])
def test_known_resource_types(rt: str) -> None:
    """resourcelist.html: the 146 R4 resource types are known to the validator."""
    from fhir_server.definitions.resource_types import RESOURCE_TYPES

    v = Validator()
    assert set(v.resources) == set(RESOURCE_TYPES)
    assert rt in v.resources
