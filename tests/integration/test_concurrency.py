"""Version-aware updates under concurrency (https://hl7.org/fhir/R4/http.html#concurrency)."""

from __future__ import annotations

import asyncio

import httpx
import psycopg

from tests.integration.test_crud import new_patient


def test_20_concurrent_if_match_puts_one_wins(server, token: str, client: httpx.Client, db: psycopg.Connection) -> None:
    """20 PUTs with the same If-Match: exactly one 200, nineteen 412, history stays contiguous."""
    created = client.post("/Patient", json=new_patient()).json()
    pid = created["id"]

    async def race() -> list[int]:
        async with httpx.AsyncClient(base_url=server.base, headers={"Authorization": f"Bearer {token}"}, timeout=60) as ac:
            barrier = asyncio.Event()

            async def one(i: int) -> int:
                await barrier.wait()
                body = {**created, "active": i % 2 == 0}
                r = await ac.put(f"/Patient/{pid}", json=body, headers={"If-Match": 'W/"1"'})
                return r.status_code

            tasks = [asyncio.create_task(one(i)) for i in range(20)]
            await asyncio.sleep(0.05)
            barrier.set()
            return await asyncio.gather(*tasks)

    statuses = asyncio.run(race())
    assert sorted(statuses) == [200] + [412] * 19
    versions = [row[0] for row in db.execute(
        "SELECT version_id FROM resource_history WHERE resource_type = 'Patient' AND id = %s ORDER BY version_id", (pid,)
    )]
    assert versions == [1, 2]
    assert client.get(f"/Patient/{pid}").json()["meta"]["versionId"] == "2"


def test_concurrent_creates_on_one_new_id_give_one_version_each(server, token: str, db: psycopg.Connection) -> None:
    """Eight concurrent create-on-update PUTs to one new id: versions 1..8, none lost, none duplicated."""
    pid = "race-upsert-1"

    async def race() -> list[int]:
        async with httpx.AsyncClient(base_url=server.base, headers={"Authorization": f"Bearer {token}"}, timeout=60) as ac:
            return [r.status_code for r in await asyncio.gather(
                *[ac.put(f"/Patient/{pid}", json=new_patient(id=pid)) for _ in range(8)]
            )]

    statuses = asyncio.run(race())
    assert sorted(statuses) == [200] * 7 + [201]
    versions = [row[0] for row in db.execute(
        "SELECT version_id FROM resource_history WHERE id = %s ORDER BY version_id", (pid,)
    )]
    assert versions == list(range(1, 9))


def test_concurrent_conditional_creates_make_one(server, token: str, db: psycopg.Connection) -> None:
    """http.html#ccreate under concurrency: eight If-None-Exist creates leave exactly one resource."""
    p = new_patient()
    ident = p["identifier"][0]
    cond = f"identifier={ident['system']}|{ident['value']}"

    async def race() -> list[int]:
        async with httpx.AsyncClient(base_url=server.base, headers={"Authorization": f"Bearer {token}"}, timeout=60) as ac:
            return [r.status_code for r in await asyncio.gather(
                *[ac.post("/Patient", json=p, headers={"If-None-Exist": cond}) for _ in range(8)]
            )]

    statuses = asyncio.run(race())
    assert sorted(statuses) == [200] * 7 + [201]
