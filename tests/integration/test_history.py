"""history (https://hl7.org/fhir/R4/http.html#history): instance, type, system; _count, _since, _at, paging."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

import httpx

from tests.integration.test_crud import new_patient


def _versions(client: httpx.Client, n: int) -> tuple[str, list[dict]]:
    created = client.post("/Patient", json=new_patient()).json()
    pid = created["id"]
    out = [created]
    for i in range(n - 1):
        out.append(client.put(f"/Patient/{pid}", json={**created, "active": i % 2 == 0}).json())
    return pid, out


def test_instance_history_newest_first_with_request_and_response(client: httpx.Client) -> None:
    """http.html#history: newest first; entries carry request (method, url) and response (status, etag)."""
    pid, _ = _versions(client, 3)
    b = client.get(f"/Patient/{pid}/_history").json()
    assert b["resourceType"] == "Bundle" and b["type"] == "history"
    assert [e["resource"]["meta"]["versionId"] for e in b["entry"]] == ["3", "2", "1"]
    assert [e["request"]["method"] for e in b["entry"]] == ["PUT", "PUT", "POST"]
    assert b["entry"][0]["response"]["etag"] == 'W/"3"'
    assert b["entry"][2]["response"]["status"].startswith("201")
    assert b["entry"][0]["fullUrl"].endswith(f"/Patient/{pid}")


def test_instance_history_of_unknown_is_404(client: httpx.Client) -> None:
    """http.html#history: history of a resource that never existed is 404."""
    assert client.get("/Patient/nope-nope/_history").status_code == 404


def test_count_and_paging_links_walk_every_version(client: httpx.Client) -> None:
    """http.html#history and bundle.html#paging: _count and next links reach every version once."""
    pid, _ = _versions(client, 5)
    seen = []
    url: str | None = f"/Patient/{pid}/_history?_count=2"
    pages = 0
    while url:
        b = client.get(url).json()
        pages += 1
        seen += [e["resource"]["meta"]["versionId"] for e in b["entry"]]
        nxt = [link["url"] for link in b["link"] if link["relation"] == "next"]
        url = nxt[0] if nxt else None
    assert seen == ["5", "4", "3", "2", "1"]
    assert pages == 3


def test_since_filters_versions(client: httpx.Client) -> None:
    """http.html#history: _since keeps versions made at or after the instant."""
    pid, _ = _versions(client, 2)
    time.sleep(0.05)
    since = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    created = client.get(f"/Patient/{pid}").json()
    client.put(f"/Patient/{pid}", json=created)
    b = client.get(f"/Patient/{pid}/_history", params={"_since": since}).json()
    assert [e["resource"]["meta"]["versionId"] for e in b["entry"]] == ["3"]


def test_at_returns_version_current_then(client: httpx.Client) -> None:
    """http.html#history: _at keeps the versions current at that time."""
    pid, versions = _versions(client, 3)
    at = versions[1]["meta"]["lastUpdated"]  # exactly when version 2 was written
    b = client.get(f"/Patient/{pid}/_history", params={"_at": at}).json()
    assert [e["resource"]["meta"]["versionId"] for e in b["entry"]] == ["2"]


def test_type_and_system_history(client: httpx.Client) -> None:
    """http.html#history: type level and system level."""
    marker = uuid.uuid4().hex[:8]
    org = client.post("/Organization", json={"resourceType": "Organization", "name": f"Ward {marker}"}).json()
    tb = client.get("/Organization/_history", params={"_count": 5}).json()
    assert all(e["resource"]["resourceType"] == "Organization" for e in tb["entry"] if "resource" in e)
    assert tb["entry"][0]["resource"]["id"] == org["id"]
    sb = client.get("/_history", params={"_count": 1}).json()
    assert sb["type"] == "history" and sb["entry"][0]["resource"]["id"] == org["id"]
    assert any(link["relation"] == "next" for link in sb["link"])


def test_deleted_version_has_no_resource(client: httpx.Client) -> None:
    """http.html#history: a deletion is an entry with request DELETE and no resource."""
    pid, _ = _versions(client, 1)
    client.delete(f"/Patient/{pid}")
    b = client.get(f"/Patient/{pid}/_history").json()
    assert "resource" not in b["entry"][0]
    assert b["entry"][0]["request"] == {"method": "DELETE", "url": f"Patient/{pid}"}
