"""Validator.add_structure_definition and validate(..., profiles=[...]) (profiling.html, structuredefinition.html)."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from fhir_server.validation import Validator

BASE = "http://hl7.org/fhir/StructureDefinition/"


def shared_data() -> Path | None:
    root = Path(__file__).resolve().parents[2]
    for cand in (
        os.environ.get("FHIR_R4_DATA"),
        root.parent / "shared" / "data" / "fhir-r4",
        "/work/shared/data/fhir-r4",
    ):
        if cand and (Path(cand) / "hl7.fhir.r4.core-4.0.1.tgz").exists():
            return Path(cand)
    return None


def package_sd(name: str) -> dict:
    data = shared_data()
    if data is None:
        pytest.skip("official R4 package not available")
    with tarfile.open(data / "hl7.fhir.r4.core-4.0.1.tgz") as tf:
        member = tf.extractfile(f"package/StructureDefinition-{name}.json")
        assert member is not None
        return json.load(io.TextIOWrapper(member, encoding="utf-8"))


def profile(url: str, rtype: str, elements: list[dict]) -> dict:
    return {
        "resourceType": "StructureDefinition",
        "url": url,
        "name": url.rsplit("/", 1)[-1],
        "type": rtype,
        "kind": "resource",
        "derivation": "constraint",
        "baseDefinition": BASE + rtype,
        "differential": {"element": elements},
    }


def codes(issues) -> list[tuple[str, str | None]]:
    return [(i.code, i.expression) for i in issues if i.severity in ("error", "fatal")]


@pytest.fixture(scope="module")
def v() -> Validator:
    val = Validator()
    val.add_structure_definition(
        profile(
            "http://example.org/sd/strict-patient",
            "Patient",
            [
                {"id": "Patient.birthDate", "path": "Patient.birthDate", "min": 1},
                {"id": "Patient.name", "path": "Patient.name", "min": 1, "max": "1"},
                {"id": "Patient.name.family", "path": "Patient.name.family", "min": 1},
                {"id": "Patient.photo", "path": "Patient.photo", "max": "0"},
                {"id": "Patient.contact.name", "path": "Patient.contact.name", "min": 1},
            ],
        )
    )
    val.add_structure_definition(
        profile(
            "http://example.org/sd/quantity-obs",
            "Observation",
            [
                {
                    "id": "Observation.value[x]",
                    "path": "Observation.value[x]",
                    "min": 1,
                    "type": [{"code": "Quantity"}],
                },
                {
                    "id": "Observation.subject",
                    "path": "Observation.subject",
                    "min": 1,
                    "type": [{"code": "Reference", "targetProfile": [BASE + "Patient"]}],
                },
            ],
        )
    )
    return val


def test_differential_profile_tightens_cardinality(v: Validator) -> None:
    """profiling.html#cardinality: a profile may raise min, lower max, or prohibit (max 0)."""
    good = {"resourceType": "Patient", "birthDate": "2000-01-01", "name": [{"family": "Chalmers"}]}
    assert v.validate(good, profiles=["http://example.org/sd/strict-patient"]) == []
    assert v.validate({"resourceType": "Patient"}) == []  # base R4 does not require them
    bad = {
        "resourceType": "Patient",
        "name": [{"given": ["a"]}, {"family": "b"}],
        "photo": [{"url": "http://x"}],
        "contact": [{"gender": "male"}],
    }
    got = codes(v.validate(bad, profiles=["http://example.org/sd/strict-patient"]))
    assert ("required", "Patient.birthDate") in got
    assert ("structure", "Patient.name") in got  # 2 names, max 1
    assert ("required", "Patient.name[0].family") in got  # inside a datatype (HumanName)
    assert ("structure", "Patient.photo") in got  # max 0
    assert ("required", "Patient.contact[0].name") in got  # inside a backbone element


def test_profile_restricts_choice_types_and_targets(v: Validator) -> None:
    """profiling.html#choice / references: a profile may narrow value[x] types and Reference targets."""
    url = "http://example.org/sd/quantity-obs"
    obs = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "x"},
        "subject": {"reference": "Patient/1"},
        "valueQuantity": {"value": 1},
    }
    assert v.validate(obs, profiles=[url]) == []
    s = {**obs, "valueString": "heavy"}
    del s["valueQuantity"]
    assert codes(v.validate(s, profiles=[url])) == [
        ("structure", "Observation.valueString"),
        ("required", "Observation.value"),
    ]
    assert v.validate(s) == []
    g = {**obs, "subject": {"reference": "Group/1"}}
    assert codes(v.validate(g, profiles=[url])) == [("invalid", "Observation.subject.reference")]


def test_unknown_profile_is_an_issue(v: Validator) -> None:
    """validation.html: validating against a profile the server does not know is reported."""
    got = v.validate({"resourceType": "Patient"}, profiles=["http://example.org/sd/nope"])
    assert [(i.severity, i.code) for i in got] == [("error", "not-found")]


def test_profile_for_another_type(v: Validator) -> None:
    """profiling.html: a profile constrains one resource type."""
    got = codes(v.validate({"resourceType": "Patient"}, profiles=["http://example.org/sd/quantity-obs"]))
    assert got == [("invalid", "Patient")]


def test_base_definitions_are_profiles_by_url(v: Validator) -> None:
    """structuredefinition.html: the base definitions are addressable by their canonical url."""
    assert v.validate({"resourceType": "Patient"}, profiles=[BASE + "Patient"]) == []


def test_add_base_structure_definition_from_package() -> None:
    """structuredefinition.html: re-adding a base resource definition (specialization) keeps behaviour."""
    val = Validator()
    val.add_structure_definition(package_sd("Patient"))
    assert codes(val.validate({"resourceType": "Patient", "gender": "robot"})) == [("code-invalid", "Patient.gender")]
    assert val.validate({"resourceType": "Patient", "gender": "male"}) == []


def test_snapshot_profile_from_package() -> None:
    """observation-vitalsigns.html: the core vitalsigns profile (snapshot) requires subject and effective[x]."""
    val = Validator()
    val.add_structure_definition(package_sd("vitalsigns"))
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}
    got = codes(val.validate(obs, profiles=[BASE + "vitalsigns"]))
    assert ("required", "Observation.subject") in got and ("required", "Observation.effective") in got


def test_custom_specialization_type() -> None:
    """structuredefinition.html: a new type (specialization with a snapshot) becomes validatable."""
    val = Validator()
    sd = {
        "resourceType": "StructureDefinition",
        "url": "http://example.org/sd/Widget",
        "name": "Widget",
        "type": "Widget",
        "kind": "resource",
        "derivation": "specialization",
        "abstract": False,
        "baseDefinition": BASE + "DomainResource",
        "snapshot": {
            "element": [
                {"id": "Widget", "path": "Widget", "min": 0, "max": "*"},
                {
                    "id": "Widget.id",
                    "path": "Widget.id",
                    "min": 0,
                    "max": "1",
                    "base": {"path": "Resource.id"},
                    "type": [{"code": "http://hl7.org/fhirpath/System.String"}],
                },
                {"id": "Widget.size", "path": "Widget.size", "min": 1, "max": "1", "type": [{"code": "integer"}]},
            ]
        },
    }
    val.add_structure_definition(sd)
    assert val.validate({"resourceType": "Widget", "id": "w1", "size": 3}) == []
    assert codes(val.validate({"resourceType": "Widget"})) == [("required", "Widget.size")]


def test_rejects_non_structure_definition() -> None:
    """structuredefinition.html: only StructureDefinitions with a url can be added."""
    with pytest.raises(ValueError):
        Validator().add_structure_definition({"resourceType": "Patient"})
