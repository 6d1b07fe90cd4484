"""Custom SearchParameters and ``$reindex`` against the real server (search.html#custom,
searchparameter.html, operations.html; async pattern after async.html).

The shared session server runs 2 worker processes: creates go over fresh connections so that
both processes serve them, and each must already apply a parameter the other one stored.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import psycopg
import pytest

from tests.conftest import ServerProcess, issue_token, make_database, server_env
from tests.integration.test_errors import assert_outcome

EXT = "http://example.org/fhir/StructureDefinition/rasa"


def medication(code: str, ext: str) -> dict[str, Any]:
    return {
        "resourceType": "Medication",
        "extension": [{"url": ext, "valueCodeableConcept": {"coding": [{"system": "http://rasa.example", "code": code}]}}],
    }


def search_parameter(code: str, ext: str, **kw: Any) -> dict[str, Any]:
    sp = {
        "resourceType": "SearchParameter",
        "url": f"http://example.org/fhir/SearchParameter/{code}",
        "name": code.replace("-", "_"),
        "status": "active",
        "description": "Rasa (taste) of a herbal Medication",
        "code": code,
        "base": ["Medication"],
        "type": "token",
        "expression": f"Medication.extension('{ext}').value.coding",
    }
    sp.update(kw)
    return sp


def create_fresh(server: ServerProcess, token: str, resource: dict[str, Any]) -> str:
    """A create over a new connection (so either worker process may take it)."""
    headers = {"Authorization": f"Bearer {token}", "Connection": "close"}
    r = httpx.post(f"{server.base}/{resource['resourceType']}", json=resource, headers=headers, timeout=30)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def ids(client: httpx.Client, query: str) -> set[str]:
    r = client.get(query)
    assert r.status_code == 200, r.text
    return {e["resource"]["id"] for e in r.json().get("entry", []) if e["search"]["mode"] == "match"}


def wait_for_job(client: httpx.Client, url: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        r = client.get(url)
        assert r.status_code == 200, r.text
        params = {p["name"]: next(v for k, v in p.items() if k.startswith("value")) for p in r.json()["parameter"]}
        if params["status"] in ("completed", "failed", "cancelled") or time.monotonic() > deadline:
            return params
        time.sleep(0.1)


def test_custom_parameter_applies_to_new_writes_at_once_and_to_old_ones_after_reindex(
    client: httpx.Client, server: ServerProcess, token: str
) -> None:
    """search.html#custom: a SearchParameter created on the server is used for new writes at once
    (in both worker processes); existing resources need ``$reindex``, an async job with a status."""
    code = f"rasa-{uuid.uuid4().hex[:8]}"
    ext = f"{EXT}-{code}"
    old = {create_fresh(server, token, medication("sweet", ext)) for _ in range(3)}
    sour = create_fresh(server, token, medication("sour", ext))

    r = client.post("/SearchParameter", json=search_parameter(code, ext))
    assert r.status_code == 201, r.text
    sp_id = r.json()["id"]

    new = {create_fresh(server, token, medication("sweet", ext)) for _ in range(6)}
    assert ids(client, f"/Medication?{code}=sweet&_count=100") == new
    assert ids(client, f"/Medication?{code}=http://rasa.example|sweet&_count=100") == new

    # $reindex at type level: 202 + Content-Location, then poll the status to completed
    r = client.post("/Medication/$reindex?batchSize=2")
    body = assert_outcome(r, 202)
    assert body["issue"][0]["severity"] == "information"
    status_url = r.headers["content-location"]
    assert "/$reindex-status?job=" in status_url
    status = wait_for_job(client, status_url)
    assert status["status"] == "completed", status
    assert status["done"] == status["total"] >= len(old | new) + 1
    assert {"created", "started", "finished"} <= status.keys()

    assert ids(client, f"/Medication?{code}=sweet&_count=100") == old | new
    assert ids(client, f"/Medication?{code}=sour") == {sour}
    assert ids(client, f"/Medication?{code}:not=sweet&{code}:missing=false&_count=100") == {sour}

    # the custom parameter works in _sort, chains and _revinclude like a core one
    r = client.get(f"/Medication?{code}=sweet,sour&_sort=-{code}&_count=100")
    assert r.json()["entry"][0]["resource"]["id"] == old_or(sour, r)
    req = client.post(
        "/MedicationRequest",
        json={"resourceType": "MedicationRequest", "status": "active", "intent": "order",
              "medicationReference": {"reference": f"Medication/{sour}"}, "subject": {"reference": "Patient/x"}},
    ).json()["id"]
    assert ids(client, f"/MedicationRequest?medication.{code}=sour") == {req}

    # retiring the parameter removes it: an unknown parameter again (strict: 400)
    sp = client.get(f"/SearchParameter/{sp_id}").json()
    sp["status"] = "retired"
    assert client.put(f"/SearchParameter/{sp_id}", json=sp).status_code == 200
    r = client.get(f"/Medication?{code}=sweet", headers={"Prefer": "handling=strict"})
    body = assert_outcome(r, 400, "not-supported")
    assert code in body["issue"][0]["diagnostics"]
    create_fresh(server, token, medication("sweet", ext))  # written without the retired parameter


def old_or(sour: str, r: httpx.Response) -> str:
    """Descending token sort: 'sweet' > 'sour', so a sweet one comes first, sour last."""
    entries = [e["resource"]["id"] for e in r.json()["entry"]]
    assert entries[-1] == sour
    return entries[0]


@pytest.mark.parametrize(
    ("changes", "element", "status", "issue"),
    [
        ({"code": "name", "base": ["Patient"], "expression": "Patient.name"}, "SearchParameter.code", 422, "business-rule"),
        ({"type": "composite"}, "SearchParameter.type", 422, "business-rule"),
        ({"expression": "Medication.nonsense.value"}, "SearchParameter.expression", 422, "business-rule"),
        ({"expression": "Medication.code.where("}, "SearchParameter.expression", 422, "business-rule"),
        ({"base": ["Unicorn"]}, "SearchParameter.base[0]", 400, "code-invalid"),  # the R4 validator's binding check
    ],
)
def test_bad_search_parameter_is_refused_naming_the_element(
    client: httpx.Client, changes: dict, element: str, status: int, issue: str
) -> None:
    """searchparameter.html: an active parameter the server cannot apply is refused (422, business rule)."""
    sp = search_parameter(f"bad-{uuid.uuid4().hex[:8]}", EXT)
    r = client.post("/SearchParameter", json={**sp, **changes})
    body = assert_outcome(r, status, issue)
    assert element in [e for i in body["issue"] for e in i.get("expression", [])]


def test_reindex_requires_admin_and_status_of_unknown_job_is_404(
    client: httpx.Client, server: ServerProcess, database_url: str
) -> None:
    user = issue_token(database_url, tenant="default", role="doctor")
    r = httpx.post(f"{server.base}/$reindex", headers={"Authorization": f"Bearer {user}"})
    assert_outcome(r, 403, "forbidden")
    r = httpx.get(f"{server.base}/$reindex-status?job={uuid.uuid4()}", headers={"Authorization": f"Bearer {user}"})
    assert_outcome(r, 403, "forbidden")
    assert_outcome(client.get(f"/$reindex-status?job={uuid.uuid4()}"), 404, "not-found")
    assert_outcome(client.get("/$reindex-status?job=nope"), 400, "invalid")
    assert_outcome(client.post("/$reindex?type=Unicorn"), 400, "invalid")
    assert_outcome(client.get("/$reindex"), 405)


def test_system_reindex_of_listed_types_and_cancel(client: httpx.Client) -> None:
    r = client.post("/$reindex", data={"type": "Basic,Medication"})
    assert r.status_code == 202, r.text
    status = wait_for_job(client, r.headers["content-location"])
    assert status["status"] == "completed"
    job = status["job"]
    assert_outcome(client.post(f"/$reindex-cancel?job={job}"), 409, "conflict")


def test_job_left_running_by_a_dead_process_is_resumed_from_its_checkpoint(pg_admin_url: str) -> None:
    """A job whose heartbeat is old (its process died) is claimed by the next server and resumed
    from its checkpoint: resources before the checkpoint are not redone, the rest are."""
    import asyncio

    from fhir_server.audit.actor import Actor
    from fhir_server.services.resources import ResourceService
    from fhir_server.storage.db import Database

    url = make_database(pg_admin_url)
    ext = "http://example.org/fhir/StructureDefinition/religion"

    async def seed() -> list[str]:
        db = Database(url, min_size=1, max_size=2)
        await db.open()
        try:
            service = ResourceService(db, "default", Actor("test"))
            made = []
            for i in range(5):
                patient = {"resourceType": "Patient", "id": f"p{i}", "extension": [{"url": ext, "valueCode": "zen"}]}
                made.append((await service.update("Patient", f"p{i}", patient)).version.id)
            sp = search_parameter("religion", ext, base=["Patient"], expression=f"Patient.extension('{ext}').value")
            await service.create("SearchParameter", sp)
            return made
        finally:
            await db.close()

    made = asyncio.run(seed())
    job_id = uuid.uuid4()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO job (tenant_id, id, kind, status, owner, request, progress, checkpoint, worker, heartbeat, started)"
            " VALUES ('default', %s, 'reindex', 'running', 'test', %s, %s, %s, 'dead-process', now() - interval '1 hour',"
            " now() - interval '1 hour')",
            (
                job_id,
                psycopg.types.json.Jsonb({"types": ["Patient"], "batchSize": 2}),
                psycopg.types.json.Jsonb({"total": 5, "done": 2}),
                psycopg.types.json.Jsonb({"type": "Patient", "id": "p1"}),
            ),
        )
    srv = ServerProcess(server_env(DATABASE_URL=url), ["--dev", "--workers", "1"])
    srv.start()
    try:
        with httpx.Client(base_url=srv.base, timeout=30) as dev:
            status = wait_for_job(dev, f"/$reindex-status?job={job_id}")
            assert status["status"] == "completed", status
            assert status["done"] == 5
            assert ids(dev, "/Patient?religion=zen") == set(made[2:])  # p0, p1 were before the checkpoint
    finally:
        srv.stop()
    with psycopg.connect(url, autocommit=True) as conn:
        worker = conn.execute("SELECT worker FROM job WHERE id = %s", (job_id,)).fetchone()[0]
    assert worker != "dead-process"


async def test_a_tenants_parameter_does_not_apply_to_another_tenant(database_url: str) -> None:
    """search.html#custom per tenant: the overlay, the index rows and $reindex are the tenant's own."""
    from fhir_server.audit.actor import Actor
    from fhir_server.jobs.reindex import reindex_batch
    from fhir_server.search.compile import build_where
    from fhir_server.search.custom import tenant_registry
    from fhir_server.services.resources import ResourceService
    from fhir_server.storage.db import Database

    other, code = f"t-{uuid.uuid4().hex[:8]}", f"mood-{uuid.uuid4().hex[:8]}"
    ext = f"http://example.org/fhir/StructureDefinition/{code}"
    basic = {"resourceType": "Basic", "code": {"text": "x"}, "extension": [{"url": ext, "valueString": "calm"}]}
    db = Database(database_url, min_size=1, max_size=2)
    await db.open()
    try:
        theirs = ResourceService(db, other, Actor("test"))
        ours = ResourceService(db, "default", Actor("test"))
        sp = search_parameter(code, ext, base=["Basic"], type="string", expression=f"Basic.extension('{ext}').value")
        await theirs.create("SearchParameter", sp)
        their_basic = (await theirs.create("Basic", dict(basic))).version.id
        our_basic = (await ours.create("Basic", dict(basic))).version.id

        async with db.connection() as conn:
            assert (await tenant_registry(conn, other)).get("Basic", code) is not None
            ours_registry = await tenant_registry(conn, "default")
            assert ours_registry.get("Basic", code) is None
            assert build_where("Basic", [(code, "calm")], registry=ours_registry).warnings

            async def rows() -> dict[str, int]:
                cur = await conn.execute(
                    "SELECT tenant_id, count(*) FROM idx_string WHERE param = %s GROUP BY tenant_id", (code,)
                )
                return dict(await cur.fetchall())

            assert await rows() == {other: 1}
            async with conn.transaction():  # the default tenant's reindex never writes the other's rows
                assert our_basic in await reindex_batch(conn, "default", "Basic", "", 10_000)
            async with conn.transaction():
                assert await reindex_batch(conn, other, "Basic", "", 10) == [their_basic]
            assert await rows() == {other: 1}
    finally:
        await db.close()
