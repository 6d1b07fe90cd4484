"""Bulk Data Access 2.0 $export (https://hl7.org/fhir/uv/bulkdata/export.html): kick-off, status,
manifest, NDJSON files, cancel, requester-only access, durability across a restart."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import httpx
import psycopg
import psycopg.types.json
import pytest

from tests.conftest import ServerProcess, issue_token, server_env
from tests.integration.test_errors import assert_outcome

TAG = "http://example.org/fhir/bulk-test"
ASYNC = {"Prefer": "respond-async", "Accept": "application/fhir+json"}


def _create(client: httpx.Client, resource: dict, tag: str) -> str:
    resource = {**resource, "meta": {"tag": [{"system": TAG, "code": tag}]}}
    r = client.post(f"/{resource['resourceType']}", json=resource)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _data(client: httpx.Client, tag: str) -> dict[str, list[str]]:
    p1 = _create(client, {"resourceType": "Patient", "name": [{"family": "One"}]}, tag)
    p2 = _create(client, {"resourceType": "Patient", "name": [{"family": "Two"}]}, tag)
    obs = [
        _create(client, {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                         "subject": {"reference": f"Patient/{p}"}}, tag)
        for p in (p1, p1, p2)
    ]
    return {"patients": [p1, p2], "observations": obs}


def _wait(client: httpx.Client, status_url: str, timeout: float = 60) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = client.get(status_url)
        if r.status_code != 202:
            return r
        assert "X-Progress" in r.headers and "Retry-After" in r.headers
        time.sleep(0.2)
    raise AssertionError("export did not finish")


def _export(client: httpx.Client, path: str, params: dict[str, str]) -> dict:
    r = client.get(path, params=params, headers=ASYNC)
    assert r.status_code == 202, r.text
    status_url = r.headers["Content-Location"]
    done = _wait(client, status_url)
    assert done.status_code == 200, done.text
    assert done.headers["content-type"].startswith("application/json") and "Expires" in done.headers
    manifest = done.json()
    manifest["_status"] = status_url
    return manifest


def _lines(client: httpx.Client, manifest: dict) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for item in manifest["output"]:
        r = client.get(item["url"])
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/fhir+ndjson")
        rows = [json.loads(line) for line in r.text.splitlines()]
        assert len(rows) == item["count"] and all(x["resourceType"] == item["type"] for x in rows)
        out.setdefault(item["type"], []).extend(rows)
    return out


def _filters(tag: str, *types: str) -> dict[str, str]:
    return {"_type": ",".join(types), "_typeFilter": ",".join(f"{t}?_tag={TAG}|{tag}" for t in types)}


def test_system_export_manifest_and_files(client: httpx.Client) -> None:
    """export.html#bulk-data-kick-off-request / #response---complete-status / #file-request."""
    tag = uuid.uuid4().hex
    data = _data(client, tag)
    manifest = _export(client, "/$export", _filters(tag, "Patient", "Observation"))
    assert manifest["requiresAccessToken"] is True and manifest["error"] == []
    assert manifest["request"].endswith("$export?" + manifest["request"].split("?", 1)[1])
    got = _lines(client, manifest)
    assert sorted(r["id"] for r in got["Patient"]) == sorted(data["patients"])
    assert sorted(r["id"] for r in got["Observation"]) == sorted(data["observations"])


def test_kick_off_errors(client: httpx.Client) -> None:
    """export.html#headers: Prefer: respond-async is required; bad parameters are 400 OperationOutcomes."""
    assert_outcome(client.get("/$export", headers={"Accept": "application/fhir+json"}), 400)
    assert_outcome(client.get("/$export", params={"_type": "Unicorn"}, headers=ASYNC), 400)
    assert_outcome(client.get("/$export", params={"_outputFormat": "text/csv"}, headers=ASYNC), 400)
    assert_outcome(client.get("/$export", params={"_since": "yesterday"}, headers=ASYNC), 400)
    assert_outcome(client.get("/$export", params={"_type": "Patient", "_typeFilter": "Patient?shoe=9"},
                              headers={**ASYNC, "Prefer": "respond-async, handling=strict"}), 400)
    assert_outcome(client.get("/$export", params={"_type": "Patient", "_typeFilter": "Observation?code=1"}, headers=ASYNC), 400)
    assert_outcome(client.get("/Patient/$export", params={"_type": "Organization"}, headers=ASYNC), 400)
    assert_outcome(client.get("/Observation/$export", headers=ASYNC), 404)
    assert_outcome(client.get(f"/Group/{uuid.uuid4()}/$export", headers=ASYNC), 404)
    assert_outcome(client.get("/$export-status", params={"job": str(uuid.uuid4())}), 404)


def test_since_and_group_export(client: httpx.Client) -> None:
    """export.html#query-parameters _since; group-level export: only the members' compartments."""
    tag = uuid.uuid4().hex
    data = _data(client, tag)
    p1, p2 = data["patients"]
    group = client.post("/Group", json={"resourceType": "Group", "type": "person", "actual": True,
                                        "member": [{"entity": {"reference": f"Patient/{p1}"}}]}).json()["id"]
    manifest = _export(client, f"/Group/{group}/$export", _filters(tag, "Patient", "Observation"))
    got = _lines(client, manifest)
    assert [r["id"] for r in got["Patient"]] == [p1]
    assert sorted(r["id"] for r in got["Observation"]) == sorted(data["observations"][:2])
    # _since: only what was written after it
    time.sleep(0.05)
    since = client.get(f"/Observation/{data['observations'][-1]}").json()["meta"]["lastUpdated"]
    time.sleep(0.05)
    later = _create(client, {"resourceType": "Observation", "status": "final", "code": {"text": "y"},
                             "subject": {"reference": f"Patient/{p2}"}}, tag)
    manifest = _export(client, "/Patient/$export", {**_filters(tag, "Patient", "Observation"), "_since": since})
    got = _lines(client, manifest)
    assert [r["id"] for r in got.get("Observation", [])] == [later] and "Patient" not in got


def test_only_the_requester_sees_the_job_and_cancel(client: httpx.Client, server: ServerProcess, database_url: str) -> None:
    """export.html#response---complete-status: requiresAccessToken; files only for the requester.
    export.html#bulk-data-delete-request: DELETE cancels and removes the files."""
    tag = uuid.uuid4().hex
    _data(client, tag)
    manifest = _export(client, "/$export", _filters(tag, "Patient"))
    other = issue_token(database_url, tenant="default", role="admin", subject="someone-else")
    with httpx.Client(base_url=server.base, headers={"Authorization": f"Bearer {other}"}) as stranger:
        assert_outcome(stranger.get(manifest["_status"]), 404)
        assert_outcome(stranger.get(manifest["output"][0]["url"]), 404)
    assert client.get(manifest["output"][0]["url"]).status_code == 200
    r = client.delete(manifest["_status"])
    assert r.status_code == 202
    assert_outcome(client.get(manifest["_status"]), 404)
    assert_outcome(client.get(manifest["output"][0]["url"]), 404)


@pytest.fixture
def small_files_server(database_url: str) -> Iterator[ServerProcess]:
    srv = ServerProcess(server_env(DATABASE_URL=database_url, FHIR_EXPORT_FILE_MAX_RESOURCES="2"), ["--workers", "1"])
    srv.start()
    yield srv
    srv.stop()


def test_files_split_and_job_resumes_after_a_dead_process(
    client: httpx.Client, small_files_server: ServerProcess, database_url: str, token: str
) -> None:
    """export.html#response---complete-status: several files per type; a job whose process died
    (stale heartbeat) is taken over and finished, never left in progress."""
    tag = uuid.uuid4().hex
    data = _data(client, tag)
    with httpx.Client(base_url=small_files_server.base, headers={"Authorization": f"Bearer {token}"}, timeout=30) as c:
        manifest = _export(c, "/$export", _filters(tag, "Observation"))
        assert [o["count"] for o in manifest["output"]] == [2, 1]
        got = _lines(c, manifest)
        assert sorted(r["id"] for r in got["Observation"]) == sorted(data["observations"])
        # a job a dead process left "running" after recording its first file
        r = c.get("/$export", params=_filters(tag, "Observation"), headers=ASYNC)
        status_url = r.headers["Content-Location"]
        job_id = status_url.rsplit("=", 1)[1]
        done = _wait(c, status_url)
        assert done.status_code == 200
        first_url = done.json()["output"][0]["url"]
        last_id = c.get(first_url).text.splitlines()[-1]
        with psycopg.connect(database_url, autocommit=True) as db:
            first = db.execute("SELECT result FROM job WHERE id = %s", (job_id,)).fetchone()[0]["files"][0]
            checkpoint = {"type": "Observation", "id": json.loads(last_id)["id"], "typeDone": False, "files": [first]}
            db.execute(
                "UPDATE job SET status = 'running', worker = 'dead:1', heartbeat = now() - interval '1 hour',"
                " result = NULL, finished = NULL, checkpoint = %s, progress = '{}' WHERE id = %s",
                (psycopg.types.json.Jsonb(checkpoint), job_id),
            )
        assert c.get(status_url).status_code == 202  # in progress, as far as anyone can tell
        small_files_server.stop()
        small_files_server.start()
        done = _wait(c, status_url, timeout=120)
        assert done.status_code == 200, done.text
        assert done.json()["output"][0]["url"] == first_url  # the recorded file was kept, not redone
        resumed = _lines(c, done.json())
        assert sorted(x["id"] for x in resumed["Observation"]) == sorted(data["observations"])


def test_expired_export_files_are_removed(client: httpx.Client, database_url: str) -> None:
    """export.html#response---complete-status: Expires; after it the files and the job are gone."""
    import asyncio
    from pathlib import Path

    from fhir_server.bulk import export as bulk
    from fhir_server.jobs.runner import JobRunner
    from fhir_server.storage.blobs import LocalBlobStore
    from fhir_server.storage.db import Database

    tag = uuid.uuid4().hex
    _data(client, tag)
    manifest = _export(client, "/$export", _filters(tag, "Patient"))
    job_id = manifest["_status"].rsplit("=", 1)[1]
    blobs = LocalBlobStore(Path.cwd() / "fhir-data" / "blobs")  # where the test server keeps them
    with psycopg.connect(database_url, autocommit=True) as db:
        key = db.execute("SELECT result FROM job WHERE id = %s", (job_id,)).fetchone()[0]["files"][0]["key"]
        assert blobs.path(key).exists()
        db.execute("UPDATE job SET expires = now() - interval '1 second' WHERE id = %s", (job_id,))

    async def sweep() -> None:
        database = Database(database_url, min_size=1, max_size=2)
        await database.open()
        try:
            bulk.configure(blobs)
            await JobRunner(database).remove_expired()
        finally:
            await database.close()

    asyncio.run(sweep())
    assert not blobs.path(key).exists()
    assert_outcome(client.get(manifest["_status"]), 404)
