"""Primitive datatypes (https://hl7.org/fhir/R4/datatypes.html) in their JSON form (json.html)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from fhir_server.validation import validate_resource


def errors(resource: dict) -> list[tuple[str, str | None]]:
    return [(i.code, i.expression) for i in validate_resource(resource) if i.severity in ("error", "fatal")]


def patient(**kw) -> dict:
    return {"resourceType": "Patient", **kw}


@pytest.mark.parametrize("value", ["2023", "2023-02", "2024-02-29", "2023-12-31", "0001-01-01"])
def test_valid_dates(value: str) -> None:
    """datatypes.html#date: YYYY, YYYY-MM or YYYY-MM-DD, a real calendar date."""
    assert errors(patient(birthDate=value)) == []


@pytest.mark.parametrize(
    "value",
    [
        "2023-02-30",
        "2023-02-29",
        "2023-04-31",
        "2023-13-01",
        "2023-1-1",
        "23-01-01",
        "2023-01-01T10:00:00Z",
        "",
        "0000-01-01",
    ],
)
def test_invalid_dates(value: str) -> None:
    """datatypes.html#date: 2023-02-30 matches no calendar day and is rejected with code value."""
    assert errors(patient(birthDate=value)) == [("value", "Patient.birthDate")]


@pytest.mark.parametrize(
    "value",
    [
        "2015-02-07T13:28:17-05:00",
        "2017-01-01T00:00:00.000Z",
        "2015",
        "2015-02",
        "2015-02-07",
        "2016-02-29T23:59:59+14:00",
    ],
)
def test_valid_datetimes(value: str) -> None:
    """datatypes.html#dateTime: a time needs seconds and a timezone; partial dates allowed."""
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "effectiveDateTime": value}
    assert errors(obs) == []


@pytest.mark.parametrize(
    "value",
    [
        "2015-02-07T13:28:17",
        "2015-02-07T13:28Z",
        "2015-02-30T10:00:00Z",
        "2015-02-07 13:28:17Z",
        "2015-02-07T24:00:00Z",
    ],
)
def test_invalid_datetimes(value: str) -> None:
    """datatypes.html#dateTime: if hours and minutes are specified, a time zone SHALL be populated."""
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "effectiveDateTime": value}
    assert errors(obs) == [("value", "Observation.effectiveDateTime")]


def test_instant_requires_seconds_and_timezone() -> None:
    """datatypes.html#instant: an instant SHALL include a time zone and seconds."""
    assert errors(patient(meta={"lastUpdated": "2020-01-01T10:00:00Z"})) == []
    assert errors(patient(meta={"lastUpdated": "2020-01-01T10:00:00"})) == [("value", "Patient.meta.lastUpdated")]
    assert errors(patient(meta={"lastUpdated": "2020-01-01"})) == [("value", "Patient.meta.lastUpdated")]


def test_time() -> None:
    """datatypes.html#time: hh:mm:ss, no timezone."""
    avail = {"resourceType": "PractitionerRole", "availableTime": [{"availableStartTime": "09:00:00"}]}
    assert errors(avail) == []
    avail["availableTime"][0]["availableStartTime"] = "9:00"
    assert errors(avail) == [("value", "PractitionerRole.availableTime[0].availableStartTime")]


@pytest.mark.parametrize(
    ("value", "ok"),
    [("abc-1.2", True), ("A" * 64, True), ("A" * 65, False), ("a_b", False), ("a b", False), ("", False)],
)
def test_id(value: str, ok: bool) -> None:
    """datatypes.html#id: [A-Za-z0-9\\-\\.]{1,64}; resource.html: Resource.id is an id."""
    assert (errors(patient(id=value)) == []) is ok


@pytest.mark.parametrize("value", ["true", "false", 1, 0, None, [True]])
def test_boolean_must_be_json_boolean(value) -> None:
    """json.html#primitive: boolean is represented as JSON true or false, never a string or number."""
    assert len(errors(patient(active=value))) == 1


def test_boolean_string_rejected_with_value_code() -> None:
    """json.html#primitive: "true" (a string) where a boolean is expected is an error."""
    assert errors(patient(active="true")) == [("value", "Patient.active")]
    assert errors(patient(active=True)) == []


def test_integer_types() -> None:
    """datatypes.html#integer, #positiveInt, #unsignedInt: 32-bit JSON integers with their ranges."""
    base = {"resourceType": "Patient"}
    assert errors({**base, "multipleBirthInteger": 2}) == []
    assert errors({**base, "multipleBirthInteger": -3}) == []
    assert errors({**base, "multipleBirthInteger": 2**31}) == [("value", "Patient.multipleBirthInteger")]
    assert errors({**base, "multipleBirthInteger": 2.5}) == [("value", "Patient.multipleBirthInteger")]
    assert errors({**base, "multipleBirthInteger": "2"}) == [("value", "Patient.multipleBirthInteger")]
    assert errors({**base, "multipleBirthInteger": True}) == [("value", "Patient.multipleBirthInteger")]
    seq = {"resourceType": "MolecularSequence", "coordinateSystem": 0, "quality": [{"type": "snp", "start": 1}]}
    assert errors(seq) == []
    seq["coordinateSystem"] = 2
    assert errors(seq) == []
    rr = {"resourceType": "RiskAssessment", "status": "final", "subject": {"reference": "Patient/1"}}
    assert errors(rr) == []
    att = {"resourceType": "Patient", "photo": [{"url": "http://x/p.png", "size": 0}]}  # size: unsignedInt
    assert errors(att) == []
    att["photo"][0]["size"] = -1
    assert errors(att) == [("value", "Patient.photo[0].size")]
    cov = {
        "resourceType": "ImmunizationRecommendation",
        "patient": {"reference": "Patient/1"},
        "date": "2020",
        "recommendation": [
            {"targetDisease": {"text": "x"}, "forecastStatus": {"text": "due"}, "doseNumberPositiveInt": 0}
        ],
    }
    assert errors(cov) == [("value", "ImmunizationRecommendation.recommendation[0].doseNumberPositiveInt")]


def test_decimal_must_be_json_number() -> None:
    """json.html#primitive: decimal is a JSON number; "1.0" as a string is an error."""
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}
    assert errors({**obs, "valueQuantity": {"value": 1.5}}) == []
    assert errors({**obs, "valueQuantity": {"value": 7}}) == []
    assert errors({**obs, "valueQuantity": {"value": Decimal("72.50")}}) == []
    assert errors({**obs, "valueQuantity": {"value": "1.0"}}) == [("value", "Observation.valueQuantity.value")]
    assert errors({**obs, "valueQuantity": {"value": float("nan")}}) == [("value", "Observation.valueQuantity.value")]


def test_string_rules() -> None:
    """datatypes.html#string: non-empty, no control characters below U+0020 other than tab, CR, LF."""
    assert errors(patient(name=[{"text": "Line 1\nLine\t2 "}])) == []
    assert errors(patient(name=[{"text": ""}])) == [("value", "Patient.name[0].text")]
    assert errors(patient(name=[{"text": "bell\x07"}])) == [("value", "Patient.name[0].text")]
    assert errors(patient(name=[{"text": 12}])) == [("value", "Patient.name[0].text")]


@pytest.mark.parametrize(
    ("value", "ok"), [("male", True), ("a b", True), ("a  b", False), (" a", False), ("a ", False)]
)
def test_code_pattern(value: str, ok: bool) -> None:
    """datatypes.html#code: [^\\s]+(\\s[^\\s]+)* — no leading, trailing or double whitespace."""
    res = {"resourceType": "Patient", "communication": [{"language": {"coding": [{"code": value}]}}]}
    assert (errors(res) == []) is ok


def test_uri_url_canonical_oid_uuid() -> None:
    """datatypes.html#uri, #oid, #uuid: no whitespace; urn:oid: and urn:uuid: forms."""
    ident = {"resourceType": "Patient", "identifier": [{"system": "urn:oid:1.2.36.146.595.217.0.1", "value": "1"}]}
    assert errors(ident) == []
    ident["identifier"][0]["system"] = "http://exa mple.org"
    assert errors(ident) == [("value", "Patient.identifier[0].system")]
    ns = {
        "resourceType": "NamingSystem",
        "name": "n",
        "status": "draft",
        "kind": "root",
        "date": "2020",
        "uniqueId": [{"type": "oid", "value": "1.2.3"}],
    }
    assert errors(ns) == []
    ep = {
        "resourceType": "Endpoint",
        "status": "active",
        "connectionType": {"code": "hl7-fhir-rest"},
        "payloadType": [{"text": "x"}],
        "address": "https://example.org/fhir",
    }
    assert errors(ep) == []
    ep["address"] = "https://example.org/ fhir"
    assert errors(ep) == [("value", "Endpoint.address")]


def test_base64binary() -> None:
    """datatypes.html#base64Binary: base64 content; whitespace between groups is tolerated."""
    att = {"resourceType": "Patient", "photo": [{"contentType": "image/png", "data": "aGVsbG8gd29ybGQ="}]}
    assert errors(att) == []
    att["photo"][0]["data"] = "aGVs\nbG8g"
    assert errors(att) == []
    att["photo"][0]["data"] = "not base64!"
    assert errors(att) == [("value", "Patient.photo[0].data")]
    att["photo"][0]["data"] = "abc"
    assert errors(att) == [("value", "Patient.photo[0].data")]


def test_markdown_and_xhtml() -> None:
    """narrative.html#Narrative: div is an XHTML <div> in the XHTML namespace."""
    div = '<div xmlns="http://www.w3.org/1999/xhtml"><p>x</p></div>'
    assert errors(patient(text={"status": "generated", "div": div})) == []
    assert errors(patient(text={"status": "generated", "div": "<p>x</p>"})) == [("value", "Patient.text.div")]
    assert errors(patient(text={"status": "generated", "div": "<div>x</div>"})) == [("value", "Patient.text.div")]
