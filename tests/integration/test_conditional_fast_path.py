"""Conditional criteria: ``find_matches``' one-lookup fast path for ``identifier=system|code`` gives the
same matches as the generic search builder (https://hl7.org/fhir/R4/http.html#cond-update,
https://hl7.org/fhir/R4/search.html#token), and criteria it cannot answer exactly (escapes, OR,
modifiers, more parameters) take the generic path."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import psycopg
import pytest

from fhir_server.services import conditional
from fhir_server.storage import repository as repo

V2 = "http://terminology.hl7.org/CodeSystem/v2-0203"


def _post(client: httpx.Client, identifiers: list[dict]) -> str:
    r = client.post("/Patient", json={"resourceType": "Patient", "identifier": identifiers})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def test_fast_path_and_generic_path_give_the_same_matches(client: httpx.Client, database_url: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Each criteria: the matches ``find_matches`` answers (fast path where it applies) equal those
    of the generic builder; and the fast path is taken exactly for a plain ``identifier=system|code``."""
    sys_x = f"urn:fast:{uuid.uuid4().hex[:8]}"
    a_pipe_b = f"a|b-{uuid.uuid4().hex[:6]}"
    one = _post(client, [{"system": sys_x, "value": "1"}])
    two = _post(client, [{"system": sys_x, "value": "2"}, {"system": sys_x, "value": "1"}])
    _post(client, [{"system": sys_x, "value": "3"}])
    pipe = _post(client, [{"system": sys_x, "value": a_pipe_b}])
    mr = _post(client, [{"system": sys_x, "value": "mr-9",
                         "type": {"coding": [{"system": V2, "code": "MR"}]}}])
    esc = a_pipe_b.replace("|", "\\|")
    cases = [  # (criteria, fast path?, expected ids)
        (f"identifier={sys_x}|1", True, {one, two}),
        (f"identifier={sys_x}|2", True, {two}),
        (f"identifier={sys_x}|nope", True, set()),
        (f"identifier={sys_x}|1&_count=5", True, {one, two}),  # result parameters are not criteria
        (f"identifier={esc}", False, {pipe}),  # escaped: the value is "a|b…", any system
        (f"identifier={sys_x}|{esc}", False, {pipe}),
        (f"identifier={sys_x}|1,{sys_x}|3", False, None),  # OR
        (f"identifier:of-type={V2}|MR|mr-9", False, {mr}),  # modifier
        (f"identifier={sys_x}|1&_id={one}", False, {one}),  # more than one parameter
        ("identifier=|1", False, None),  # no system
        ("identifier=1", False, None),  # code only
    ]
    calls: list[tuple] = []
    real_match_token = repo.match_token

    async def spy(*args, **kw):
        calls.append(args)
        return await real_match_token(*args, **kw)

    monkeypatch.setattr(repo, "match_token", spy)

    async def run() -> None:
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            for query, fast, expected in cases:
                calls.clear()
                got = await conditional.find_matches(conn, "default", "Patient", query, limit=10)
                assert bool(calls) is fast, query
                with monkeypatch.context() as m:
                    m.setattr(conditional, "exact_identifier", lambda *_: None)
                    generic = await conditional.find_matches(conn, "default", "Patient", query, limit=10)
                assert [v.id for v in got] == [v.id for v in generic], query
                if expected is not None:
                    assert {v.id for v in got} == expected, query

    asyncio.run(run())
