"""``_explain=true``: this server's admin-only query plan switch on a type search (http.html#search;
not a FHIR parameter, so it is taken out like the result parameters of search.html#return)."""

from __future__ import annotations

import httpx

from tests.conftest import ServerProcess, issue_token


def test_admin_gets_explain_analyze_of_the_search(client: httpx.Client) -> None:
    """search.html#return: with _explain=true an admin gets an OperationOutcome of EXPLAIN ANALYZE plans."""
    r = client.get("/Patient", params={"family": "O'Brien", "_text": "x", "_explain": "true", "nope": "1"})
    assert r.status_code == 200, r.text
    outcome = r.json()
    assert outcome["resourceType"] == "OperationOutcome"
    plans = [i["diagnostics"] for i in outcome["issue"] if i["severity"] == "information"]
    assert [p.split(" ", 1)[0] for p in plans] == ["count", "page"]
    for plan in plans:
        assert "actual time=" in plan and "Execution Time" in plan
        assert "idx_string" in plan and "idx_text" in plan
    assert any(i["severity"] == "warning" and "nope" in i["diagnostics"] for i in outcome["issue"])
    only_page = client.get("/Patient", params={"_total": "none", "_explain": "true"}).json()
    assert [i["diagnostics"].split(" ", 1)[0] for i in only_page["issue"]] == ["page"]
    assert client.get("/Patient", params={"_explain": "false", "_count": "1"}).json()["resourceType"] == "Bundle"
    assert client.get("/Patient", params={"_explain": "yes"}).status_code == 400


def test_explain_is_forbidden_to_other_roles(database_url: str, server: ServerProcess) -> None:
    """search.html#return (server switch): a non-admin principal gets 403 and no plan."""
    token = issue_token(database_url, tenant="default", role="doctor")
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"}
    r = httpx.get(f"{server.base}/Patient", params={"_explain": "true"}, headers=headers)
    assert r.status_code == 403, r.text
    assert r.json()["issue"][0]["code"] == "forbidden"
    assert httpx.get(f"{server.base}/Patient", params={"_count": "1"}, headers=headers).status_code == 200
