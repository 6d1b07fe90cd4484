"""`fhir-server import` and `fhir-server export` against the real database."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx

from tests.conftest import SHARED_DATA, ServerProcess, server_env


def run_cli(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fhir_server.cli", *args],
        env=server_env(DATABASE_URL=database_url), capture_output=True, text=True, timeout=600, check=False,
    )


def test_import_bundles_and_ndjson_reports_bad_files(tmp_path: Path, database_url: str, server: ServerProcess, client: httpx.Client) -> None:
    """Bundles and NDJSON are imported with a final count; a bad file is reported and the good ones kept."""
    good = tmp_path / "in"
    good.mkdir()
    bundle = {
        "resourceType": "Bundle", "type": "transaction",
        "entry": [
            {"fullUrl": "urn:uuid:11111111-2222-3333-4444-555555555555",
             "resource": {"resourceType": "Patient", "name": [{"family": "Import"}]},
             "request": {"method": "POST", "url": "Patient"}},
            {"fullUrl": "urn:uuid:66666666-2222-3333-4444-555555555555",
             "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "pulse"},
                          "subject": {"reference": "urn:uuid:11111111-2222-3333-4444-555555555555"}},
             "request": {"method": "POST", "url": "Observation"}},
        ],
    }
    (good / "bundle.json").write_text(json.dumps(bundle))
    (good / "orgs.ndjson").write_text(
        "\n".join(json.dumps({"resourceType": "Organization", "id": f"imp-org-{i}", "name": f"Org {i}"}) for i in range(3))
    )
    (good / "bad.json").write_text(json.dumps({"resourceType": "Patient", "gender": "robot"}))
    result = run_cli(database_url, "import", str(good))
    assert result.returncode == 1, result.stderr
    assert "imported 5 resources from 2 files" in result.stdout
    assert "bad.json" in result.stderr and "Patient.gender" in result.stderr
    obs = client.get("/Observation/66666666-2222-3333-4444-555555555555").json()
    assert obs["subject"]["reference"] == "Patient/11111111-2222-3333-4444-555555555555"
    assert client.get("/Organization/imp-org-2").status_code == 200


def test_import_synthea_bundle_then_export(tmp_path: Path, database_url: str) -> None:
    """A real Synthea patient record imports whole; export writes NDJSON per type."""
    folder = SHARED_DATA / "synthea" / "smart-generated-sample-data"
    sample = sorted(folder.glob("*.json.gz"))
    sample = [p for p in sample if "Information" not in p.name][:1]
    result = run_cli(database_url, "import", *map(str, sample))
    assert result.returncode == 0, result.stdout + result.stderr
    out = tmp_path / "export"
    exported = run_cli(database_url, "export", str(out), "--type", "Patient", "--type", "Observation")
    assert exported.returncode == 0, exported.stderr
    lines = (out / "Patient.ndjson").read_text().splitlines()
    assert lines and all(json.loads(line)["resourceType"] == "Patient" for line in lines)
    assert (out / "Observation.ndjson").exists()
