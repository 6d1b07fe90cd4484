"""Search totals on imported Synthea records, checked against counts computed independently.

A separate server on a fresh database; five Synthea patient bundles are loaded with
``fhir-server import``; every expected count is computed here by walking the bundle JSON in Python
(no server code involved). Spec: https://hl7.org/fhir/R4/search.html (parameter types, chaining,
``_has``, prefixes).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from tests.conftest import SHARED_DATA
from tests.integration.synthea import imported_server

FOLDER = SHARED_DATA / "synthea" / "smart-generated-sample-data"
FILES = [p for p in sorted(FOLDER.glob("*.json.gz")) if "Information" not in p.name][:5]
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"


def _id(full_url: str) -> str:
    assert full_url.startswith("urn:uuid:")
    return full_url[len("urn:uuid:") :]


def _ref_id(ref: dict | None) -> str | None:
    """A bundle-internal ``urn:uuid:`` reference -> the id the importer gives its target."""
    value = (ref or {}).get("reference", "")
    return _id(value) if value.startswith("urn:uuid:") else None


def _load() -> dict[str, list[dict[str, Any]]]:
    """resource type -> resources, each with its imported id in ``id``."""
    by_type: dict[str, list[dict[str, Any]]] = {}
    for path in FILES:
        bundle = json.loads(gzip.decompress(path.read_bytes()))
        for entry in bundle["entry"]:
            resource = dict(entry["resource"], id=_id(entry["fullUrl"]))
            by_type.setdefault(resource["resourceType"], []).append(resource)
    return by_type


def _codes(concept: dict | None) -> set[tuple[str | None, str | None]]:
    return {(c.get("system"), c.get("code")) for c in (concept or {}).get("coding", [])}


@pytest.fixture(scope="module")
def data() -> dict[str, list[dict[str, Any]]]:
    assert len(FILES) == 5
    return _load()


@pytest.fixture(scope="module")
def synthea(pg_admin_url: str, data: dict) -> Iterator[httpx.Client]:
    yield from imported_server(pg_admin_url, FILES)


def _total(client: httpx.Client, path: str, params: dict[str, str]) -> int:
    r = client.get(path, params={**params, "_summary": "count"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert not any(e.get("search", {}).get("mode") == "outcome" for e in body.get("entry", [])), body
    return int(body["total"])


def _instant(value: str) -> datetime:
    d = datetime.fromisoformat(value)
    return d if d.tzinfo else d.replace(tzinfo=UTC)


def test_import_counts_per_type(synthea: httpx.Client, data: dict) -> None:
    """search.html#all / #_id: a search without criteria counts every imported resource of a type."""
    for rtype in ("Patient", "Observation", "Encounter", "Condition", "Immunization", "Procedure"):
        assert _total(synthea, f"/{rtype}", {}) == len(data.get(rtype, [])), rtype


def test_token_string_reference_date_totals(synthea: httpx.Client, data: dict) -> None:
    """search.html#token, #reference, #date, #string: totals equal independent counts."""
    patients, observations = data["Patient"], data["Observation"]
    encounters, conditions = data["Encounter"], data["Condition"]
    by_id = {p["id"]: p for p in patients}
    some_patient = patients[0]["id"]
    rare_code = next(
        code for code in ("2093-3", "6690-2", "19926-5")
        if 0 < sum((LOINC, code) in _codes(o["code"]) for o in observations) < len(observations)
    )
    condition_code = next(iter(sorted(_codes(conditions[0]["code"]))))[1]
    cutoff = datetime(2015, 1, 1, tzinfo=UTC)

    def obs_date_ge(o: dict) -> bool:
        # stored range [tl, th]; ge2015-01-01 is th > 2015-01-01T23:59:59.999999Z or tl >= 2015-01-01T00:00Z
        value = o.get("effectiveDateTime") or o.get("effectiveInstant")
        if value is None:
            period = o.get("effectivePeriod")
            if not period:
                return False
            low = _instant(period["start"]) if "start" in period else None
            high = _instant(period["end"]) if "end" in period else None
            return high is None or low is None or low >= cutoff or high > cutoff.replace(hour=23, minute=59, second=59)
        assert len(value) > 10, "date-only values would need day ranges"
        return _instant(value) >= cutoff

    family = patients[1]["name"][0]["family"]
    cases: list[tuple[str, dict[str, str], int]] = [
        ("/Patient", {"gender": "female"}, sum(p.get("gender") == "female" for p in patients)),
        ("/Patient", {"gender": "male"}, sum(p.get("gender") == "male" for p in patients)),
        ("/Patient", {"family": family[:3].lower()},
         sum(any(n.get("family", "").lower().startswith(family[:3].lower()) for n in p.get("name", [])) for p in patients)),
        ("/Observation", {"code": f"{LOINC}|8302-2"}, sum((LOINC, "8302-2") in _codes(o["code"]) for o in observations)),
        ("/Observation", {"code": rare_code}, sum(any(c == rare_code for _, c in _codes(o["code"])) for o in observations)),
        ("/Observation", {"code": f"{LOINC}|8302-2,{LOINC}|{rare_code}"},
         sum(bool({(LOINC, "8302-2"), (LOINC, rare_code)} & _codes(o["code"])) for o in observations)),
        ("/Observation", {"subject": f"Patient/{some_patient}"},
         sum(_ref_id(o.get("subject")) == some_patient for o in observations)),
        ("/Observation", {"patient": some_patient}, sum(_ref_id(o.get("subject")) == some_patient for o in observations)),
        ("/Observation", {"date": "ge2015-01-01"}, sum(obs_date_ge(o) for o in observations)),
        ("/Encounter", {"patient": some_patient, "status": "finished"},
         sum(_ref_id(e.get("subject")) == some_patient and e.get("status") == "finished" for e in encounters)),
        ("/Condition", {"code": f"{SNOMED}|{condition_code}"},
         sum((SNOMED, condition_code) in _codes(c["code"]) for c in conditions)),
        ("/Observation", {"subject:Patient.gender": "male"},
         sum(by_id.get(_ref_id(o.get("subject")) or "", {}).get("gender") == "male" for o in observations)),
        ("/Patient", {"_has:Observation:subject:code": rare_code},
         len({_ref_id(o.get("subject")) for o in observations if any(c == rare_code for _, c in _codes(o["code"]))})),
        ("/Patient", {"_has:Condition:subject:code": condition_code},
         len({_ref_id(c.get("subject")) for c in conditions if condition_code in {k for _, k in _codes(c["code"])}})),
    ]
    # value-quantity=gt100 (search.html#prefix, "the range above the search value intersects the
    # range of the target value"): exact only if no stored value lies within 100's precision range
    values = [o["valueQuantity"]["value"] for o in observations if "value" in o.get("valueQuantity", {})]
    if not any(99.5 <= v < 100.5 for v in values):
        cases.append(("/Observation", {"value-quantity": "gt100"}, sum(v > 100 for v in values)))
    for path, params, expected in cases:
        assert expected > 0, (path, params)
        assert _total(synthea, path, params) == expected, (path, params)
