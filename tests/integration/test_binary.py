"""Binary over REST (R4 binary.html, http.html#binary) against the real server and PostgreSQL.

A dedicated server runs with small limits and its own blob folder, so what is (not) left on
disk can be checked.
"""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from fhir_server.services.binary import STORAGE_EXTENSION
from tests.conftest import ServerProcess, issue_token, server_env
from tests.integration.test_errors import assert_outcome

MAX_BYTES = 6 * 1024 * 1024
INLINE_MAX = 16 * 1024
RAW = {"Accept": "*/*"}  # not a FHIR format: the content itself (http.html#binary)


@pytest.fixture(scope="module")
def blob_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("blobs")


@pytest.fixture(scope="module")
def binary_server(database_url: str, blob_dir: Path) -> Iterator[ServerProcess]:
    env = server_env(
        DATABASE_URL=database_url,
        FHIR_BLOB_DIR=str(blob_dir),
        FHIR_MAX_BINARY_BYTES=str(MAX_BYTES),
        FHIR_BINARY_INLINE_MAX_BYTES=str(INLINE_MAX),
        FHIR_MAX_BODY_BYTES="200000",
    )
    srv = ServerProcess(env, ["--workers", "1"])
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def bc(binary_server: ServerProcess, token: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=binary_server.base, headers={"Authorization": f"Bearer {token}"}, timeout=60) as c:
        yield c


def blobs_on_disk(blob_dir: Path) -> set[str]:
    return {str(p.relative_to(blob_dir)) for p in blob_dir.glob("*/*/*") if p.is_file()}


def storage(resource: dict) -> dict:
    (ext,) = [e for e in resource["_data"]["extension"] if e["url"] == STORAGE_EXTENSION]
    return {e["url"]: next(v for k, v in e.items() if k.startswith("value")) for e in ext["extension"]}


def history_rows(db: psycopg.Connection) -> int:
    return db.execute("SELECT count(*) FROM resource_history WHERE resource_type = 'Binary'").fetchone()[0]


def upload(bc: httpx.Client, content: bytes, content_type: str, **headers: str) -> httpx.Response:
    return bc.post("/Binary", content=content, headers={"Content-Type": content_type, "Accept": "application/fhir+json", **headers})


def test_raw_upload_download_round_trip(bc: httpx.Client, blob_dir: Path, db: psycopg.Connection) -> None:
    """http.html#binary: raw content in, the same bytes and Content-Type out; binary.html: the
    checksum recorded is the SHA-256 of the bytes; large content lives outside the table."""
    content = os.urandom(100_000)
    r = upload(bc, content, "application/pdf")
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["contentType"] == "application/pdf" and "data" not in created
    assert r.headers["location"].endswith(f"/Binary/{created['id']}/_history/1")
    s = storage(created)
    assert s["sha256"] == hashlib.sha256(content).hexdigest() and s["size"] == len(content)
    assert (blob_dir / s["key"]).read_bytes() == content
    row = db.execute("SELECT content FROM resource WHERE resource_type = 'Binary' AND id = %s", (created["id"],)).fetchone()[0]
    assert "data" not in row  # the row holds no content

    got = bc.get(f"/Binary/{created['id']}", headers=RAW)
    assert got.status_code == 200
    assert got.content == content
    assert got.headers["content-type"] == "application/pdf"
    assert got.headers["etag"] == 'W/"1"' and got.headers["last-modified"]
    assert got.headers["x-content-type-options"] == "nosniff"
    assert bc.get(f"/Binary/{created['id']}").content == content  # no Accept: native too


def test_small_content_stays_inline(bc: httpx.Client, blob_dir: Path, db: psycopg.Connection) -> None:
    """Content up to FHIR_BINARY_INLINE_MAX_BYTES stays base64 in the row; no blob is written.
    binary.html (Binary.data, base64); inline vs blob storage is server-specific (README "Files (Binary)")."""
    before = blobs_on_disk(blob_dir)
    r = upload(bc, b"hello, ward 3", "text/plain; charset=utf-8")
    assert r.status_code == 201, r.text
    created = r.json()
    assert base64.b64decode(created["data"]) == b"hello, ward 3"
    assert "key" not in storage(created) and storage(created)["sha256"] == hashlib.sha256(b"hello, ward 3").hexdigest()
    assert blobs_on_disk(blob_dir) == before
    got = bc.get(f"/Binary/{created['id']}", headers=RAW)
    assert got.content == b"hello, ward 3" and got.headers["content-type"] == "text/plain; charset=utf-8"


def test_fhir_json_create_then_raw_read(bc: httpx.Client) -> None:
    """binary.html: a Binary resource (base64 data) created as FHIR JSON reads back as native bytes;
    securityContext comes back as X-Security-Context (http.html#binary)."""
    content = os.urandom(50_000)
    resource = {
        "resourceType": "Binary", "contentType": "image/png", "securityContext": {"reference": "Patient/p-1"},
        "data": base64.b64encode(content).decode(),
    }
    r = bc.post("/Binary", json=resource, headers={"Content-Type": "application/fhir+json"})
    assert r.status_code == 201, r.text
    assert storage(r.json())["sha256"] == hashlib.sha256(content).hexdigest()
    got = bc.get(f"/Binary/{r.json()['id']}", headers={"Accept": "image/png"})
    assert got.content == content and got.headers["content-type"] == "image/png"
    assert got.headers["x-security-context"] == "Patient/p-1"


def test_raw_create_then_fhir_read(bc: httpx.Client) -> None:
    """http.html#binary: Accept or _format asking for FHIR gives the Binary resource with base64 data."""
    content = os.urandom(70_001)
    bid = upload(bc, content, "application/dicom", **{"X-Security-Context": "Patient/p-2"}).json()["id"]
    for params, headers in (({}, {"Accept": "application/fhir+json"}), ({"_format": "json"}, RAW),
                            ({}, {"Accept": "application/json"}), ({"_pretty": "true"}, {"Accept": "application/fhir+json"})):
        r = bc.get(f"/Binary/{bid}", params=params, headers=headers)
        assert r.status_code == 200, r.text
        assert "json" in r.headers["content-type"]
        body = r.json()
        assert body["resourceType"] == "Binary" and body["id"] == bid and body["contentType"] == "application/dicom"
        assert body["securityContext"] == {"reference": "Patient/p-2"}
        assert base64.b64decode(body["data"]) == content
    summary = bc.get(f"/Binary/{bid}", params={"_summary": "true"}, headers={"Accept": "application/fhir+json"}).json()
    assert "data" not in summary


def test_multi_megabyte_upload_is_streamed_intact(bc: httpx.Client, blob_dir: Path) -> None:
    """A 5 MiB upload sent chunked (no Content-Length) is stored and read back byte for byte.
    http.html#binary; RFC 9112 §7.1 chunked transfer coding."""
    content = os.urandom(5 * 1024 * 1024 + 7)

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(content), 300_000):
            yield content[i : i + 300_000]

    r = bc.post("/Binary", content=chunks(), headers={"Content-Type": "video/mp4", "Accept": "application/fhir+json"})
    assert r.status_code == 201, r.text
    s = storage(r.json())
    assert s["size"] == len(content) and s["sha256"] == hashlib.sha256(content).hexdigest()
    with bc.stream("GET", f"/Binary/{r.json()['id']}", headers=RAW) as got:
        assert got.headers["content-length"] == str(len(content))
        digest = hashlib.sha256()
        for part in got.iter_bytes():
            digest.update(part)
    assert digest.hexdigest() == s["sha256"]
    fhir = bc.get(f"/Binary/{r.json()['id']}", headers={"Accept": "application/fhir+json"})
    assert base64.b64decode(fhir.json()["data"]) == content


def test_over_the_limit_is_413_and_writes_nothing(bc: httpx.Client, blob_dir: Path, db: psycopg.Connection) -> None:
    """FHIR_MAX_BINARY_BYTES: 413 OperationOutcome, no row, no blob and no partial file left.
    RFC 9110 §15.5.14 413 Content Too Large."""
    rows, before = history_rows(db), blobs_on_disk(blob_dir)
    content = os.urandom(MAX_BYTES + 1)
    assert_outcome(upload(bc, content, "application/pdf"), 413, "too-costly")  # declared Content-Length

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(content), 1_000_000):
            yield content[i : i + 1_000_000]

    streamed = bc.post("/Binary", content=chunks(), headers={"Content-Type": "application/pdf"})
    assert_outcome(streamed, 413, "too-costly")  # found while streaming
    as_json = {"resourceType": "Binary", "contentType": "application/pdf", "data": base64.b64encode(content).decode()}
    assert_outcome(bc.post("/Binary", json=as_json), 413, "too-costly")
    assert history_rows(db) == rows
    assert blobs_on_disk(blob_dir) == before
    assert list((blob_dir / "tmp").iterdir()) == []


def test_disallowed_content_type_is_415(bc: httpx.Client, blob_dir: Path, db: psycopg.Connection) -> None:
    """FHIR_BINARY_CONTENT_TYPES: active content (HTML, SVG, scripts) is refused by default, raw or as FHIR.
    RFC 9110 §15.5.16 415 Unsupported Media Type."""
    rows, before = history_rows(db), blobs_on_disk(blob_dir)
    assert_outcome(upload(bc, b"<script>alert(1)</script>", "text/html"), 415, "not-supported")
    assert_outcome(upload(bc, b"<svg/>", "image/svg+xml"), 415, "not-supported")
    resource = {"resourceType": "Binary", "contentType": "text/html", "data": base64.b64encode(b"<p>").decode()}
    assert_outcome(bc.post("/Binary", json=resource), 415, "not-supported")
    assert history_rows(db) == rows and blobs_on_disk(blob_dir) == before


def test_history_keeps_each_versions_bytes(bc: httpx.Client) -> None:
    """http.html#vread: an older version returns the older bytes; after delete (http.html#delete)
    read is 410 and history stays readable."""
    v1, v2 = os.urandom(40_000), os.urandom(30_000)
    bid = upload(bc, v1, "application/pdf").json()["id"]
    r = bc.put(f"/Binary/{bid}", content=v2, headers={"Content-Type": "application/pdf", "If-Match": 'W/"1"'})
    assert r.status_code == 200, r.text
    assert r.headers["etag"] == 'W/"2"'
    assert bc.get(f"/Binary/{bid}", headers=RAW).content == v2
    assert bc.get(f"/Binary/{bid}/_history/1", headers=RAW).content == v1
    assert bc.get(f"/Binary/{bid}/_history/2", headers=RAW).content == v2
    old = bc.get(f"/Binary/{bid}/_history/1", headers={"Accept": "application/fhir+json"}).json()
    assert base64.b64decode(old["data"]) == v1 and old["meta"]["versionId"] == "1"
    assert bc.delete(f"/Binary/{bid}").status_code == 204
    assert_outcome(bc.get(f"/Binary/{bid}", headers=RAW), 410)
    assert bc.get(f"/Binary/{bid}/_history/1", headers=RAW).content == v1
    history = bc.get(f"/Binary/{bid}/_history", headers={"Accept": "application/fhir+json"}).json()
    assert len(history["entry"]) == 3


def test_put_creates_with_client_id_and_failed_write_leaves_no_blob(bc: httpx.Client, blob_dir: Path) -> None:
    """http.html#upsert with raw content; a write that fails (412 on If-Match) removes its blob."""
    bid = f"scan-{time.time_ns()}"
    content = os.urandom(20_000)
    r = bc.put(f"/Binary/{bid}", content=content, headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 201, r.text
    before = blobs_on_disk(blob_dir)
    failed = bc.put(f"/Binary/{bid}", content=os.urandom(20_000), headers={"Content-Type": "image/jpeg", "If-Match": 'W/"7"'})
    assert_outcome(failed, 412)
    assert blobs_on_disk(blob_dir) == before
    assert bc.get(f"/Binary/{bid}", headers=RAW).content == content


def test_conditional_read_and_range(bc: httpx.Client) -> None:
    """http.html#cread: If-None-Match → 304; RFC 9110 Range on the native content → 206."""
    content = os.urandom(30_000)
    bid = upload(bc, content, "application/octet-stream").json()["id"]
    assert bc.get(f"/Binary/{bid}", headers={**RAW, "If-None-Match": 'W/"1"'}).status_code == 304
    part = bc.get(f"/Binary/{bid}", headers={**RAW, "Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == content[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(content)}"
    assert bc.get(f"/Binary/{bid}", headers={**RAW, "Range": "bytes=-10"}).content == content[-10:]
    assert_outcome(bc.get(f"/Binary/{bid}", headers={**RAW, "Range": "bytes=999999-"}), 416)


def test_client_cannot_plant_a_storage_extension(bc: httpx.Client) -> None:
    """The storage extension is server-owned: a client's is replaced by the server's own.
    Spec: none for the extension, server-specific (README "Files (Binary)"); binary.html otherwise."""
    resource = {
        "resourceType": "Binary", "contentType": "text/plain", "data": base64.b64encode(b"x").decode(),
        "_data": {"extension": [{"url": STORAGE_EXTENSION, "extension": [{"url": "key", "valueString": "00/00/" + "0" * 32}]}]},
    }
    created = bc.post("/Binary", json=resource).json()
    assert storage(created) == {"size": 1, "sha256": hashlib.sha256(b"x").hexdigest()}
    assert bc.get(f"/Binary/{created['id']}", headers=RAW).content == b"x"


def test_patch_is_refused(bc: httpx.Client) -> None:
    """Binary content changes by PUT; JSON Patch on it is 405.
    http.html#patch; RFC 9110 §15.5.6 405 Method Not Allowed."""
    bid = upload(bc, b"abc", "text/plain").json()["id"]
    r = bc.patch(f"/Binary/{bid}", json=[{"op": "replace", "path": "/contentType", "value": "text/csv"}],
                 headers={"Content-Type": "application/json-patch+json"})
    assert_outcome(r, 405)


def test_search_by_id_shows_the_row_without_content(bc: httpx.Client) -> None:
    """search (http.html#search) on _id works as for any type; the entry carries size and checksum."""
    content = os.urandom(20_000)
    bid = upload(bc, content, "application/pdf").json()["id"]
    bundle = bc.get("/Binary", params={"_id": bid}, headers={"Accept": "application/fhir+json"}).json()
    (entry,) = bundle["entry"]
    assert storage(entry["resource"])["sha256"] == hashlib.sha256(content).hexdigest()


def test_auth_and_tenant_apply(bc: httpx.Client, binary_server: ServerProcess, database_url: str, client: httpx.Client) -> None:
    """Binary is guarded like every resource: no token 401, another tenant's token 403; the shared
    ``client`` fixture's token works on the main test server.
    security.html; RFC 9110 §15.5.2 401 Unauthorized, §15.5.4 403 Forbidden."""
    bid = upload(bc, b"secret", "text/plain").json()["id"]
    assert_outcome(httpx.get(f"{binary_server.base}/Binary/{bid}"), 401)
    assert_outcome(httpx.post(f"{binary_server.base}/Binary", content=b"x", headers={"Content-Type": "text/plain"}), 401)
    other = issue_token(database_url, tenant="other-hospital", role="admin")
    assert_outcome(httpx.get(f"{binary_server.base}/Binary/{bid}", headers={"Authorization": f"Bearer {other}"}), 403)
    r = client.post("/Binary", content=b"on the main server", headers={"Content-Type": "text/plain"})
    assert r.status_code == 201, r.text
    assert client.get(f"/Binary/{r.json()['id']}", headers=RAW).content == b"on the main server"


def test_blobs_gc_removes_only_old_unreferenced_blobs(bc: httpx.Client, blob_dir: Path, database_url: str) -> None:
    """`fhir-server blobs gc`: an orphan (e.g. left by a crash before commit) older than the
    minimum age goes; referenced blobs, of every version, stay.
    Spec: none, server-specific maintenance CLI (README "Files (Binary)")."""
    content = os.urandom(25_000)
    key = storage(upload(bc, content, "application/pdf").json())["key"]
    orphan = blob_dir / "ff" / "ee" / ("ffee" + "0" * 28)
    young = blob_dir / "ff" / "ee" / ("ffee" + "1" * 28)
    for path in (orphan, young):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"left behind")
    two_hours_ago = time.time() - 7200
    os.utime(orphan, (two_hours_ago, two_hours_ago))
    os.utime(blob_dir / key, (two_hours_ago, two_hours_ago))
    out = subprocess.run(
        [sys.executable, "-m", "fhir_server.cli", "blobs", "gc"],
        env=server_env(DATABASE_URL=database_url, FHIR_BLOB_DIR=str(blob_dir)), capture_output=True, text=True, check=True,
    )
    assert "removed 1 unreferenced" in out.stdout, out.stdout + out.stderr
    assert not orphan.exists() and young.exists() and (blob_dir / key).exists()
    young.unlink()


async def test_s3_blob_store_against_an_s3_compatible_server() -> None:
    """The optional S3 store (``pip install 'fhir-server[s3]'``) against moto's S3-compatible HTTP
    server, when both are installed: multipart streaming, checksum, ranges, limit, listing, delete.
    Spec: none, server-specific blob store (README "Files (Binary)"); ranges per RFC 9110 §14."""
    pytest.importorskip("aiobotocore")
    moto_server = pytest.importorskip("moto.server")
    from datetime import UTC, datetime, timedelta

    from fhir_server.storage.blobs import BlobMissing, BlobTooLarge, S3BlobStore
    from tests.conftest import free_port

    port = free_port()
    srv = moto_server.ThreadedMotoServer(port=port, verbose=False)
    srv.start()
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    os.environ.update(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test")
    store = S3BlobStore("fhir", prefix="blobs", endpoint_url=f"http://127.0.0.1:{port}", region="us-east-1")
    try:
        await (await store._s3()).create_bucket(Bucket="fhir")
        content = os.urandom(17 * 1024 * 1024 + 5)  # three parts

        async def chunks(data: bytes):  # type: ignore[no-untyped-def]
            for i in range(0, len(data), 100_000):
                yield data[i : i + 100_000]

        big = await store.put(chunks(content), max_bytes=MAX_BYTES * 4)
        small = await store.put(chunks(b"small"), max_bytes=10)
        assert big.sha256 == hashlib.sha256(content).hexdigest() and big.size == len(content)
        assert b"".join([c async for c in await store.open(big.key)]) == content
        assert b"".join([c async for c in await store.open(big.key, 10, 100)]) == content[10:110]
        assert b"".join([c async for c in await store.open(small.key)]) == b"small"
        with pytest.raises(BlobTooLarge):
            await store.put(chunks(content), max_bytes=MAX_BYTES)
        later = datetime.now(UTC) + timedelta(minutes=1)
        assert sorted([k async for k in store.keys_older_than(later)]) == sorted([big.key, small.key])
        await store.delete(big.key)
        with pytest.raises(BlobMissing):
            await store.open(big.key)
    finally:
        await store.close()
        srv.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_fhir_xml_read_and_write(bc: httpx.Client) -> None:
    """http.html#mime-type with http.html#binary: application/fhir+xml is a FHIR format too (the
    Binary with base64 data), while application/xml is just content."""
    content = os.urandom(30_000)
    bid = upload(bc, content, "application/pdf").json()["id"]
    r = bc.get(f"/Binary/{bid}", headers={"Accept": "application/fhir+xml"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/fhir+xml")
    assert f'<data value="{base64.b64encode(content).decode()}"' in r.text
    xml = ('<Binary xmlns="http://hl7.org/fhir"><contentType value="application/pdf"/>'
           f'<data value="{base64.b64encode(content).decode()}"/></Binary>')
    created = bc.post("/Binary", content=xml, headers={"Content-Type": "application/fhir+xml", "Accept": "application/fhir+json"})
    assert created.status_code == 201, created.text
    assert bc.get(f"/Binary/{created.json()['id']}", headers=RAW).content == content
    raw_xml = upload(bc, b"<note>not FHIR</note>", "application/xml").json()
    assert bc.get(f"/Binary/{raw_xml['id']}", headers={"Accept": "application/xml"}).content == b"<note>not FHIR</note>"


def test_read_in_a_batch_bundle_gives_the_resource_with_data(bc: httpx.Client) -> None:
    """http.html#batch: a GET entry on a Binary answers the Binary resource (base64 data) in the Bundle."""
    content = os.urandom(30_000)
    bid = upload(bc, content, "application/pdf").json()["id"]
    batch = {"resourceType": "Bundle", "type": "batch", "entry": [{"request": {"method": "GET", "url": f"Binary/{bid}"}}]}
    r = bc.post("", json=batch, headers={"Accept": "application/fhir+json"})
    assert r.status_code == 200, r.text
    (entry,) = r.json()["entry"]
    assert entry["response"]["status"].startswith("200")
    assert base64.b64decode(entry["resource"]["data"]) == content


def test_document_reference_and_media_point_at_binaries(bc: httpx.Client) -> None:
    """documentreference.html / media.html: Attachment.url names the Binary holding the content (a
    lab report PDF, a radiology image); the reader follows it, and `_has`/reference search finds
    nothing unexpected (Attachment.url is not a Reference)."""
    import hashlib

    pdf = b"%PDF-1.7\n" + os.urandom(200_000) + b"\n%%EOF\n"
    png = b"\x89PNG\r\n\x1a\n" + os.urandom(50_000)
    pdf_id = upload(bc, pdf, "application/pdf").json()["id"]
    png_id = upload(bc, png, "image/png").json()["id"]
    doc = bc.post("/DocumentReference", json={
        "resourceType": "DocumentReference", "status": "current",
        "type": {"coding": [{"system": "http://loinc.org", "code": "11502-2", "display": "Laboratory report"}]},
        "content": [{"attachment": {"contentType": "application/pdf", "url": f"Binary/{pdf_id}", "size": len(pdf),
                                    "hash": base64.b64encode(hashlib.sha1(pdf).digest()).decode(), "title": "CBC report"}}],
    })
    assert doc.status_code == 201, doc.text
    media = bc.post("/Media", json={
        "resourceType": "Media", "status": "completed",
        "content": {"contentType": "image/png", "url": f"Binary/{png_id}"},
    })
    assert media.status_code == 201, media.text
    for resource, expected, ctype in ((doc.json()["content"][0]["attachment"], pdf, "application/pdf"),
                                      (media.json()["content"], png, "image/png")):
        r = bc.get(f"/{resource['url']}")
        assert r.status_code == 200 and r.content == expected and r.headers["content-type"].startswith(ctype)
