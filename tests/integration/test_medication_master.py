"""Medication master (issue 8): project profiles and extensions for Allopathic, Ayurvedic and Homeopathic
medicines over real HTTP — profile-claimed writes (http.html#update: 422 when "the proposed resource
violated applicable FHIR profiles"), ``$validate?profile=`` (resource-operation-validate.html), the
definitions served read-only (conformance resources), the project SearchParameters
(search.html#custom) and ``Medication/$fuzzy-search``. See fhir_server/profiles/README.md.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterator

import httpx
import psycopg
import pytest

from tests.conftest import ServerProcess, issue_token
from tests.integration.test_errors import assert_outcome, count_rows
from tests.integration.test_tenants import cli

NS = "https://fhir-server.example.org/fhir/"
SD = NS + "StructureDefinition/"
CS = NS + "CodeSystem/"
AYURVEDIC, HOMEOPATHIC, ALLOPATHIC = SD + "medication-ayurvedic", SD + "medication-homeopathic", SD + "medication-allopathic"
UCUM = "http://unitsofmeasure.org"


def ext(name: str, key: str, value: object) -> dict:
    return {"url": SD + name, key: value}


def ayurvedic(name: str = "Triphala Churna", marker: str = "") -> dict:
    return {
        "resourceType": "Medication", "meta": {"profile": [AYURVEDIC]},
        "code": {"text": name},
        "form": {"coding": [{"system": CS + "ayurveda-dosage-form", "code": "churna"}]},
        "extension": [
            ext("medication-system-of-medicine", "valueCode", "ayurvedic"),
            ext("medication-generic-name", "valueString", "Triphala" + marker),
            ext("medication-rasa", "valueCode", "tikta"),
            ext("medication-rasa", "valueCode", "kashaya"),
            ext("medication-guna", "valueCode", "laghu"),
            ext("medication-virya", "valueCode", "ushna"),
            ext("medication-vipaka", "valueCode", "madhura"),
            ext("medication-prabhava", "valueString", "rasayana"),
            ext("medication-dosha-effect", "valueCode", "vata-pacifies"),
            ext("medication-anupana", "valueCodeableConcept", {"coding": [{"system": CS + "ayurveda-anupana", "code": "madhu"}]}),
        ],
    }


def homeopathic(name: str = "Arnica montana", potency: str = "30C") -> dict:
    return {
        "resourceType": "Medication", "meta": {"profile": [HOMEOPATHIC]},
        "code": {"text": name},
        "extension": [
            ext("medication-system-of-medicine", "valueCode", "homeopathic"),
            ext("medication-potency", "valueString", potency),
            ext("medication-source-kingdom", "valueCode", "plant"),
        ],
    }


def allopathic(name: str = "Paracetamol 500 mg tablet") -> dict:
    return {
        "resourceType": "Medication", "meta": {"profile": [ALLOPATHIC]},
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "322236009", "display": name}], "text": name},
        "form": {"coding": [{"system": "http://snomed.info/sct", "code": "385055001", "display": "Tablet"}]},
        "extension": [
            ext("medication-system-of-medicine", "valueCode", "allopathic"),
            ext("medication-generic-name", "valueString", "Paracetamol"),
            ext("medication-route", "valueCodeableConcept", {"coding": [{"system": "http://snomed.info/sct", "code": "26643006", "display": "Oral"}]}),
        ],
        "ingredient": [{
            "itemCodeableConcept": {"text": "Paracetamol"},
            "strength": {"numerator": {"value": 500, "unit": "mg", "system": UCUM, "code": "mg"},
                         "denominator": {"value": 1, "unit": "tablet", "system": UCUM, "code": "{tbl}"}},
        }],
    }


def errors(body: dict) -> list[tuple[str, str]]:
    return [(i["code"], (i.get("expression") or [""])[0]) for i in body["issue"] if i["severity"] == "error"]


def _validate(client: httpx.Client, resource: dict, profile: str) -> dict:
    params = {"resourceType": "Parameters", "parameter": [
        {"name": "resource", "resource": resource}, {"name": "profile", "valueUri": profile}]}
    return assert_outcome(client.post("/Medication/$validate", json=params), 200)


def _invalid_cases() -> list[tuple[str, dict, str, tuple[str, str], str]]:
    """(id, resource, profile, (code, expression), text in diagnostics)."""
    cases = []
    bad_rasa = ayurvedic()
    bad_rasa["extension"][2]["valueCode"] = "sweetish"
    cases.append(("unknown-rasa", bad_rasa, AYURVEDIC, ("code-invalid", "Medication.extension[2].valueCode"), "ayurveda-rasa"))
    bad_form = ayurvedic()
    bad_form["form"]["coding"][0]["code"] = "syrup"
    cases.append(("unknown-ayurvedic-form", bad_form, AYURVEDIC, ("code-invalid", "Medication.form.coding[0].code"), "syrup"))
    potency_on_ayurvedic = ayurvedic()
    potency_on_ayurvedic["extension"].append(ext("medication-potency", "valueString", "30C"))
    cases.append(("homeopathic-attr-on-ayurvedic", potency_on_ayurvedic, AYURVEDIC, ("structure", "Medication.extension[10]"), "medication-potency"))
    for potency in ("7M", "35LM", "LM35", "1000C", "30c"):
        cases.append((f"potency-{potency}", homeopathic(potency=potency), HOMEOPATHIC, ("value", "Medication.extension[1].valueString"), potency))
    rasa_on_homeo = homeopathic()
    rasa_on_homeo["extension"].append(ext("medication-rasa", "valueCode", "tikta"))
    cases.append(("ayurvedic-attr-on-homeopathic", rasa_on_homeo, HOMEOPATHIC, ("structure", "Medication.extension[3]"), "medication-rasa"))
    no_potency = homeopathic()
    del no_potency["extension"][1]
    cases.append(("missing-potency", no_potency, HOMEOPATHIC, ("required", "Medication.extension"), "medication-potency"))
    wrong_scale = homeopathic(potency="200C")
    wrong_scale["extension"].append(ext("medication-potency-scale", "valueCode", "LM"))
    cases.append(("scale-disagrees", wrong_scale, HOMEOPATHIC, ("value", "Medication.extension[3].valueCode"), "200C"))
    wrong_system = homeopathic()
    wrong_system["extension"][0]["valueCode"] = "ayurvedic"
    cases.append(("wrong-system", wrong_system, HOMEOPATHIC, ("value", "Medication.extension[0].valueCode"), "homeopathic"))
    not_ucum = allopathic()
    not_ucum["ingredient"][0]["strength"]["numerator"]["system"] = "http://example.org/units"
    cases.append(("strength-not-ucum", not_ucum, ALLOPATHIC, ("value", "Medication.ingredient[0].strength.numerator.system"), UCUM))
    no_strength = allopathic()
    del no_strength["ingredient"][0]["strength"]
    cases.append(("strength-missing", no_strength, ALLOPATHIC, ("required", "Medication.ingredient[0].strength"), "strength"))
    guna_on_allo = allopathic()
    guna_on_allo["extension"].append(ext("medication-guna", "valueCode", "guru"))
    cases.append(("ayurvedic-attr-on-allopathic", guna_on_allo, ALLOPATHIC, ("structure", "Medication.extension[3]"), "medication-guna"))
    return cases


INVALID = _invalid_cases()


@pytest.mark.parametrize("resource", [ayurvedic(), homeopathic(), homeopathic(potency="LM1"), homeopathic(potency="1M"),
                                      homeopathic(potency="6X"), allopathic()], ids=["ayur", "homeo-30C", "homeo-LM1", "homeo-1M", "homeo-6X", "allo"])
def test_valid_medications_are_stored_and_validate_ok(client: httpx.Client, resource: dict) -> None:
    """profiling.html: a resource conforming to the profile it claims is accepted (201) and $validate says All OK."""
    profile = resource["meta"]["profile"][0]
    body = _validate(client, resource, profile)
    assert body["issue"][-1]["diagnostics"].startswith("All OK"), body
    r = client.post("/Medication", json=resource)
    assert r.status_code == 201, r.text


@pytest.mark.parametrize(("case", "resource", "profile", "error", "text"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_medication_write_is_422_naming_the_element(
    client: httpx.Client, db: psycopg.Connection, case: str, resource: dict, profile: str, error: tuple[str, str], text: str
) -> None:
    """http.html#create: a resource violating the profile it claims is 422 with an OperationOutcome whose
    issue names the element at fault; nothing is written."""
    before = count_rows(db)
    body = assert_outcome(client.post("/Medication", json=resource), 422)
    assert error in errors(body), body
    assert any(text in i["diagnostics"] for i in body["issue"]), body
    assert count_rows(db) == before


@pytest.mark.parametrize(("case", "resource", "profile", "error", "text"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_medication_validate_with_profile(
    client: httpx.Client, case: str, resource: dict, profile: str, error: tuple[str, str], text: str
) -> None:
    """resource-operation-validate.html `profile`: the same issues, 200, for a resource not claiming it."""
    unclaimed = copy.deepcopy(resource)
    del unclaimed["meta"]
    body = _validate(client, unclaimed, profile)
    assert error in errors(body), body


def test_unclaimed_write_is_validated_as_before(client: httpx.Client) -> None:
    """validation.html / profiling.html: writes not claiming a project profile (meta.profile) get R4
    validation only (a made-up potency is just an extension value)."""
    r = homeopathic(potency="7M")
    del r["meta"]
    assert client.post("/Medication", json=r).status_code == 201


def test_update_claiming_a_profile_is_checked(client: httpx.Client) -> None:
    """http.html#update: an update claiming a profile is checked like a create (422)."""
    created = client.post("/Medication", json=homeopathic()).json()
    changed = {**created, "extension": homeopathic(potency="7M")["extension"]}
    body = assert_outcome(client.put(f"/Medication/{created['id']}", json=changed), 422)
    assert ("value", "Medication.extension[1].valueString") in errors(body)


def test_definitions_are_served(client: httpx.Client) -> None:
    """conformance-module.html, http.html#read, search.html: the packaged StructureDefinitions, CodeSystems
    and ValueSets are readable and searchable in every tenant."""
    r = client.get("/StructureDefinition/medication-homeopathic")
    assert r.status_code == 200, r.text
    assert r.json()["url"] == HOMEOPATHIC
    r = client.get("/StructureDefinition", params={"url": SD + "medication-rasa"})
    assert [e["resource"]["id"] for e in r.json()["entry"]] == ["medication-rasa"]
    r = client.get("/StructureDefinition", params={"type": "Medication", "name": "HomeopathicMedication"})
    assert [e["resource"]["id"] for e in r.json()["entry"]] == ["medication-homeopathic"]
    r = client.get("/StructureDefinition", params={"type": "Medication", "_count": "50"})
    assert {e["resource"]["id"] for e in r.json()["entry"]} >= {"medication-ayurvedic", "medication-homeopathic", "medication-allopathic"}
    cs = client.get("/CodeSystem/ayurveda-rasa").json()
    assert {c["code"] for c in cs["concept"]} == {"madhura", "amla", "lavana", "katu", "tikta", "kashaya"}
    guna = client.get("/CodeSystem", params={"url": CS + "ayurveda-guna"}).json()
    assert len(guna["entry"][0]["resource"]["concept"]) == 20
    vs = client.get("/ValueSet", params={"url": NS + "ValueSet/homeopathy-potency-scale"}).json()
    assert vs["total"] == 1


def test_definitions_are_read_only(client: httpx.Client) -> None:
    """http.html#update, http.html#delete, http.html#create: the packaged definitions cannot be changed,
    deleted, or shadowed by a resource with the same url (403 OperationOutcome)."""
    sd = client.get("/StructureDefinition/medication-rasa").json()
    assert_outcome(client.put("/StructureDefinition/medication-rasa", json={**sd, "title": "changed"}), 403)
    assert_outcome(client.delete("/StructureDefinition/medication-rasa"), 403)
    copy_ = {k: v for k, v in sd.items() if k not in ("id", "meta")}
    assert_outcome(client.post("/StructureDefinition", json=copy_), 403)
    assert client.get("/StructureDefinition/medication-rasa").json()["title"] == sd["title"]


@pytest.fixture(scope="module")
def catalogue(client: httpx.Client) -> dict[str, str]:
    """A small medication master (ids by label), with a unique marker in the generic names."""
    marker = uuid.uuid4().hex[:6]
    items = {
        "triphala": ayurvedic("Triphala Churna " + marker, marker),
        "ashwagandha": ayurvedic("Ashwagandharishta " + marker, marker),
        "arnica": homeopathic("Arnica montana " + marker, "30C"),
        "belladonna": homeopathic("Belladonna " + marker, "200C"),
        "nux": homeopathic("Nux vomica " + marker, "LM1"),
        "paracetamol": allopathic("Paracetamol 500 mg tablet " + marker),
    }
    ash = items["ashwagandha"]["extension"]
    ash[2]["valueCode"], ash[5]["valueCode"] = "madhura", "sheeta"
    items["ashwagandha"]["form"]["coding"][0]["code"] = "arishta"
    ids = {}
    for label, res in items.items():
        r = client.post("/Medication", json=res)
        assert r.status_code == 201, r.text
        ids[label] = r.json()["id"]
    ids["marker"] = marker
    return ids


def _found(client: httpx.Client, catalogue: dict[str, str], **params: str) -> set[str]:
    ids = {v: k for k, v in catalogue.items()}
    r = client.get("/Medication", params={**params, "_count": "200"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert not [e for e in body.get("entry", []) if e["search"]["mode"] == "outcome"], body  # no ignored parameter
    return {ids[e["resource"]["id"]] for e in body.get("entry", []) if e["resource"]["id"] in ids}


@pytest.mark.parametrize(("params", "expected"), [
    ({"system-of-medicine": "ayurvedic"}, {"triphala", "ashwagandha"}),
    ({"system-of-medicine": "homeopathic"}, {"arnica", "belladonna", "nux"}),
    ({"rasa": "tikta"}, {"triphala"}),
    ({"rasa": "madhura"}, {"ashwagandha"}),
    ({"guna": "laghu"}, {"triphala", "ashwagandha"}),
    ({"virya": "sheeta"}, {"ashwagandha"}),
    ({"vipaka": "madhura"}, {"triphala", "ashwagandha"}),
    ({"dosha-effect": "vata-pacifies"}, {"triphala", "ashwagandha"}),
    ({"anupana": "madhu"}, {"triphala", "ashwagandha"}),
    ({"dosage-form": "arishta"}, {"ashwagandha"}),
    ({"dosage-form": CS + "ayurveda-dosage-form|churna"}, {"triphala"}),
    ({"potency": "30C"}, {"arnica"}),
    ({"potency": "LM1,200C"}, {"belladonna", "nux"}),
    ({"source-kingdom": "plant"}, {"arnica", "belladonna", "nux"}),
    ({"route": "http://snomed.info/sct|26643006"}, {"paracetamol"}),
], ids=lambda v: str(v))
def test_search_by_extension_values(client: httpx.Client, catalogue: dict[str, str], params: dict, expected: set[str]) -> None:
    """search.html#token over the project SearchParameters (extension values, Medication.form)."""
    assert _found(client, catalogue, **params) == expected


def test_search_by_name_prefix_and_contains(client: httpx.Client, catalogue: dict[str, str]) -> None:
    """search.html#string: `name` (code.text / coding.display) and `generic-name` by prefix and :contains."""
    m = catalogue["marker"]
    assert _found(client, catalogue, name="triph") == {"triphala"}
    assert _found(client, catalogue, name="PARACETAMOL 500") == {"paracetamol"}
    assert _found(client, catalogue, **{"name:contains": "montana " + m}) == {"arnica"}
    assert _found(client, catalogue, **{"name:contains": m}) == {"triphala", "ashwagandha", "arnica", "belladonna", "nux", "paracetamol"}
    assert _found(client, catalogue, **{"generic-name": "triphala" + m}) == {"triphala", "ashwagandha"}
    assert "paracetamol" in _found(client, catalogue, **{"generic-name": "paracet"})


@pytest.mark.parametrize(("typed", "expected"), [
    ("paracetmol", "paracetamol"),  # a letter missing
    ("parcetamol", "paracetamol"),
    ("trifala", "triphala"),  # ph spelt f
    ("belladona", "belladonna"),
    ("ashwaganda", "ashwagandha"),
    ("arnika", "arnica"),
])
def test_fuzzy_name_search_tolerates_misspellings(client: httpx.Client, catalogue: dict[str, str], typed: str, expected: str) -> None:
    """Medication/$fuzzy-search (this server's operation): a misspelt name still finds the medication, best first."""
    ids = {v: k for k, v in catalogue.items()}
    r = client.get("/Medication/$fuzzy-search", params={"name": f"{typed}", "_count": "50"})
    assert r.status_code == 200, r.text
    bundle = r.json()
    assert bundle["type"] == "searchset"
    found = [ids.get(e["resource"]["id"]) for e in bundle["entry"] if e["search"]["mode"] == "match"]
    assert expected in found, found
    scores = [e["search"]["score"] for e in bundle["entry"] if e["search"]["mode"] == "match"]
    assert scores == sorted(scores, reverse=True)


def test_fuzzy_search_with_criteria_and_errors(client: httpx.Client, catalogue: dict[str, str]) -> None:
    """search.html#string (this server's $fuzzy-search): it combines with ordinary criteria; a missing
    name or a bad _count is a 400 OperationOutcome naming the parameter."""
    ids = {v: k for k, v in catalogue.items()}
    r = client.get("/Medication/$fuzzy-search", params={"name": "trifala", "system-of-medicine": "homeopathic"})
    assert all(ids.get(e["resource"]["id"]) not in ("triphala", "ashwagandha") for e in r.json()["entry"])
    r = client.get("/Medication/$fuzzy-search", params={"name": "trifala", "rasa": "tikta"})
    assert "triphala" in {ids.get(e["resource"]["id"]) for e in r.json()["entry"]}
    body = assert_outcome(client.get("/Medication/$fuzzy-search"), 400)
    assert body["issue"][0]["expression"] == ["name"], body
    body = assert_outcome(client.get("/Medication/$fuzzy-search", params={"name": "trifala", "_count": "x"}), 400)
    assert body["issue"][0]["expression"] == ["_count"], body


def _letters() -> str:
    """A unique run of letters (digits would change the trigrams a name is matched on)."""
    return "".join(chr(ord("g") + int(c, 16)) for c in uuid.uuid4().hex[:6])


def _fuzzy_ids(client: httpx.Client, name: str, **criteria: str) -> list[str]:
    r = client.get("/Medication/$fuzzy-search", params={"name": name, "_count": "20", **criteria})
    assert r.status_code == 200, r.text
    return [e["resource"]["id"] for e in r.json()["entry"] if e["search"]["mode"] == "match"]


def test_fuzzy_search_follows_renames_through_the_stored_fold(client: httpx.Client, database_url: str) -> None:
    """$fuzzy-search: the folded name is stored with the index rows at write time (migration 0018) and
    replaced on update (http.html#update), so a renamed medication is found by its new name only."""
    tok = _letters()
    r = client.post("/Medication", json=homeopathic(f"Qelshadhi{tok} 30C", "30C"))
    assert r.status_code == 201, r.text
    mid = r.json()["id"]
    assert mid in _fuzzy_ids(client, f"qelsadi{tok}")  # sh → s, dh → d
    with psycopg.connect(database_url) as conn:
        folds = conn.execute(
            "SELECT name_fold, medication_name_fold(value_norm) FROM idx_string"
            " WHERE resource_type = 'Medication' AND resource_id = %s AND param = 'name'",
            (mid,),
        ).fetchall()
    assert len(folds) == 1 and folds[0][0] == folds[0][1] and folds[0][0].startswith("qelsadi")
    renamed = homeopathic(f"Vormilex{tok} 30C", "30C") | {"id": mid}
    assert client.put(f"/Medication/{mid}", json=renamed).status_code == 200
    assert mid not in _fuzzy_ids(client, f"qelsadi{tok}")
    assert mid in _fuzzy_ids(client, f"vormilx{tok}")
    assert mid in _fuzzy_ids(client, f"vormilx{tok}", **{"system-of-medicine": "homeopathic"})
    assert mid not in _fuzzy_ids(client, f"vormilx{tok}", **{"system-of-medicine": "ayurvedic"})


def test_fuzzy_search_orders_equal_scores_by_closeness(client: httpx.Client) -> None:
    """$fuzzy-search: names scoring alike (both start with the value: score 1) come closest whole name first."""
    tok = _letters()
    long_id = client.post("/Medication", json=homeopathic(f"Zentavo{tok} montana rubra major 200C", "200C")).json()["id"]
    short_id = client.post("/Medication", json=homeopathic(f"Zentavo{tok} 6C", "6C")).json()["id"]
    r = client.get("/Medication/$fuzzy-search", params={"name": f"zentavo{tok}"})
    entries = [e for e in r.json()["entry"] if e["search"]["mode"] == "match"]
    assert [e["resource"]["id"] for e in entries][:2] == [short_id, long_id]
    assert [e["search"]["score"] for e in entries][:2] == [1.0, 1.0]


@pytest.fixture(scope="module")
def other_tenant(server: ServerProcess, database_url: str) -> Iterator[httpx.Client]:
    tid = "med" + uuid.uuid4().hex[:8]
    cli(database_url, "tenant", "create", tid, "--name", "Other Hospital")
    token = issue_token(database_url, tenant=tid, role="admin")
    with httpx.Client(base_url=f"{server.base}/{tid}", headers={"Authorization": f"Bearer {token}"}, timeout=30) as c:
        yield c


def test_tenant_isolation_of_data_definitions_everywhere(
    client: httpx.Client, other_tenant: httpx.Client, catalogue: dict[str, str]
) -> None:
    """Tenants: medications stay in their tenant (search and fuzzy), the definitions are served in every tenant."""
    m = catalogue["marker"]
    assert other_tenant.get("/Medication", params={"name:contains": m}).json()["total"] == 0
    assert other_tenant.get("/Medication/$fuzzy-search", params={"name": "trifala " + m}).json()["total"] == 0
    assert other_tenant.get(f"/Medication/{catalogue['arnica']}").status_code == 404
    r = other_tenant.get("/StructureDefinition/medication-ayurvedic")
    assert r.status_code == 200 and r.json()["url"] == AYURVEDIC
    assert other_tenant.get("/ValueSet", params={"url": NS + "ValueSet/ayurveda-rasa"}).json()["total"] == 1
    # profile checks apply in every tenant
    bad = homeopathic(potency="7M")
    assert_outcome(other_tenant.post("/Medication", json=bad), 422)
