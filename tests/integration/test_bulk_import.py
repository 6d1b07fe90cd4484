"""Bulk import of NDJSON (``fhir-server import --bulk``, ``fhir_server/transfer/bulk_load.py``).

Spec: the NDJSON format of Bulk Data Access 2.0 (https://hl7.org/fhir/uv/bulkdata/export.html#file-request:
one resource per line), R4 http.html#update (create-on-update with the client's id, versions:
http.html#versioning), search.html (the index rows), and the round trip through
``$export`` (export.html#bulk-data-kick-off-request).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import uuid
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg
import pytest

from fhir_server.errors import InvalidResource
from fhir_server.services.validate import validation_issues
from fhir_server.storage.repository import INDEX_TABLES
from fhir_server.transfer.bulk_load import BulkLoader, LoadReport
from tests.conftest import SHARED_DATA, ServerProcess, issue_token, make_database, server_env
from tests.integration.test_bulk_export import ASYNC, _wait
from tests.integration.test_cli import run_cli

EXAMPLES = SHARED_DATA / "fhir-r4" / "examples"
SYNTHEA = SHARED_DATA / "synthea" / "smart-generated-sample-data"


def _load(url: str, paths: list[Path], tenant: str, **kw: Any) -> LoadReport:
    async def run() -> LoadReport:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            return await BulkLoader(conn, tenant, **kw).load(paths)

    return asyncio.run(run())


def _examples_ndjson(path: Path) -> int:
    files = sorted(EXAMPLES.glob("*.json"))
    with open(path, "wb") as f:
        f.writelines(orjson.dumps(orjson.loads(example.read_bytes())) + b"\n" for example in files)
    return len(files)


def _synthea_ndjson_gz(path: Path) -> dict[str, Any]:
    """One Synthea patient bundle as gzip'd NDJSON (``urn:uuid`` references made ``Type/id``, as a
    transaction would resolve them and an export holds them); its Patient."""
    text = gzip.decompress(min(SYNTHEA.glob("*.json.gz")).read_bytes()).decode()
    for entry in json.loads(text)["entry"]:
        if entry.get("fullUrl", "").startswith("urn:uuid:"):
            resource = entry["resource"]
            text = text.replace(f'"{entry["fullUrl"]}"', f'"{resource["resourceType"]}/{resource["id"]}"')
    resources = [e["resource"] for e in json.loads(text)["entry"]]
    with gzip.open(path, "wb") as f:
        for r in resources:
            f.write(orjson.dumps(r) + b"\n")
    return next(r for r in resources if r["resourceType"] == "Patient")


def _index_counts(db: psycopg.Connection, tenant: str) -> dict[str, int]:
    return {kind: db.execute(f"SELECT count(*) FROM idx_{kind} WHERE tenant_id = %s", (tenant,)).fetchone()[0]
            for kind in INDEX_TABLES}


@pytest.fixture(scope="module")
def source(pg_admin_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, httpx.Client]]:
    """A fresh database with its own server (tenant ``default``): what is bulk-loaded there is
    searched over HTTP and exported for the round trip."""
    url = make_database(pg_admin_url)
    blobs = tmp_path_factory.mktemp("blobs")
    srv = ServerProcess(server_env(DATABASE_URL=url, FHIR_BLOB_DIR=str(blobs)), ["--workers", "1"])
    srv.start()
    token = issue_token(url, tenant="default", role="admin")
    try:
        with httpx.Client(base_url=srv.base, timeout=60,
                          headers={"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"}) as c:
            yield url, c
    finally:
        srv.stop()


def test_examples_and_synthea_load_search_and_reimport_as_version_2(source: tuple[str, httpx.Client], tmp_path: Path) -> None:
    """The official R4 examples that validate and a Synthea patient (NDJSON, gzip'd) load with their
    own ids; search finds them (search.html: the idx_* rows exist); history holds version 1
    (http.html#history); loading again makes version 2 (http.html#update) with the same index rows,
    not duplicates; every version leaves an AuditEvent row (C, then U)."""
    url, client = source
    n_examples = _examples_ndjson(tmp_path / "examples.ndjson")
    patient = _synthea_ndjson_gz(tmp_path / "synthea.ndjson.gz")
    n_synthea = len(gzip.decompress((tmp_path / "synthea.ndjson.gz").read_bytes()).splitlines())

    report = _load(url, [tmp_path], "default")
    assert report.loaded + len(report.bad) == n_examples + n_synthea
    assert report.loaded > 600 and report.created == report.loaded and report.updated == 0
    lines = (tmp_path / "examples.ndjson").read_bytes().splitlines()
    for bad in report.bad:  # every refused line really is invalid (validation, or a SearchParameter check)
        assert bad.path.endswith("examples.ndjson"), bad
        resource = orjson.loads(lines[bad.line - 1])
        errors = [i for i in validation_issues(resource) if i.severity in ("error", "fatal")]
        assert errors or resource["resourceType"] in ("SearchParameter", "Binary"), bad

    family = patient["name"][0]["family"]
    found = client.get("/Patient", params={"family": family}).json()
    assert [e["resource"]["id"] for e in found["entry"]] == [patient["id"]]
    obs = client.get("/Observation", params={"subject": f"Patient/{patient['id']}", "_summary": "count"}).json()
    assert obs["total"] > 0
    assert client.get("/Patient", params={"_id": "example", "gender": "male"}).json()["total"] == 1
    assert len(client.get("/Patient/example/_history").json()["entry"]) == 1
    read = client.get("/Patient/example")
    assert read.status_code == 200 and read.headers["ETag"] == 'W/"1"' and read.json()["meta"]["versionId"] == "1"

    with psycopg.connect(url, autocommit=True) as db:
        before = _index_counts(db, "default")
        again = _load(url, [tmp_path], "default")
        assert again.loaded == report.loaded and again.updated == report.loaded and again.created == 0
        assert _index_counts(db, "default") == before  # old rows replaced, not duplicated
        versions = db.execute(
            "SELECT version_id, count(*) FROM resource WHERE tenant_id = 'default' GROUP BY 1").fetchall()
        assert versions == [(2, report.loaded)]
        assert db.execute("SELECT count(*) FROM resource_history WHERE tenant_id = 'default'").fetchone()[0] == 2 * report.loaded
        audit = dict(db.execute(
            "SELECT action || ' ' || interaction, count(*) FROM audit_event WHERE tenant_id = 'default' "
            "AND resource_type = 'Patient' AND resource_id = 'example' AND path = 'import' GROUP BY 1").fetchall())
        assert audit == {"C create": 1, "U update": 1}
    r = client.get("/Patient/example/_history").json()
    assert [e["resource"]["meta"]["versionId"] for e in r["entry"]] == ["2", "1"]
    assert client.get("/Patient", params={"family": family}).json()["total"] == 1


def test_bad_lines_are_reported_with_file_and_line(source: tuple[str, httpx.Client], tmp_path: Path) -> None:
    """A line that is not JSON, not a resource, or not valid R4 is reported as ``file:line`` and
    skipped; with ``strict`` the load stops there with an InvalidResource (400) error."""
    url, _ = source
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    path = tmp_path / "mixed.ndjson"
    path.write_text("\n".join([
        json.dumps({"resourceType": "Patient", "id": "good-1", "gender": "female"}),
        "{not json",
        json.dumps({"resourceType": "Patient", "id": "bad-gender", "gender": "sometimes"}),
        "",  # blank lines are skipped silently
        json.dumps([1, 2]),
        json.dumps({"resourceType": "Patient", "gender": "male"}),  # no id: gets a uuid
    ]) + "\n")
    report = _load(url, [path], tenant)
    assert report.loaded == 2
    assert [(b.path, b.line) for b in report.bad] == [(str(path), 2), (str(path), 3), (str(path), 5)]
    assert str(report.bad[1]).startswith(f"{path}:3: ") and "gender" in report.bad[1].reason
    with psycopg.connect(url, autocommit=True) as db:
        ids = [r[0] for r in db.execute("SELECT id FROM resource WHERE tenant_id = %s ORDER BY id", (tenant,))]
    assert "good-1" in ids and len(ids) == 2 and str(uuid.UUID(next(i for i in ids if i != "good-1"))) != ""

    strict_tenant = f"t-{uuid.uuid4().hex[:8]}"
    with pytest.raises(InvalidResource) as err:
        _load(url, [path], strict_tenant, strict=True)
    assert err.value.status == 400 and err.value.diagnostics.startswith(f"{path}:2: ")
    with psycopg.connect(url, autocommit=True) as db:
        assert db.execute("SELECT count(*) FROM resource WHERE tenant_id = %s", (strict_tenant,)).fetchone()[0] == 0


def test_tenant_isolation(source: tuple[str, httpx.Client], tmp_path: Path) -> None:
    """Everything a load writes carries its tenant: tenant B's rows exist, tenant A has none, and
    the server (tenant ``default``) does not see them."""
    url, client = source
    tenant_a, tenant_b = (f"t-{uuid.uuid4().hex[:8]}" for _ in range(2))
    rid = f"iso-{uuid.uuid4().hex[:8]}"
    (tmp_path / "p.ndjson").write_text(json.dumps(
        {"resourceType": "Patient", "id": rid, "name": [{"family": "Isolated"}]}) + "\n")
    assert _load(url, [tmp_path], tenant_b).loaded == 1
    with psycopg.connect(url, autocommit=True) as db:
        for table, col in [("resource", "id"), ("resource_history", "id"), ("audit_event", "resource_id"),
                           ("idx_string", "resource_id"), ("idx_token", "resource_id")]:
            rows = dict(db.execute(f"SELECT tenant_id, count(*) FROM {table} WHERE {col} = %s GROUP BY 1", (rid,)).fetchall())
            assert rows == {tenant_b: rows.get(tenant_b)} and rows[tenant_b] >= 1, table
        assert db.execute("SELECT count(*) FROM resource WHERE tenant_id = %s", (tenant_a,)).fetchone()[0] == 0
    assert client.get(f"/Patient/{rid}").status_code == 404


def test_cli_bulk_import(pg_admin_url: str, tmp_path: Path) -> None:
    """``fhir-server import --bulk FILE --tenant T``: resources/s at the end; exit 1 with bad lines."""
    url = make_database(pg_admin_url)
    (tmp_path / "Patient.ndjson").write_text(
        json.dumps({"resourceType": "Patient", "id": "cli-1"}) + "\n" + json.dumps({"resourceType": "Patient", "id": "cli-2"}) + "\n")
    out = run_cli(url, "import", "--bulk", str(tmp_path), "--tenant", "clinic")
    assert out.returncode == 0, out.stderr
    assert "imported 2 resources (2 new, 0 new versions)" in out.stdout and "resources/s" in out.stdout
    (tmp_path / "Bad.ndjson").write_text("{}\n")
    out = run_cli(url, "import", "--bulk", str(tmp_path / "Bad.ndjson"))
    assert out.returncode == 1 and f"{tmp_path / 'Bad.ndjson'}:1:" in out.stderr
    with psycopg.connect(url, autocommit=True) as db:
        assert db.execute("SELECT count(*) FROM resource WHERE tenant_id = 'clinic'").fetchone()[0] == 2


def _without_server_meta(content: dict[str, Any]) -> dict[str, Any]:
    meta = {k: v for k, v in (content.get("meta") or {}).items() if k not in ("versionId", "lastUpdated")}
    out = {k: v for k, v in content.items() if k != "meta"}
    if meta:
        out["meta"] = meta
    return out


def _current(url: str) -> dict[tuple[str, str], dict[str, Any]]:
    with psycopg.connect(url, autocommit=True) as db:
        rows = db.execute("SELECT resource_type, id, content::text FROM resource "
                          "WHERE tenant_id = 'default' AND NOT deleted").fetchall()
    # decimals parsed exactly, so 1.50 and 1.5 would differ
    return {(rt, rid): json.loads(text, parse_float=Decimal) for rt, rid, text in rows}


def _index_rows(url: str) -> dict[str, Counter[str]]:
    """Every idx_* row of the tenant as text (a NaN numeric is then equal to itself); for idx_text
    only its owner and parameter (the ``_content`` document holds meta.lastUpdated, restamped)."""
    with psycopg.connect(url, autocommit=True) as db:
        return {kind: Counter(r[0] for r in db.execute(
            f"SELECT {'(resource_type, resource_id, param)' if kind == 'text' else 'i'}::text "
            f"FROM idx_{kind} i WHERE tenant_id = 'default'")) for kind in INDEX_TABLES}


def test_export_then_import_round_trip(source: tuple[str, httpx.Client], pg_admin_url: str, tmp_path: Path) -> None:
    """export.html: a system ``$export`` of the source server, its NDJSON files bulk-loaded into a
    FRESH database, reproduces every current resource: same (type, id) set, and each resource's
    JSON equal to the source's (decimals compared exactly) with only ``meta.versionId`` and
    ``meta.lastUpdated`` left out (the load stamps them anew); the index rows are the same too."""
    url, client = source
    created = []
    for resource in [
        {"resourceType": "Patient", "name": [{"family": "Roundtrip", "given": ["Ünïcode", "名前"]}],
         "birthDate": "1970-01-01", "extension": [{"url": "http://example.org/x", "valueDecimal": 1.25}]},
        {"resourceType": "Observation", "status": "final", "code": {"text": "weight"},
         "valueQuantity": {"value": 72.5, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"},
         "meta": {"tag": [{"system": "http://example.org/tags", "code": "rt"}]}},
    ]:
        r = client.post(f"/{resource['resourceType']}", json=resource)
        assert r.status_code == 201, r.text
        created.append((resource["resourceType"], r.json()["id"]))
    deleted = client.post("/Basic", json={"resourceType": "Basic", "code": {"text": "gone"}}).json()["id"]
    assert client.delete(f"/Basic/{deleted}").status_code == 204

    kick = client.get("/$export", headers=ASYNC)
    assert kick.status_code == 202, kick.text
    done = _wait(client, kick.headers["Content-Location"], timeout=180)
    assert done.status_code == 200, done.text
    out = tmp_path / "export"
    out.mkdir()
    for i, item in enumerate(done.json()["output"]):
        r = client.get(item["url"])
        assert r.status_code == 200
        (out / f"{item['type']}-{i}.ndjson").write_bytes(r.content)

    target = make_database(pg_admin_url)
    report = _load(target, [out], "default")
    assert report.bad == [] and report.created == report.loaded

    want, got = _current(url), _current(target)
    assert set(got) == set(want) and len(got) == report.loaded
    assert all(key in got for key in created) and ("Basic", deleted) not in got
    for key, content in want.items():
        assert _without_server_meta(got[key]) == _without_server_meta(content), key
        assert got[key]["meta"]["versionId"] == "1"
    src, dst = _index_rows(url), _index_rows(target)
    for kind in src:  # the search index rows are the same as well
        assert dst[kind] == src[kind], (kind, list((src[kind] - dst[kind]).items())[:3], list((dst[kind] - src[kind]).items())[:3])
