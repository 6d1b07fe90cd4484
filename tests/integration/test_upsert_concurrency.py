"""Conditional update (upsert by business identifier) under concurrency
(https://hl7.org/fhir/R4/http.html#cond-update): the unlocked single-match path and the locked path."""

from __future__ import annotations

import asyncio

import httpx
import psycopg

from tests.integration.test_crud import new_patient


def _race(server, token: str, url: str, bodies: list[dict]) -> list[int]:
    async def race() -> list[int]:
        async with httpx.AsyncClient(base_url=server.base, headers={"Authorization": f"Bearer {token}"}, timeout=60) as ac:
            return [r.status_code for r in await asyncio.gather(*[ac.put(url, json=b) for b in bodies])]

    return asyncio.run(race())


def test_concurrent_conditional_updates_of_a_new_identifier_create_one(server, token: str, db: psycopg.Connection) -> None:
    """No match yet: eight concurrent upserts create exactly one resource; the others update it."""
    p = new_patient()
    ident = p["identifier"][0]
    url = f"/Patient?identifier={ident['system']}|{ident['value']}"
    statuses = _race(server, token, url, [dict(p, gender=g) for g in ["male", "female"] * 4])
    assert sorted(statuses) == [200] * 7 + [201]
    rows = db.execute(
        "SELECT id, version_id FROM resource WHERE resource_type = 'Patient' AND content->'identifier'->0->>'value' = %s",
        (ident["value"],),
    ).fetchall()
    assert len(rows) == 1 and rows[0][1] == 8
    versions = [r[0] for r in db.execute(
        "SELECT version_id FROM resource_history WHERE id = %s ORDER BY version_id", (rows[0][0],))]
    assert versions == list(range(1, 9))


def test_concurrent_conditional_updates_of_one_match_all_apply(server, token: str, client: httpx.Client,
                                                               db: psycopg.Connection) -> None:
    """One match: ten concurrent upserts each write their own version, in some order, none lost."""
    p = new_patient()
    ident = p["identifier"][0]
    url = f"/Patient?identifier={ident['system']}|{ident['value']}"
    first = client.put(url, json=p)
    assert first.status_code == 201, first.text
    pid = first.json()["id"]
    statuses = _race(server, token, url, [dict(p, birthDate=f"2001-01-{d:02d}") for d in range(1, 11)])
    assert statuses == [200] * 10
    versions = [r[0] for r in db.execute(
        "SELECT version_id FROM resource_history WHERE id = %s ORDER BY version_id", (pid,))]
    assert versions == list(range(1, 12))
    audit = db.execute(
        "SELECT count(*) FROM audit_event WHERE resource_id = %s AND interaction = 'update'", (pid,)).fetchone()
    assert audit is not None and audit[0] == 10
    # a body naming another id than the match is refused, as on the locked path
    other = client.put(url, json=dict(p, id="some-other-id"))
    assert other.status_code == 400, other.text
