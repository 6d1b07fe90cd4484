"""``$everything`` on imported Synthea records, checked against an independent computation.

Spec: https://hl7.org/fhir/R4/patient-operation-everything.html and
https://hl7.org/fhir/R4/encounter-operation-everything.html ("the patient/encounter, every resource
in its compartment, and any resource referenced from those"); compartments from
https://hl7.org/fhir/R4/compartmentdefinition-patient.html and -encounter.html. A separate server
on a fresh database; two Synthea bundles are loaded with ``fhir-server import``; the expected
records are computed here from the bundle JSON by following the elements behind each
compartment parameter (no server code involved).
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import SHARED_DATA
from tests.integration.synthea import imported_server
from tests.integration.test_errors import assert_outcome

FOLDER = SHARED_DATA / "synthea" / "smart-generated-sample-data"
FILES = [p for p in sorted(FOLDER.glob("*.json.gz")) if "Information" not in p.name][:2]

# the elements behind the Patient / Encounter compartment parameters of the types Synthea writes
# (R4 search parameter definitions: e.g. Procedure "patient" = Procedure.subject, Claim "payee" = payee.party)
PATIENT_LINKS: dict[str, list[str]] = {
    "Observation": ["subject", "performer"],
    "Encounter": ["subject"],
    "Claim": ["patient", "payee.party"],
    "ExplanationOfBenefit": ["patient", "payee.party"],
    "Immunization": ["patient"],
    "Procedure": ["subject", "performer.actor"],
    "DiagnosticReport": ["subject"],
    "Condition": ["subject", "asserter"],
    "MedicationRequest": ["subject"],
    "CarePlan": ["subject", "activity.detail.performer"],
    "ImagingStudy": ["subject"],
    "AllergyIntolerance": ["patient", "recorder", "asserter"],
}
NOT_IN_PATIENT_COMPARTMENT = {"Patient", "Organization", "Practitioner"}
ENCOUNTER_LINKS: dict[str, list[str]] = {
    "Observation": ["encounter"],
    "Condition": ["encounter"],
    "Procedure": ["encounter"],
    "DiagnosticReport": ["encounter"],
    "MedicationRequest": ["encounter"],
    "CarePlan": ["encounter"],
    "Claim": ["item.encounter"],
    "ExplanationOfBenefit": ["item.encounter"],
}

Key = tuple[str, str]


def _values(node: Any, path: list[str]) -> list[Any]:
    if not path:
        return node if isinstance(node, list) else [node]
    items = node if isinstance(node, list) else [node]
    out: list[Any] = []
    for item in items:
        if isinstance(item, dict) and path[0] in item:
            out += _values(item[path[0]], path[1:])
    return out


def _searchable_reference_paths() -> set[str]:
    """``Type.a.b`` of every element an R4 reference SearchParameter selects (simple expressions:
    ``X.a.b``, ``X.a.where(...)``, ``X.a.as(Reference)``, ``X.a is Patient``), read from the
    official definitions: the server follows references through its reference index only."""
    bundle = json.loads(gzip.decompress((SHARED_DATA / "fhir-r4" / "search-parameters.json.gz").read_bytes()))
    paths = set()
    for entry in bundle["entry"]:
        sp = entry["resource"]
        if sp["type"] != "reference" or not sp.get("expression"):
            continue
        for part in sp["expression"].split("|"):
            part = re.sub(r"\.where\([^)]*\)|\.as\([A-Za-z]+\)| is [A-Za-z]+$", "", part.strip().strip("()"))
            if re.fullmatch(r"[A-Za-z.]+", part):
                paths.add(part)
    return paths


SEARCHABLE = _searchable_reference_paths()


def _all_refs(node: Any, path: str) -> list[str]:
    """The references at searchable elements (``contained`` resources left out)."""
    out: list[str] = []
    if isinstance(node, dict):
        if isinstance(node.get("reference"), str) and path in SEARCHABLE:
            out.append(node["reference"])
        for key, value in node.items():
            if key != "contained":
                out += _all_refs(value, f"{path}.{key}")
    elif isinstance(node, list):
        for value in node:
            out += _all_refs(value, path)
    return out


class Data:
    """The bundles' resources with their imported ids, and references resolved to (type, id)."""

    def __init__(self) -> None:
        self.resources: dict[Key, dict[str, Any]] = {}
        self.by_url: dict[str, Key] = {}
        self.patients: list[str] = []
        raw = []
        for path in FILES:
            bundle = json.loads(gzip.decompress(path.read_bytes()))
            for entry in bundle["entry"]:
                r = entry["resource"]
                key = (r["resourceType"], entry["fullUrl"].removeprefix("urn:uuid:"))
                self.by_url[entry["fullUrl"]] = key
                raw.append((key, r))
        for key, r in raw:
            self.resources[key] = r
            if key[0] == "Patient":
                self.patients.append(key[1])

    def targets(self, resource: dict[str, Any], paths: list[str] | None = None) -> set[Key]:
        refs = (
            [v.get("reference") for p in paths for v in _values(resource, p.split(".")) if isinstance(v, dict)]
            if paths is not None
            else _all_refs(resource, resource["resourceType"])
        )
        return {self.by_url[r] for r in refs if r in self.by_url}

    def patient_compartment(self, patient: str) -> set[Key]:
        return {
            k for k, r in self.resources.items()
            if k[0] in PATIENT_LINKS and ("Patient", patient) in self.targets(r, PATIENT_LINKS[k[0]])
        }

    def record(self, focus: Key, members: set[Key], allowed_patients: set[str]) -> tuple[set[Key], set[Key]]:
        """(focus + members, what they reference minus other patients' data)."""
        matches = {focus} | members
        others = {p for p in self.patients if p not in allowed_patients}
        foreign = {("Patient", p) for p in others} | {k for p in others for k in self.patient_compartment(p)}
        included = {t for k in matches for t in self.targets(self.resources[k])} - matches - foreign
        return matches, included


@pytest.fixture(scope="module")
def data() -> Data:
    assert len(FILES) == 2
    d = Data()
    assert {k[0] for k in d.resources} <= set(PATIENT_LINKS) | NOT_IN_PATIENT_COMPARTMENT
    # the hand-written links cover every Synthea type the official Encounter compartment lists
    cds = json.loads(gzip.decompress((SHARED_DATA / "fhir-r4" / "profiles-resources.json.gz").read_bytes()))
    enc = next(e["resource"] for e in cds["entry"] if e["resource"].get("url") == "http://hl7.org/fhir/CompartmentDefinition/encounter")
    listed = {x["code"] for x in enc["resource"] if x.get("param")} - {"Encounter"}
    assert {k[0] for k in d.resources} & listed == set(ENCOUNTER_LINKS)
    return d


@pytest.fixture(scope="module")
def synthea(pg_admin_url: str, data: Data) -> Iterator[httpx.Client]:
    yield from imported_server(pg_admin_url, FILES)


def _walk(client: httpx.Client, path: str, params: dict[str, str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every page of a $everything answer: (bundles, entries in order)."""
    bundles, entries = [], []
    r = client.get(path, params=params)
    while True:
        assert r.status_code == 200, r.text
        bundle = r.json()
        assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset"
        bundles.append(bundle)
        entries += bundle.get("entry", [])
        nxt = next((link["url"] for link in bundle["link"] if link["relation"] == "next"), None)
        if nxt is None:
            return bundles, entries
        assert len(bundles) < 500
        r = client.get(nxt)


def _keys(entries: list[dict[str, Any]], mode: str | None = None) -> list[Key]:
    return [
        (e["resource"]["resourceType"], e["resource"]["id"])
        for e in entries
        if "resource" in e and (mode is None or e["search"]["mode"] == mode)
    ]


def test_patient_everything_is_the_patient_compartment_plus_references(synthea: httpx.Client, data: Data) -> None:
    """patient-operation-everything.html: the patient, its compartment (matches) and what they
    reference (Practitioner, Organization: includes); the other patient's data never appears."""
    for patient in data.patients:
        members = data.patient_compartment(patient)
        matches, included = data.record(("Patient", patient), members, {patient})
        assert {k[0] for k in included} <= {"Organization", "Practitioner"} and included
        bundles, entries = _walk(synthea, f"/Patient/{patient}/$everything", {"_count": "1000"})
        assert len(bundles) == 1
        assert bundles[0]["total"] == len(matches) + len(included)
        assert entries[0]["resource"]["resourceType"] == "Patient" and entries[0]["resource"]["id"] == patient
        got_matches, got_included = _keys(entries, "match"), _keys(entries, "include")
        assert len(got_matches) == len(set(got_matches)) and len(got_included) == len(set(got_included))
        assert set(got_matches) == matches
        assert set(got_included) == included
        other = [p for p in data.patients if p != patient]
        for p in other:
            assert not data.patient_compartment(p) & set(got_matches + got_included)
            assert ("Patient", p) not in got_matches + got_included


def test_type_and_count_paging(synthea: httpx.Client, data: Data) -> None:
    """patient-operation-everything.html _type and _count; http.html#paging: following `next`
    links returns every resource exactly once, each page at most _count entries."""
    patient = data.patients[1]
    matches, included = data.record(("Patient", patient), data.patient_compartment(patient), {patient})
    everything = matches | included
    bundles, entries = _walk(synthea, f"/Patient/{patient}/$everything", {"_count": "7"})
    keys = _keys(entries)
    assert len(bundles) == -(-len(everything) // 7)
    assert all(len(b.get("entry", [])) <= 7 for b in bundles)
    assert all(b["total"] == len(everything) for b in bundles)
    assert len(keys) == len(set(keys)) and set(keys) == everything
    assert all("_count=7" in link["url"] for b in bundles for link in b["link"])

    wanted = {"Observation", "Condition", "Practitioner"}
    bundles, entries = _walk(synthea, f"/Patient/{patient}/$everything", {"_type": "Observation,Condition,Practitioner", "_count": "25"})
    keys = _keys(entries)
    assert len(keys) == len(set(keys))
    assert set(keys) == {k for k in everything if k[0] in wanted}
    assert all("_type=Observation%2CCondition%2CPractitioner" in b["link"][0]["url"] for b in bundles)

    # POST with a Parameters body (operations.html#request)
    body = {"resourceType": "Parameters", "parameter": [{"name": "_type", "valueString": "Condition"}]}
    r = synthea.post(f"/Patient/{patient}/$everything", json=body)
    assert r.status_code == 200, r.text
    assert set(_keys(r.json().get("entry", []))) == {k for k in everything if k[0] == "Condition"}


def test_type_level_patient_everything_covers_every_patient(synthea: httpx.Client, data: Data) -> None:
    """patient-operation-everything.html: Patient/$everything (type level) is every patient's record."""
    expected: set[Key] = set()
    for patient in data.patients:
        matches, included = data.record(("Patient", patient), data.patient_compartment(patient), {patient})
        expected |= matches | included
    _, entries = _walk(synthea, "/Patient/$everything", {"_count": "200"})
    keys = _keys(entries)
    assert len(keys) == len(set(keys)) and set(keys) == expected


def test_encounter_everything(synthea: httpx.Client, data: Data) -> None:
    """encounter-operation-everything.html: the encounter, its Encounter compartment (resources whose
    encounter parameter points at it) and what those reference (the patient among them)."""
    patient = data.patients[0]
    encounters = sorted(k for k in data.patient_compartment(patient) if k[0] == "Encounter")
    enc = max(
        encounters,
        key=lambda e: sum(e in data.targets(r, ENCOUNTER_LINKS.get(k[0], [])) for k, r in data.resources.items()),
    )
    members = {k for k, r in data.resources.items() if k[0] in ENCOUNTER_LINKS and enc in data.targets(r, ENCOUNTER_LINKS[k[0]])}
    assert len(members) > 2
    matches, included = data.record(enc, members, {patient})
    assert ("Patient", patient) in included
    bundles, entries = _walk(synthea, f"/Encounter/{enc[1]}/$everything", {"_count": "5"})
    keys = _keys(entries)
    assert all(len(b.get("entry", [])) <= 5 for b in bundles)
    assert len(keys) == len(set(keys))
    assert set(_keys(entries, "match")) == matches
    assert set(_keys(entries, "include")) == included
    assert entries[0]["resource"]["id"] == enc[1]
    # Encounter $everything is defined at instance level only
    assert_outcome(synthea.get("/Encounter/$everything"), 404, "not-found")


def test_since_returns_only_resources_updated_after(synthea: httpx.Client, data: Data) -> None:
    """patient-operation-everything.html _since: only resources whose lastUpdated is at or after it."""
    patient = data.patients[0]
    obs = next(k for k in sorted(data.patient_compartment(patient)) if k[0] == "Observation")
    current = synthea.get(f"/Observation/{obs[1]}").json()
    current["status"] = "amended"
    r = synthea.put(f"/Observation/{obs[1]}", json=current)
    assert r.status_code == 200, r.text
    since = r.json()["meta"]["lastUpdated"]
    _, entries = _walk(synthea, f"/Patient/{patient}/$everything", {"_since": since})
    assert _keys(entries) == [obs]
    # the other patient's record has nothing that recent
    _, entries = _walk(synthea, f"/Patient/{data.patients[1]}/$everything", {"_since": since})
    assert entries == []
    assert_outcome(synthea.get(f"/Patient/{patient}/$everything", params={"_since": "yesterday"}), 400, "invalid")


def test_unknown_deleted_and_bad_parameters(synthea: httpx.Client, data: Data) -> None:
    """operations.html: an unknown instance is 404, a deleted one 410; a bad _type or _page is 400."""
    assert_outcome(synthea.get("/Patient/no-such-patient/$everything"), 404, "not-found")
    assert_outcome(synthea.get(f"/Patient/{data.patients[0]}/$everything", params={"_type": "Unicorn"}), 400, "invalid")
    assert_outcome(synthea.get(f"/Patient/{data.patients[0]}/$everything", params={"_page": "bm9wZQ"}), 400, "invalid")
    r = synthea.post("/Patient", json={"resourceType": "Patient", "gender": "other"})
    pid = r.json()["id"]
    assert synthea.delete(f"/Patient/{pid}").status_code == 204
    assert_outcome(synthea.get(f"/Patient/{pid}/$everything"), 410, "deleted")
