"""Reading Bundles for import: urn:uuid fullUrls become ids, and references follow (bundle.html#references)."""

from __future__ import annotations

from fhir_server.transfer.bundles import bundle_items


def test_urn_uuid_full_urls_become_ids_and_references_are_rewritten() -> None:
    """bundle.html#references: urn:uuid fullUrls resolve every reference to them, extensions included."""
    bundle = {
        "resourceType": "Bundle", "type": "transaction",
        "entry": [
            {"fullUrl": "urn:uuid:aaaa", "resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}},
            {"fullUrl": "urn:uuid:bbbb", "request": {"method": "POST", "url": "Observation"},
             "resource": {"resourceType": "Observation", "subject": {"reference": "urn:uuid:aaaa"},
                          "extension": [{"url": "http://x", "valueReference": {"reference": "urn:uuid:aaaa"}}]}},
            {"resource": {"resourceType": "Organization", "id": "org1"}, "request": {"method": "PUT", "url": "Organization/org1"}},
            {"resource": {"resourceType": "Practitioner"}, "request": {"method": "POST", "url": "Practitioner", "ifNoneExist": "identifier=a|b"}},
        ],
    }
    items = bundle_items(bundle)
    assert [i.method for i in items] == ["PUT", "PUT", "PUT", "CREATE_IF"]
    assert items[0].resource["id"] == "aaaa"
    obs = items[1].resource
    assert obs["subject"]["reference"] == "Patient/aaaa"
    assert obs["extension"][0]["valueReference"]["reference"] == "Patient/aaaa"
    assert items[3].condition == "identifier=a|b"
