"""FHIR XML <-> JSON (https://hl7.org/fhir/R4/xml.html): all 722 official R4 examples round trip,
element order checked against the StructureDefinitions themselves, and one test per rule."""

from __future__ import annotations

import gzip
import json
import random
from collections.abc import Iterator
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from fhir_server.formats.xml import XmlFormatError, json_number, json_to_xml, xml_to_json

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "fhir-r4"
EXAMPLES = sorted((SHARED / "examples").glob("*.json"))
F = "{http://hl7.org/fhir}"
XHTML = "http://www.w3.org/1999/xhtml"
DIV = f'<div xmlns="{XHTML}"><p>Hi</p></div>'


def c14n(div: str) -> bytes:
    return etree.tostring(etree.fromstring(div.encode()), method="c14n")


def same(a: Any, b: Any, key: str = "") -> bool:
    """Equal JSON modulo number type (int/Decimal), a narrative ``div`` compared as canonical XML (the XML parser may write
    ``<br />`` as ``<br/>`` or ``'`` quotes as ``"``; the XHTML is the same)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k], k) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if key == "div" and isinstance(a, str) and isinstance(b, str) and a != b:
        return c14n(a) == c14n(b)
    if isinstance(a, (int, Decimal)) and isinstance(b, (int, Decimal)) and bool not in (type(a), type(b)):
        return Decimal(a) == Decimal(b)  # JSON 100 comes back from a decimal's XML text as Decimal("100")
    return type(a) is type(b) and a == b


def _base_elements() -> Iterator[dict[str, Any]]:
    """Snapshot elements (the root left out) of every base StructureDefinition in the official
    definitions, in file and snapshot order."""
    for name in ("profiles-types.json.gz", "profiles-resources.json.gz"):
        with gzip.open(SHARED / name, "rt") as fh:
            for entry in json.load(fh)["entry"]:
                sd = entry["resource"]
                if sd.get("resourceType") != "StructureDefinition" or sd.get("derivation") == "constraint":
                    continue
                yield from sd.get("snapshot", {}).get("element", [])[1:]


@cache
def sd_order() -> dict[str, list[tuple[str, bool]]]:
    """Element names in StructureDefinition order per type/backbone path, straight from the
    official definitions (independent of the packaged table the converter uses)."""
    out: dict[str, list[tuple[str, bool]]] = {}
    for el in _base_elements():
        parent, _, leaf = el["path"].rpartition(".")
        out.setdefault(parent, []).append((leaf.removesuffix("[x]"), leaf.endswith("[x]")))
        if "contentReference" in el:
            out[el["path"]] = out.setdefault(el["contentReference"][1:], [])
    return out


def _elem_type(parent_type: str, name: str) -> str | None:
    """The type (or backbone path) of ``name`` under ``parent_type``, from the raw SDs."""
    return _types().get((parent_type, name))


@cache
def _types() -> dict[tuple[str, str], str]:
    out: dict[tuple[str, str], str] = {}
    for el in _base_elements():
        parent, _, leaf = el["path"].rpartition(".")
        codes = [t["code"] for t in el.get("type", [])]
        if "contentReference" in el:
            target = el["contentReference"][1:]
        elif codes and codes[0] in ("BackboneElement", "Element"):
            target = el["path"]
        else:
            target = None
        base = leaf.removesuffix("[x]")
        for code in codes or [""]:
            key = base + code[:1].upper() + code[1:] if leaf.endswith("[x]") else base
            out[(parent, key)] = target or code
    return out


def check_order(el: etree._Element, type_name: str) -> None:
    """Children appear in StructureDefinition order, recursively (xml.html: 'order matters')."""
    order = sd_order().get(type_name)
    if order is None:
        return  # a primitive
    last = -1
    for child in el:
        if not isinstance(child.tag, str) or not child.tag.startswith(F):
            continue
        local = child.tag[len(F) :]
        idx = next(
            (i for i, (n, choice) in enumerate(order)
             if local == n or (choice and local.startswith(n) and local[len(n)].isupper())),
            None,
        )  # fmt: skip
        assert idx is not None, f"{local} is not an element of {type_name}"
        assert idx >= last, f"{type_name}: <{local}> after an element that the definition puts later"
        last = idx
        target = _elem_type(type_name, local)
        if target == "Resource":
            check_order(child[0], child[0].tag[len(F) :])
        elif target:
            check_order(child, target)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_official_example_round_trips_in_definition_order(path: Path) -> None:
    original = json.loads(path.read_bytes(), parse_float=Decimal)
    xml = json_to_xml(original)
    root = etree.fromstring(xml)
    assert root.tag == F + original["resourceType"]
    check_order(root, original["resourceType"])
    assert same(xml_to_json(xml), original)


def test_all_722_examples_are_covered() -> None:
    assert len(EXAMPLES) == 722


def test_namespace_declaration_and_resource_id_element() -> None:
    xml = json_to_xml({"resourceType": "Patient", "id": "p1", "active": True})
    assert xml.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
    root = etree.fromstring(xml)
    assert root.tag == F + "Patient" and root.nsmap == {None: "http://hl7.org/fhir"}
    assert root[0].tag == F + "id" and root[0].get("value") == "p1"  # Resource.id is an element
    assert root[1].get("value") == "true"


def test_json_key_order_does_not_matter_xml_follows_the_definition() -> None:
    patient = {
        "resourceType": "Patient", "id": "x", "birthDate": "1980-01-01", "gender": "female",
        "name": [{"given": ["A"], "family": "B", "use": "official"}], "active": False,
        "meta": {"versionId": "1"}, "text": {"status": "generated", "div": DIV},
    }  # fmt: skip
    items = list(patient.items())
    random.Random(7).shuffle(items)
    root = etree.fromstring(json_to_xml(dict(items)))
    assert [c.tag[len(F) :] if c.tag.startswith(F) else "div" for c in root] == [
        "id", "meta", "text", "active", "name", "gender", "birthDate",
    ]  # fmt: skip
    assert [c.tag[len(F) :] for c in root[4]] == ["use", "family", "given"]


def test_element_id_and_extension_url_are_attributes() -> None:
    patient = {
        "resourceType": "Patient",
        "name": [{"id": "n1", "family": "B", "extension": [{"url": "http://e.org/x", "valueString": "v"}]}],
    }
    root = etree.fromstring(json_to_xml(patient))
    name = root.find(F + "name")
    assert name.get("id") == "n1" and name.find(F + "id") is None
    ext = name[0]
    assert ext.tag == F + "extension" and ext.get("url") == "http://e.org/x"
    assert ext[0].tag == F + "valueString" and ext[0].get("value") == "v"
    assert xml_to_json(json_to_xml(patient)) == patient


def test_primitive_extensions_align_with_nulls() -> None:
    """json.html#primitive: ``_given`` with nulls <-> elements with id/extension and no value."""
    ext = [{"url": "http://hl7.org/fhir/StructureDefinition/iso21090-EN-qualifier", "valueCode": "CL"}]
    patient = {
        "resourceType": "Patient",
        "name": [{"given": ["Ann", None, "Bea"], "_given": [None, {"id": "g2", "extension": ext}, {"extension": ext}]}],
        "birthDate": "1970-03-30",
        "_birthDate": {"extension": [{"url": "http://e.org/t", "valueDateTime": "1970-03-30T14:35:45-05:00"}]},
    }
    xml = json_to_xml(patient)
    name = etree.fromstring(xml).find(F + "name")
    given = name.findall(F + "given")
    assert [g.get("value") for g in given] == ["Ann", None, "Bea"]
    assert given[1].get("id") == "g2" and given[1][0].get("url").endswith("EN-qualifier")
    assert len(given[2]) == 1
    assert xml_to_json(xml) == patient


def test_primitive_with_only_extension() -> None:
    xml = (b'<Patient xmlns="http://hl7.org/fhir"><gender>'
           b'<extension url="http://e.org/absent"><valueCode value="unknown"/></extension></gender></Patient>')  # fmt: skip
    assert xml_to_json(xml) == {
        "resourceType": "Patient",
        "_gender": {"extension": [{"url": "http://e.org/absent", "valueCode": "unknown"}]},
    }


def test_choice_types_use_the_typed_element_name() -> None:
    obs = {
        "resourceType": "Observation", "status": "final", "code": {"text": "w"},
        "effectiveDateTime": "2020-01-01", "valueQuantity": {"value": Decimal("72.50"), "unit": "kg"},
    }  # fmt: skip
    root = etree.fromstring(json_to_xml(obs))
    assert [c.tag[len(F) :] for c in root] == ["status", "code", "effectiveDateTime", "valueQuantity"]
    assert root[3][0].get("value") == "72.50"
    assert xml_to_json(json_to_xml(obs)) == obs


def test_types_come_back_from_xml_as_json_numbers_and_booleans() -> None:
    xml = b"""<Observation xmlns="http://hl7.org/fhir">
      <status value="final"/><code><text value="x"/></code>
      <valueQuantity><value value="1.50"/></valueQuantity>
      <interpretation><coding><userSelected value="false"/></coding></interpretation>
      <referenceRange><low><value value="100"/></low></referenceRange>
      <component><code><text value="n"/></code><valueInteger value="-3"/></component>
      <component><code><text value="b"/></code><valueBoolean value="true"/></component>
      <component><code><text value="s"/></code><valueString value="007"/></component>
    </Observation>"""
    got = xml_to_json(xml)
    assert got["valueQuantity"]["value"] == Decimal("1.50") and str(got["valueQuantity"]["value"]) == "1.50"
    assert got["interpretation"][0]["coding"][0]["userSelected"] is False
    assert [type(c.get("valueInteger", c.get("valueBoolean", c.get("valueString")))) for c in got["component"]] == [
        int, bool, str,
    ]  # fmt: skip
    assert got["component"][2]["valueString"] == "007"
    as_orjson = xml_to_json(xml, decimal=json_number)  # what the HTTP layer hands to services
    assert as_orjson["valueQuantity"]["value"] == 1.5 and type(as_orjson["valueQuantity"]["value"]) is float
    assert type(as_orjson["referenceRange"][0]["low"]["value"]) is int


def test_decimals_keep_their_text_form() -> None:
    """Plain decimals are written digit for digit; exponent forms keep their value."""
    for text in ("1.50", "0.00000001", "-0.0", "100", "12345678901234567890.123456789", "1E+2", "3.0e-5"):
        value = json.loads(text, parse_float=Decimal)
        xml = json_to_xml({"resourceType": "Basic", "code": {"text": "d"},
                           "extension": [{"url": "http://e.org/d", "valueDecimal": value}]})  # fmt: skip
        written = etree.fromstring(xml).find(f"{F}extension/{F}valueDecimal").get("value")
        assert Decimal(written) == Decimal(text)
        if "e" not in text.lower():
            assert written == text
        assert xml_to_json(xml)["extension"][0]["valueDecimal"] == Decimal(text)
    assert Decimal(json_to_xml({"resourceType": "Basic", "code": {"text": "d"},
                                "extension": [{"url": "u", "valueDecimal": 0.1}]}).split(b'valueDecimal value="')[1]
                   .split(b'"')[0].decode()) == Decimal("0.1")  # fmt: skip


def test_contained_and_bundle_and_parameters_resources_are_wrapped_in_their_type() -> None:
    bundle = {
        "resourceType": "Bundle", "type": "collection",
        "entry": [{"fullUrl": "urn:uuid:1", "resource": {
            "resourceType": "Patient", "id": "p",
            "contained": [{"resourceType": "Organization", "id": "o", "name": "Org"}],
            "managingOrganization": {"reference": "#o"},
        }}, {"resource": {"resourceType": "Parameters", "parameter": [
            {"name": "r", "resource": {"resourceType": "Basic", "code": {"text": "x"}}},
        ]}}],
    }  # fmt: skip
    root = etree.fromstring(json_to_xml(bundle))
    patient = root.find(f"{F}entry/{F}resource/{F}Patient")
    assert patient is not None
    assert patient.find(f"{F}contained/{F}Organization/{F}name").get("value") == "Org"
    assert root.find(f"{F}entry/{F}resource/{F}Parameters/{F}parameter/{F}resource/{F}Basic") is not None
    assert xml_to_json(json_to_xml(bundle)) == bundle


def test_narrative_div_is_xhtml_passed_through() -> None:
    div = f'<div xmlns="{XHTML}">Tom &amp; <b class="x">Jerry</b><br/><!-- c --></div>'
    patient = {"resourceType": "Patient", "text": {"status": "generated", "div": div}}
    xml = json_to_xml(patient)
    assert div.encode() in xml  # written as it is, not escaped into an attribute
    got = etree.fromstring(xml).find(f"{F}text/{{{XHTML}}}div")
    assert got is not None and got.find(f"{{{XHTML}}}b").text == "Jerry"
    assert xml_to_json(xml) == patient


def test_div_read_from_xml_declares_only_the_xhtml_namespace() -> None:
    xml = (b'<Patient xmlns="http://hl7.org/fhir" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
           b'<text><status value="generated"/><div xmlns="http://www.w3.org/1999/xhtml"><p>x</p></div></text>'
           b"</Patient>")  # fmt: skip
    assert xml_to_json(xml)["text"]["div"] == f'<div xmlns="{XHTML}"><p>x</p></div>'


def test_div_without_namespace_is_put_in_xhtml_and_injection_is_refused() -> None:
    plain = {"resourceType": "Patient", "text": {"status": "generated", "div": "<div><p>x</p></div>"}}
    assert xml_to_json(json_to_xml(plain))["text"]["div"] == f'<div xmlns="{XHTML}"><p>x</p></div>'
    bad = {"resourceType": "Patient", "text": {"status": "generated", "div": f"{DIV}<active value='true'/>"}}
    with pytest.raises(XmlFormatError, match="well-formed"):
        json_to_xml(bad)


def test_special_characters_survive_in_attributes() -> None:
    text = 'a "quoted" <tag> & \'apos\'\nnew line\ttab'
    patient = {"resourceType": "Patient", "name": [{"text": text}]}
    assert xml_to_json(json_to_xml(patient)) == patient


def test_pretty_output_indents_and_reads_back_the_same() -> None:
    patient = {"resourceType": "Patient", "id": "p", "name": [{"family": "B"}], "text": {"status": "generated", "div": DIV}}
    pretty = json_to_xml(patient, pretty=True)
    assert b'\n  <id value="p"/>\n' in pretty and b"\n    <family" in pretty
    assert b"\n" not in json_to_xml(patient)
    assert xml_to_json(pretty) == patient


@pytest.mark.parametrize(
    ("xml", "message", "line"),
    [
        (b'<Patient xmlns="http://hl7.org/fhir">\n<active value="true"/>\n<colour value="x"/></Patient>',
         "Patient.colour: unknown element 'colour' in Patient", 3),
        (b'<Patient xmlns="http://hl7.org/fhir">\n<active value="yes"/></Patient>', "'yes' is not a boolean", 2),
        (b'<Patient xmlns="http://hl7.org/fhir"><name>\n<family>Smith</family></name></Patient>',
         "Patient.name.family: FHIR XML carries values in 'value' attributes", 2),
        (b'<Patient xmlns="http://hl7.org/fhir"><active value="true"/><active value="false"/></Patient>',
         "'active' appears more than once", 1),
        (b"<Patient><active value='true'/></Patient>", "is not a FHIR resource", 1),
        (b'<Nonsense xmlns="http://hl7.org/fhir"/>', "is not a FHIR resource", 1),
        (b'<Patient xmlns="http://hl7.org/fhir">\n\n<active value="true"></Patient>', "not well-formed XML", 3),
        (b'<Patient xmlns="http://hl7.org/fhir"><multipleBirthInteger value="1.5"/></Patient>', "is not an integer", 1),
        (b'<Patient xmlns="http://hl7.org/fhir"><name/></Patient>', "'name' is empty", 1),
        (b'<Patient xmlns="http://hl7.org/fhir"><gender/></Patient>', "neither a value attribute nor extensions", 1),
        (b'<Patient xmlns="http://hl7.org/fhir"><contained/></Patient>', "exactly one resource", 1),
        (b'<Patient xmlns="http://hl7.org/fhir"><name><id value="x"/></name></Patient>', "unknown element 'id'", 1),
    ],
)
def test_invalid_xml_names_the_element_and_line(xml: bytes, message: str, line: int) -> None:
    with pytest.raises(XmlFormatError) as err:
        xml_to_json(xml)
    assert message in str(err.value)
    assert err.value.line == line


@pytest.mark.parametrize(
    "xml",
    [
        (b'<?xml version="1.0"?><!DOCTYPE Patient [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
         b'<Patient xmlns="http://hl7.org/fhir"><id value="&x;"/></Patient>'),
        (b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
         b'<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]><Patient xmlns="http://hl7.org/fhir"><id value="&c;"/></Patient>'),
        b'<Patient xmlns="http://hl7.org/fhir"><id value="&undeclared;"/></Patient>',
        '<?xml version="1.0" encoding="UTF-16"?><Patient xmlns="http://hl7.org/fhir"/>'.encode("utf-16"),
    ],
    ids=["xxe", "entity-expansion", "undeclared-entity", "utf-16"],
)
def test_dtds_entities_and_other_encodings_are_refused(xml: bytes) -> None:
    with pytest.raises(XmlFormatError):
        xml_to_json(xml)


def test_comments_and_schema_location_are_ignored() -> None:
    xml = (b'<?xml version="1.0" encoding="UTF-8"?>\n<!-- a comment -->\n'
           b'<Patient xmlns="http://hl7.org/fhir" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"'
           b' xsi:schemaLocation="http://hl7.org/fhir ../../schema/patient.xsd">'
           b'<!-- inside --><id value="p"/><active value="true"/></Patient>')  # fmt: skip
    assert xml_to_json(xml) == {"resourceType": "Patient", "id": "p", "active": True}


def test_json_that_is_not_fhir_is_refused_when_writing_xml() -> None:
    with pytest.raises(XmlFormatError, match="unknown element 'colour'"):
        json_to_xml({"resourceType": "Patient", "colour": "blue"})
    with pytest.raises(XmlFormatError, match="unknown resourceType"):
        json_to_xml({"resourceType": "Nonsense"})
