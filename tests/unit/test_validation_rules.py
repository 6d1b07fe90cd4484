"""Bindings, references, contained resources, extensions and Bundles (R4 4.0.1)."""

from __future__ import annotations

import pytest

from fhir_server.validation import validate_resource

OBS = {"resourceType": "Observation", "status": "final", "code": {"text": "Haemoglobin"}}


def errors(resource) -> list[tuple[str, str | None]]:
    return [(i.code, i.expression) for i in validate_resource(resource) if i.severity in ("error", "fatal")]


# -- required bindings (terminologies.html#required) ------------------------------------------------


@pytest.mark.parametrize("gender", ["male", "female", "other", "unknown"])
def test_gender_codes(gender: str) -> None:
    """patient.html: Patient.gender is bound (required) to administrative-gender."""
    assert errors({"resourceType": "Patient", "gender": gender}) == []


def test_wrong_gender_code() -> None:
    """terminologies.html#required: a code outside a required value set is code-invalid."""
    assert errors({"resourceType": "Patient", "gender": "robot"}) == [("code-invalid", "Patient.gender")]
    assert errors({"resourceType": "Patient", "gender": "Male"}) == [("code-invalid", "Patient.gender")]


def test_observation_status_binding() -> None:
    """observation.html: Observation.status is bound (required) to observation-status."""
    assert errors({**OBS, "status": "done"}) == [("code-invalid", "Observation.status")]


def test_required_binding_on_codeable_concept() -> None:
    """terminologies.html#required: codings in the bound system must be codes of the value set."""
    system = "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical"
    ai = {
        "resourceType": "AllergyIntolerance",
        "patient": {"reference": "Patient/1"},
        "clinicalStatus": {"coding": [{"system": system, "code": "active"}]},
    }
    assert errors(ai) == []
    ai["clinicalStatus"]["coding"][0]["code"] = "bogus"
    assert errors(ai) == [("code-invalid", "AllergyIntolerance.clinicalStatus.coding[0].code")]


def test_required_binding_on_coding() -> None:
    """terminologies.html#required: a Coding in the bound system must carry one of its codes. No base R4
    Coding element has an expandable required binding, so this uses a profile binding Patient.meta.tag."""
    from fhir_server.validation import Validator

    v = Validator()
    v.add_structure_definition(
        {
            "resourceType": "StructureDefinition",
            "url": "http://example.org/sd/tagged",
            "name": "Tagged",
            "type": "Patient",
            "kind": "resource",
            "derivation": "constraint",
            "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Patient",
            "differential": {
                "element": [
                    {
                        "id": "Patient.meta.tag",
                        "path": "Patient.meta.tag",
                        "binding": {
                            "strength": "required",
                            "valueSet": "http://hl7.org/fhir/ValueSet/administrative-gender",
                        },
                    }
                ]
            },
        }
    )
    gender = "http://hl7.org/fhir/administrative-gender"
    ok = {"resourceType": "Patient", "meta": {"tag": [{"system": gender, "code": "male"}]}}
    assert v.validate(ok, profiles=["http://example.org/sd/tagged"]) == []
    bad = {"resourceType": "Patient", "meta": {"tag": [{"system": gender, "code": "robot"}]}}
    assert [(i.code, i.expression) for i in v.validate(bad, profiles=["http://example.org/sd/tagged"])] == [
        ("code-invalid", "Patient.meta.tag[0].code")
    ]
    assert v.validate(bad) == []  # base R4: Meta.tag has an example binding only


def test_preferred_binding_not_enforced() -> None:
    """terminologies.html#preferred: only required bindings are enforced."""
    obs = {
        **OBS,
        "category": [
            {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "not-a-category"}
                ]
            }
        ],
    }
    assert errors(obs) == []


# -- references (references.html) -----------------------------------------------------------------


@pytest.mark.parametrize(
    "ref",
    [
        "Patient/123",
        "Patient/123/_history/2",
        "http://example.org/fhir/Patient/123",
        "https://example.org/fhir/Patient/1/_history/1",
        "urn:uuid:c757873d-ec9a-4326-a141-556f43239520",
        "urn:oid:1.2.3.4",
        "Patient?identifier=http://x|1",
    ],
)
def test_valid_reference_forms(ref: str) -> None:
    """references.html#literal: relative, versioned, absolute, urn:uuid/urn:oid and conditional references."""
    assert errors({**OBS, "subject": {"reference": ref}}) == []


@pytest.mark.parametrize(
    "ref",
    [
        "Patient/",
        "not a ref",
        "Foo/123",
        "Patient/a_b",
        "/Patient/1",
        "urn:uuid:xyz",
        "Patient/1/_history/",
        "http://exa mple.org/Patient/1",
    ],
)
def test_malformed_references(ref: str) -> None:
    """references.html#literal: a reference that is none of the allowed forms is an error at .reference."""
    assert errors({**OBS, "subject": {"reference": ref}}) == [("value", "Observation.subject.reference")]


def test_reference_target_type() -> None:
    """observation.html: Observation.subject may refer to Patient|Group|Device|Location, not Medication."""
    assert errors({**OBS, "subject": {"reference": "Medication/1"}}) == [("invalid", "Observation.subject.reference")]
    assert errors({**OBS, "subject": {"reference": "http://x.org/fhir/Medication/1"}}) == [
        ("invalid", "Observation.subject.reference")
    ]
    assert errors({**OBS, "subject": {"reference": "Group/1"}}) == []
    # Reference(Any): everything goes
    prov = {
        "resourceType": "Provenance",
        "target": [{"reference": "Medication/1"}],
        "recorded": "2020-01-01T00:00:00Z",
        "agent": [{"who": {"reference": "Practitioner/1"}}],
    }
    assert errors(prov) == []


def test_logical_reference_without_literal() -> None:
    """references.html#logical: a Reference may carry only an identifier or display."""
    assert errors({**OBS, "subject": {"identifier": {"value": "123"}}}) == []
    assert errors({**OBS, "subject": {"display": "Peter"}}) == []


# -- contained resources (references.html#contained, resource.html dom-*) -----------------------------


def contained_patient(**kw) -> dict:
    org = {"resourceType": "Organization", "id": "org1", "name": "Acme", **kw}
    return {"resourceType": "Patient", "contained": [org], "managingOrganization": {"reference": "#org1"}}


def test_contained_ok() -> None:
    """references.html#contained: a contained resource referenced by #id."""
    assert errors(contained_patient()) == []


def test_contained_is_validated_as_a_resource() -> None:
    """references.html#contained: contained resources are validated like any resource."""
    assert errors(contained_patient(bogus=1)) == [("structure", "Patient.contained[0].bogus")]
    assert errors(contained_patient(active="yes")) == [("value", "Patient.contained[0].active")]


def test_contained_with_contained() -> None:
    """domainresource.html dom-2: a contained resource SHALL NOT contain additional contained resources."""
    inner = {"resourceType": "Organization", "id": "o2", "name": "x"}
    res = contained_patient(contained=[inner])
    assert ("invariant", "Patient.contained[0].contained") in errors(res)


def test_contained_meta_rules_and_id() -> None:
    """domainresource.html dom-4, dom-5: no meta.versionId/lastUpdated/security; the id is required."""
    res = contained_patient(meta={"versionId": "1", "lastUpdated": "2020-01-01T00:00:00Z"})
    assert errors(res) == [
        ("invariant", "Patient.contained[0].meta.versionId"),
        ("invariant", "Patient.contained[0].meta.lastUpdated"),
    ]
    no_id = {"resourceType": "Patient", "contained": [{"resourceType": "Organization", "name": "x"}]}
    assert ("required", "Patient.contained[0].id") in errors(no_id)


def test_local_reference_must_resolve() -> None:
    """reference.html ref-1: SHALL have a contained resource if a local reference is provided."""
    res = {"resourceType": "Patient", "managingOrganization": {"reference": "#nope"}}
    assert errors(res) == [("invariant", "Patient.managingOrganization.reference")]


def test_contained_must_be_referenced() -> None:
    """domainresource.html dom-3: a contained resource SHALL be referred to from elsewhere in the resource."""
    res = {"resourceType": "Patient", "contained": [{"resourceType": "Organization", "id": "o", "name": "x"}]}
    assert errors(res) == [("invariant", "Patient.contained[0]")]
    # referring to the container ("#") from inside the contained resource also satisfies dom-3
    back = {
        "resourceType": "Patient",
        "contained": [
            {
                "resourceType": "Observation",
                "id": "o",
                "status": "final",
                "code": {"text": "x"},
                "subject": {"reference": "#"},
            }
        ],
    }
    assert errors(back) == []


# -- extensions (extensibility.html) --------------------------------------------------------------


def test_extension_requires_url() -> None:
    """extensibility.html: Extension.url is 1..1; without it the issue is 'required' at .url."""
    res = {"resourceType": "Patient", "extension": [{"valueString": "x"}]}
    assert errors(res) == [("required", "Patient.extension[0].url")]


def test_extension_value_or_children_not_both() -> None:
    """extensibility.html ext-1: must have either extensions or value[x], not both."""
    both = {"url": "http://x", "valueString": "a", "extension": [{"url": "a", "valueString": "b"}]}
    assert errors({"resourceType": "Patient", "extension": [both]}) == [("invariant", "Patient.extension[0]")]
    neither = {"url": "http://x"}
    assert errors({"resourceType": "Patient", "extension": [neither]}) == [("invariant", "Patient.extension[0]")]
    nested = {"url": "http://x", "extension": [{"url": "a", "valueString": "b"}, {"url": "b", "valueInteger": 1}]}
    assert errors({"resourceType": "Patient", "extension": [nested]}) == []


def test_extension_value_validated_by_type() -> None:
    """extensibility.html: value[x] of an extension is validated as its datatype."""
    res = {"resourceType": "Patient", "extension": [{"url": "http://x", "valueDate": "2020-02-30"}]}
    assert errors(res) == [("value", "Patient.extension[0].valueDate")]
    res = {"resourceType": "Patient", "extension": [{"url": "http://x", "valueWhatever": 1}]}
    assert errors(res) == [("structure", "Patient.extension[0].valueWhatever")]


def test_modifier_extension() -> None:
    """extensibility.html#modifierExtension: same structure rules as extension."""
    res = {"resourceType": "Patient", "modifierExtension": [{"valueBoolean": True}]}
    assert errors(res) == [("required", "Patient.modifierExtension[0].url")]


# -- resources inside resources (bundle.html, parameters.html) ------------------------------------


def test_bundle_entries_validated_as_their_own_type() -> None:
    """bundle.html: Bundle.entry.resource is validated as the resource it is."""
    b = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"resource": {"resourceType": "Patient", "gender": "robot"}},
            {"resource": {**OBS, "subject": {"reference": "not a ref"}}},
            {"resource": {"resourceType": "Nope"}},
        ],
    }
    assert errors(b) == [
        ("code-invalid", "Bundle.entry[0].resource.gender"),
        ("value", "Bundle.entry[1].resource.subject.reference"),
        ("structure", "Bundle.entry[2].resource"),
    ]


def test_bundle_of_valid_entries() -> None:
    """bundle.html: a valid transaction Bundle."""
    b = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a",
                "resource": {"resourceType": "Patient", "active": True},
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "resource": {**OBS, "subject": {"reference": "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a"}},
                "request": {"method": "POST", "url": "Observation"},
            },
        ],
    }
    assert errors(b) == []
    b["entry"][0]["request"]["method"] = "FETCH"
    assert errors(b) == [("code-invalid", "Bundle.entry[0].request.method")]


def test_parameters_resource() -> None:
    """parameters.html: Parameters.parameter.resource is validated by its own resourceType."""
    p = {"resourceType": "Parameters", "parameter": [{"name": "r", "resource": {"resourceType": "Patient", "x": 1}}]}
    assert errors(p) == [("structure", "Parameters.parameter[0].resource.x")]


def test_core_extension_value_type() -> None:
    """extension-patient-birthplace.html: the core birthPlace extension takes a valueAddress only."""
    url = "http://hl7.org/fhir/StructureDefinition/patient-birthPlace"
    ok = {"resourceType": "Patient", "extension": [{"url": url, "valueAddress": {"city": "Utrecht"}}]}
    assert errors(ok) == []
    bad = {"resourceType": "Patient", "extension": [{"url": url, "valueString": "Utrecht"}]}
    assert errors(bad) == [("structure", "Patient.extension[0].valueString")]
    unknown = {"resourceType": "Patient", "extension": [{"url": "http://example.org/any", "valueString": "x"}]}
    assert errors(unknown) == []  # extensions the server does not know are accepted (extensibility.html)
