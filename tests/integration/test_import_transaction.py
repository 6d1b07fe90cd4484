"""``fhir-server import`` of transaction and batch Bundles through the bundle service.

Spec: https://hl7.org/fhir/R4/http.html#transaction (#trules: urn:uuid and conditional references),
http.html#batch, bundle.html#references.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import psycopg

from tests.conftest import make_database
from tests.integration.test_cli import run_cli


def _content(db: psycopg.Connection, rtype: str, rid: str) -> dict:
    row = db.execute("SELECT content FROM resource WHERE resource_type = %s AND id = %s", (rtype, rid)).fetchone()
    assert row is not None, f"{rtype}/{rid}"
    return row[0]  # type: ignore[no-any-return]


def test_import_transaction_with_conditional_references(tmp_path: Path, pg_admin_url: str) -> None:
    """http.html#trules: a transaction file whose conditional references name what a batch file
    creates (ifNoneExist) imports once that file is in (a second pass); urn:uuid ids are kept, so
    importing again adds versions, not duplicates."""
    url = make_database(pg_admin_url)
    org = f"org-{uuid.uuid4().hex[:8]}"
    p_id, o_id, e_id = (str(uuid.uuid4()) for _ in range(3))
    cond = f"Organization?identifier=urn:org|{org}"
    (tmp_path / "a_patient.json").write_text(json.dumps({
        "resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": f"urn:uuid:{o_id}", "request": {"method": "POST", "url": "Observation"},
             "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "pulse"},
                          "subject": {"reference": f"urn:uuid:{p_id}"}, "performer": [{"reference": cond}]}},
            {"fullUrl": f"urn:uuid:{p_id}", "request": {"method": "POST", "url": "Patient"},
             "resource": {"resourceType": "Patient", "managingOrganization": {"reference": cond}}},
            {"fullUrl": f"urn:uuid:{e_id}", "request": {"method": "POST", "url": "Encounter"},
             "resource": {"resourceType": "Encounter", "status": "finished", "class": {"code": "AMB"},
                          "subject": {"reference": f"urn:uuid:{p_id}"}, "serviceProvider": {"reference": cond}}},
        ]}))
    (tmp_path / "b_orgs.json").write_text(json.dumps({
        "resourceType": "Bundle", "type": "batch", "entry": [
            {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "request": {"method": "POST", "url": "Organization",
                                                                 "ifNoneExist": f"identifier=urn:org|{org}"},
             "resource": {"resourceType": "Organization", "name": org, "identifier": [{"system": "urn:org", "value": org}]}},
        ]}))
    first = run_cli(url, "import", str(tmp_path))
    assert first.returncode == 0, first.stdout + first.stderr
    assert "imported 4 resources from 2 files" in first.stdout
    with psycopg.connect(url, autocommit=True) as db:
        (org_id,) = db.execute("SELECT id FROM resource WHERE resource_type = 'Organization'").fetchone()  # type: ignore[misc]
        obs = _content(db, "Observation", o_id)
        assert obs["subject"]["reference"] == f"Patient/{p_id}"
        assert obs["performer"][0]["reference"] == f"Organization/{org_id}"
        assert _content(db, "Encounter", e_id)["serviceProvider"]["reference"] == f"Organization/{org_id}"
        again = run_cli(url, "import", str(tmp_path))
        assert again.returncode == 0, again.stdout + again.stderr
        counts = dict(db.execute("SELECT resource_type, count(*) FROM resource GROUP BY 1").fetchall())
        assert counts == {"Organization": 1, "Patient": 1, "Observation": 1, "Encounter": 1}
        assert _content(db, "Patient", p_id)["meta"]["versionId"] == "2"


def test_import_rolls_back_a_failed_transaction_file(tmp_path: Path, pg_admin_url: str) -> None:
    """http.html#transaction: a transaction file with a bad entry writes nothing and is reported
    with the entry; a conditional reference that nothing satisfies fails after the retry pass."""
    url = make_database(pg_admin_url)
    (tmp_path / "bad.json").write_text(json.dumps({
        "resourceType": "Bundle", "type": "transaction", "entry": [
            {"request": {"method": "POST", "url": "Patient"}, "resource": {"resourceType": "Patient"}},
            {"request": {"method": "POST", "url": "Patient"}, "resource": {"resourceType": "Patient", "gender": "robot"}},
        ]}))
    (tmp_path / "dangling.json").write_text(json.dumps({
        "resourceType": "Bundle", "type": "transaction", "entry": [
            {"request": {"method": "POST", "url": "Patient"},
             "resource": {"resourceType": "Patient", "managingOrganization": {"reference": "Organization?identifier=none|x"}}},
        ]}))
    result = run_cli(url, "import", str(tmp_path))
    assert result.returncode == 1
    assert "Bundle.entry[1].resource.gender" in result.stderr
    assert "Bundle.entry[0].resource.managingOrganization" in result.stderr
    with psycopg.connect(url, autocommit=True) as db:
        assert db.execute("SELECT count(*) FROM resource").fetchone() == (0,)
        assert db.execute("SELECT count(*) FROM resource_history").fetchone() == (0,)
