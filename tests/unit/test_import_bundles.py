"""Bundle entries and import files, without a database (bundle.html#transaction, bundle.html#references)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fhir_server.errors import BadRequest, NotImplementedInteraction
from fhir_server.services.bundles import parse_entry, rewrite_references
from fhir_server.transfer.importer import load_bundle


def test_references_and_narrative_links_are_rewritten() -> None:
    """bundle.html#references: every reference to a mapped fullUrl follows, extensions and narrative included."""
    obs = {
        "resourceType": "Observation", "subject": {"reference": "urn:uuid:aaaa"},
        "extension": [{"url": "http://x", "valueReference": {"reference": "urn:uuid:aaaa"}}],
        "text": {"div": '<div><a href="urn:uuid:aaaa">x</a><img src="urn:uuid:other"/></div>'},
        "focus": [{"reference": "Patient/kept"}],
    }
    rewrite_references(obs, {"urn:uuid:aaaa": "Patient/p1"})
    assert obs["subject"]["reference"] == "Patient/p1"
    assert obs["extension"][0]["valueReference"]["reference"] == "Patient/p1"
    assert 'href="Patient/p1"' in obs["text"]["div"] and 'src="urn:uuid:other"' in obs["text"]["div"]
    assert obs["focus"][0]["reference"] == "Patient/kept"


@pytest.mark.parametrize(("method", "url", "kind"), [
    ("POST", "Patient", "create"), ("PUT", "Patient/1", "update"), ("PUT", "Patient?identifier=a|b", "cond-update"),
    ("DELETE", "Patient/1", "delete"), ("DELETE", "Patient?name=x", "cond-delete"), ("GET", "Patient?name=x", "other"),
    ("POST", "Patient/_search", "other"), ("POST", "Patient/$validate", "other"),
    ("PUT", "http://server.example/fhir/Patient/1", "update"),
])
def test_entry_kinds(method: str, url: str, kind: str) -> None:
    """http.html#transaction: the interaction of an entry follows from request.method and request.url."""
    resource = {"resourceType": "Patient", "id": "1"} if method in ("POST", "PUT") else None
    entry = parse_entry(0, {"resource": resource, "request": {"method": method, "url": url}}, "http://server.example/fhir")
    assert entry.kind == kind


@pytest.mark.parametrize(("raw", "expression"), [
    ({"request": {"method": "GET"}}, "Bundle.entry[2].request.url"),
    ({"request": {"method": "FETCH", "url": "Patient"}}, "Bundle.entry[2].request.method"),
    ({"request": {"method": "PUT", "url": "Patient"}, "resource": {"resourceType": "Patient"}}, "Bundle.entry[2].request.url"),
    ({"request": {"method": "POST", "url": "Patient"}, "resource": {"resourceType": "Group"}}, "Bundle.entry[2].resource.resourceType"),
    ({"request": {"method": "PATCH", "url": "Patient/1"}, "resource": {"resourceType": "Binary"}}, "Bundle.entry[2].resource"),
])
def test_bad_entries_name_the_element(raw: dict, expression: str) -> None:
    """bundle.html#transaction: entry.request.method and url are required and must make sense."""
    with pytest.raises(BadRequest) as exc:
        parse_entry(2, raw, None)
    assert exc.value.issues[0].expression == expression


def test_fhirpath_patch_is_not_implemented() -> None:
    with pytest.raises(NotImplementedInteraction):
        parse_entry(0, {"request": {"method": "PATCH", "url": "Patient/1"}, "resource": {"resourceType": "Parameters"}}, None)


def test_files_become_transactions(tmp_path: Path) -> None:
    """NDJSON lines, collections and lone resources are imported as transactions: PUT with an id, else POST."""
    nd = tmp_path / "a.ndjson"
    nd.write_text('{"resourceType":"Patient","id":"p1"}\n{"resourceType":"Patient"}\n')
    bundle, made = load_bundle(nd)
    assert made and bundle["type"] == "transaction"
    assert [e["request"] for e in bundle["entry"]] == [{"method": "PUT", "url": "Patient/p1"}, {"method": "POST", "url": "Patient"}]
    coll = tmp_path / "c.json"
    coll.write_text(json.dumps({"resourceType": "Bundle", "type": "collection",
                                "entry": [{"fullUrl": "urn:uuid:x", "resource": {"resourceType": "Patient"}}]}))
    bundle, made = load_bundle(coll)
    assert not made and bundle["entry"][0]["fullUrl"] == "urn:uuid:x"
