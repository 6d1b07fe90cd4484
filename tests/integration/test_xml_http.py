"""FHIR XML over HTTP (https://hl7.org/fhir/R4/http.html#mime-type, #parameters ``_format``):
the same interactions as JSON, with the XML format negotiated by Accept, _format and Content-Type."""

from __future__ import annotations

import uuid

import httpx
from lxml import etree

from fhir_server.formats.xml import xml_to_json

F = "{http://hl7.org/fhir}"
FHIR_XML = "application/fhir+xml"


def patient_xml(mrn: str) -> bytes:
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<Patient xmlns="http://hl7.org/fhir">
  <text><status value="generated"/><div xmlns="http://www.w3.org/1999/xhtml"><p>Asha Sharma</p></div></text>
  <identifier><system value="http://hospital.example.org/mrn"/><value value="{mrn}"/></identifier>
  <active value="true"/>
  <name><family value="Sharma"/><given value="Asha"/><given id="g2"><extension
    url="http://hl7.org/fhir/StructureDefinition/iso21090-EN-qualifier"><valueCode value="CL"/></extension></given></name>
  <gender value="female"/>
  <birthDate value="1980-04-12"/>
  <multipleBirthInteger value="2"/>
</Patient>""".encode()


def create_xml(client: httpx.Client, mrn: str) -> httpx.Response:
    return client.post("/Patient", content=patient_xml(mrn), headers={"Content-Type": FHIR_XML, "Accept": FHIR_XML})


def test_create_in_xml_returns_xml_and_reads_back_in_xml_and_json(client: httpx.Client) -> None:
    """http.html#mime-type: an XML body is the same resource as its JSON; the answer follows Accept."""
    mrn = f"MRN-{uuid.uuid4().hex[:12]}"
    r = create_xml(client, mrn)
    assert r.status_code == 201, r.text
    assert r.headers["content-type"].startswith(FHIR_XML)
    created = xml_to_json(r.content)
    pid = created["id"]
    assert created["meta"]["versionId"] == "1"

    as_json = client.get(f"/Patient/{pid}").json()  # the client's default Accept is FHIR JSON
    assert as_json["active"] is True and as_json["multipleBirthInteger"] == 2
    assert as_json["name"][0]["given"] == ["Asha", None]
    assert as_json["name"][0]["_given"][1]["id"] == "g2"
    assert as_json["text"]["div"] == '<div xmlns="http://www.w3.org/1999/xhtml"><p>Asha Sharma</p></div>'

    r = client.get(f"/Patient/{pid}", headers={"Accept": FHIR_XML})
    assert r.status_code == 200 and r.headers["content-type"].startswith(FHIR_XML)
    assert r.headers["etag"] == 'W/"1"'
    assert xml_to_json(r.content, decimal=float) == as_json
    root = etree.fromstring(r.content)
    assert [c.tag.removeprefix(F) for c in root][:3] == ["id", "meta", "text"]


def test_format_parameter_and_xml_accept_variants(client: httpx.Client) -> None:
    """http.html#parameters: _format=xml overrides Accept; application/xml and text/xml are FHIR XML too."""
    pid = create_xml(client, f"MRN-{uuid.uuid4().hex[:12]}").headers["location"].split("/")[-3]
    for url, accept, expected in [
        (f"/Patient/{pid}?_format=xml", "application/fhir+json", FHIR_XML),
        (f"/Patient/{pid}?_format=application/fhir%2Bxml", "application/fhir+json", FHIR_XML),
        (f"/Patient/{pid}", "application/xml", "application/xml"),
        (f"/Patient/{pid}", "text/xml", "text/xml"),
        (f"/Patient/{pid}?_format=json", FHIR_XML, "application/fhir+json"),
    ]:
        r = client.get(url, headers={"Accept": accept})
        assert r.status_code == 200 and r.headers["content-type"].startswith(expected), (url, accept)
    pretty = client.get(f"/Patient/{pid}?_format=xml&_pretty=true").content
    assert b"\n  <id value=" in pretty
    assert b"\n" not in client.get(f"/Patient/{pid}?_format=xml").content.split(b"?>", 1)[1]


def test_update_in_xml(client: httpx.Client) -> None:
    """http.html#update with an XML body."""
    r = create_xml(client, f"MRN-{uuid.uuid4().hex[:12]}")
    resource = xml_to_json(r.content)
    body = r.content.replace(b'<gender value="female"/>', b'<gender value="other"/>')
    r = client.put(f"/Patient/{resource['id']}", content=body, headers={"Content-Type": FHIR_XML})
    assert r.status_code == 200, r.text
    assert r.json()["gender"] == "other" and r.json()["meta"]["versionId"] == "2"


def test_search_and_history_bundles_in_xml(client: httpx.Client) -> None:
    """http.html#search and #history: the Bundle and its resources in XML."""
    mrn = f"MRN-{uuid.uuid4().hex[:12]}"
    pid = xml_to_json(create_xml(client, mrn).content)["id"]
    r = client.get("/Patient", params={"identifier": f"http://hospital.example.org/mrn|{mrn}"}, headers={"Accept": FHIR_XML})
    assert r.status_code == 200 and r.headers["content-type"].startswith(FHIR_XML)
    root = etree.fromstring(r.content)
    assert root.tag == F + "Bundle"
    assert root.find(f"{F}type").get("value") == "searchset"
    assert root.find(f"{F}total").get("value") == "1"
    patient = root.find(f"{F}entry/{F}resource/{F}Patient")
    assert patient is not None and patient.find(f"{F}id").get("value") == pid
    bundle = xml_to_json(r.content)
    assert bundle["entry"][0]["search"]["mode"] == "match"

    r = client.get(f"/Patient/{pid}/_history", params={"_format": "xml"})
    assert r.status_code == 200 and etree.fromstring(r.content).find(f"{F}type").get("value") == "history"


def test_errors_are_operation_outcomes_in_xml(client: httpx.Client) -> None:
    """Errors answer in the negotiated format; a bad XML body is 400 naming element and line."""
    r = client.get("/Patient/does-not-exist", headers={"Accept": FHIR_XML})
    assert r.status_code == 404 and r.headers["content-type"].startswith(FHIR_XML)
    outcome = xml_to_json(r.content)
    assert outcome["resourceType"] == "OperationOutcome" and outcome["issue"][0]["code"] == "not-found"

    bad = b'<Patient xmlns="http://hl7.org/fhir">\n  <active value="true"/>\n  <colour value="blue"/>\n</Patient>'
    r = client.post("/Patient", content=bad, headers={"Content-Type": FHIR_XML, "Accept": FHIR_XML})
    assert r.status_code == 400
    issue = xml_to_json(r.content)["issue"][0]
    assert issue["code"] == "invalid"
    assert "colour" in issue["diagnostics"] and "line 3" in issue["diagnostics"]
    assert issue["expression"] == ["Patient.colour"]
    assert "Traceback" not in r.text

    xxe = b'<?xml version="1.0"?><!DOCTYPE p [<!ENTITY x SYSTEM "file:///etc/passwd">]><Patient xmlns="http://hl7.org/fhir"><id value="&x;"/></Patient>'
    r = client.post("/Patient", content=xxe, headers={"Content-Type": FHIR_XML})
    assert r.status_code == 400 and "DOCTYPE" in r.json()["issue"][0]["diagnostics"]


def test_validation_errors_of_an_xml_body_come_back_in_xml(client: httpx.Client) -> None:
    """R4 validation runs on the JSON the XML became; the outcome is XML."""
    body = b'<Patient xmlns="http://hl7.org/fhir"><gender value="robot"/></Patient>'
    r = client.post("/Patient", content=body, headers={"Content-Type": FHIR_XML, "Accept": FHIR_XML})
    assert r.status_code == 400
    assert xml_to_json(r.content)["resourceType"] == "OperationOutcome"


def test_capability_statement_in_xml_lists_xml(client: httpx.Client) -> None:
    r = client.get("/metadata", headers={"Accept": FHIR_XML})
    assert r.status_code == 200 and r.headers["content-type"].startswith(FHIR_XML)
    formats = xml_to_json(r.content)["format"]
    assert "application/fhir+xml" in formats and "xml" in formats


def test_unknown_formats_stay_406_and_415(client: httpx.Client) -> None:
    """http.html#mime-type: a format the server does not produce is 406; a body it cannot read is 415."""
    r = client.get("/metadata", headers={"Accept": "text/turtle"})
    assert r.status_code == 406 and r.json()["resourceType"] == "OperationOutcome"
    assert client.get("/metadata?_format=ttl").status_code == 406
    r = client.post("/Patient", content=b"name: x", headers={"Content-Type": "application/yaml"})
    assert r.status_code == 415


def test_json_patch_stays_json(client: httpx.Client) -> None:
    """PATCH takes JSON Patch; an XML body is not a patch document."""
    pid = xml_to_json(create_xml(client, f"MRN-{uuid.uuid4().hex[:12]}").content)["id"]
    r = client.patch(f"/Patient/{pid}", content=patient_xml("x"), headers={"Content-Type": FHIR_XML})
    assert r.status_code == 400
    r = client.patch(
        f"/Patient/{pid}",
        content=b'[{"op": "replace", "path": "/active", "value": false}]',
        headers={"Content-Type": "application/json-patch+json", "Accept": FHIR_XML},
    )
    assert r.status_code == 200, r.text
    assert etree.fromstring(r.content).find(f"{F}active").get("value") == "false"


def test_transaction_and_operation_bodies_in_xml(client: httpx.Client) -> None:
    """A transaction Bundle and an operation's Parameters may be sent as XML (read at the body layer)."""
    mrn = f"MRN-{uuid.uuid4().hex[:12]}"
    inner = patient_xml(mrn).split(b"?>", 1)[1]
    bundle = (b'<Bundle xmlns="http://hl7.org/fhir"><type value="transaction"/><entry>'
              b'<fullUrl value="urn:uuid:' + str(uuid.uuid4()).encode() + b'"/><resource>' + inner + b'</resource>'
              b'<request><method value="POST"/><url value="Patient"/></request></entry></Bundle>')  # fmt: skip
    r = client.post("", content=bundle, headers={"Content-Type": FHIR_XML, "Accept": FHIR_XML})
    assert r.status_code == 200, r.text
    answer = xml_to_json(r.content)
    assert answer["type"] == "transaction-response"
    assert answer["entry"][0]["response"]["status"].startswith("201")

    params = b"""<Parameters xmlns="http://hl7.org/fhir"><parameter><name value="resource"/><resource>
      <Patient><gender value="robot"/></Patient></resource></parameter></Parameters>"""
    r = client.post("/Patient/$validate", content=params, headers={"Content-Type": FHIR_XML, "Accept": FHIR_XML})
    outcome = xml_to_json(r.content)
    assert outcome["resourceType"] == "OperationOutcome"
    assert any(i["severity"] == "error" for i in outcome["issue"]), outcome
