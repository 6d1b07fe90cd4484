"""The packaged compartment definitions and operation index (compartmentdefinition.html,
operationdefinition.html), and the $meta-add/$meta-delete merge rules (resource-operation-meta-add.html)."""

from __future__ import annotations

import gzip
import json

from fhir_server.definitions.compartments import compartment, official_operation_url
from fhir_server.search.registry import get_registry
from fhir_server.services.meta import merged
from tests.conftest import SHARED_DATA


def test_patient_compartment_matches_the_official_definition() -> None:
    """compartmentdefinition-patient.html: every type with parameters, and only those."""
    official = json.loads((SHARED_DATA / "fhir-r4" / "compartmentdefinition-patient.json").read_text())
    expected = {r["code"]: tuple(r["param"]) for r in official["resource"] if r.get("param")}
    assert compartment("Patient").params == expected
    assert compartment("Patient").url == official["url"]


def test_every_compartment_parameter_is_an_indexed_reference_parameter() -> None:
    """$everything reads membership from idx_reference: each link must be a reference parameter."""
    registry = get_registry()
    for code in ("Patient", "Encounter", "RelatedPerson", "Practitioner", "Device"):
        types, params = compartment(code).links()
        assert types and len(types) == len(params)
        for rtype, param in zip(types, params, strict=True):
            sp = registry.get(rtype, param)
            assert sp is not None and sp.type == "reference", (code, rtype, param)


def test_official_operation_urls() -> None:
    bundle = json.loads(gzip.decompress((SHARED_DATA / "fhir-r4" / "profiles-resources.json.gz").read_bytes()))
    urls = {e["resource"]["url"] for e in bundle["entry"] if e["resource"]["resourceType"] == "OperationDefinition"}
    cases = {
        ("everything", "Patient"): "Patient-everything",
        ("everything", "Encounter"): "Encounter-everything",
        ("validate", "Observation"): "Resource-validate",
        ("meta", None): "Resource-meta",
        ("meta-add", "Patient"): "Resource-meta-add",
        ("meta-delete", "Patient"): "Resource-meta-delete",
    }
    for (code, rtype), name in cases.items():
        url = official_operation_url(code, rtype)
        assert url == f"http://hl7.org/fhir/OperationDefinition/{name}" and url in urls
    assert official_operation_url("everything", "Observation") is None
    assert official_operation_url("no-such-op", None) is None


def test_meta_merge_identity_is_system_and_code() -> None:
    """resource-operation-meta-add.html / -meta-delete.html."""
    meta = {"versionId": "3", "tag": [{"system": "s", "code": "a", "display": "A"}], "profile": ["p1"]}
    added = merged(meta, {"tag": [{"system": "s", "code": "a", "display": "changed"}, {"system": "s", "code": "b"}],
                          "security": [{"system": "x", "code": "R"}], "profile": ["p1", "p2"]}, add=True)
    assert added == {
        "versionId": "3",
        "tag": [{"system": "s", "code": "a", "display": "A"}, {"system": "s", "code": "b"}],
        "security": [{"system": "x", "code": "R"}],
        "profile": ["p1", "p2"],
    }
    removed = merged(added, {"tag": [{"system": "other", "code": "a"}, {"system": "s", "code": "b"}],
                             "security": [{"system": "x", "code": "R"}], "profile": ["p1"]}, add=False)
    assert removed == {"versionId": "3", "tag": [{"system": "s", "code": "a", "display": "A"}], "profile": ["p2"]}
