"""``_text`` and ``_content``: PostgreSQL full text over idx_text (https://hl7.org/fhir/R4/search.html#_text,
search.html#_content)."""

from __future__ import annotations

import json
import uuid

import httpx
import psycopg

from fhir_server.search.compile import build_where
from fhir_server.storage import migrate
from tests.conftest import make_database
from tests.integration.searchdb import insert_indexed, seeded_database
from tests.integration.test_crud import new_patient


def _word() -> str:
    return "w" + uuid.uuid4().hex[:10]


def _narrative(html: str) -> dict:
    return {"status": "generated", "div": f'<div xmlns="http://www.w3.org/1999/xhtml">{html}</div>'}


def _ids(client: httpx.Client, path: str, **params: str) -> set[str]:
    r = client.get(path, params=params)
    assert r.status_code == 200, r.text
    return {e["resource"]["id"] for e in r.json().get("entry", []) if e["search"]["mode"] == "match"}


def _create(client: httpx.Client, resource: dict) -> dict:
    r = client.post(f"/{resource['resourceType']}", json=resource)
    assert r.status_code == 201, r.text
    return r.json()


def test_text_searches_narrative_words_not_markup(client: httpx.Client) -> None:
    """search.html#_text: the narrative's text (tags dropped, entities decoded), case and accents ignored."""
    a, b, cls = _word(), _word(), _word()
    p1 = _create(client, new_patient(text=_narrative(f'<p class="{cls}">Lives in Montr&#233;al with {a}</p>')))["id"]
    p2 = _create(client, new_patient(text=_narrative(f"<p>{a} and {b}</p>")))["id"]
    assert _ids(client, "/Patient", _text=a) == {p1, p2}
    assert _ids(client, "/Patient", _text=a.upper()) == {p1, p2}
    assert _ids(client, "/Patient", _text=f"montreal {a}") == {p1}  # words AND, accent-insensitive
    assert _ids(client, "/Patient", _text=f"Montréal {a}") == {p1}
    assert _ids(client, "/Patient", _text=cls) == set()  # attribute values are markup
    assert _ids(client, "/Patient", _text=f"{a} -{b}") == {p1}  # websearch syntax: -word
    assert _ids(client, "/Patient", _text=f'"{a} and {b}"') == {p2}  # a phrase
    assert _ids(client, "/Patient", _text=f'"{b} and {a}"') == set()
    assert _ids(client, "/Patient", _text=f"{b} or montreal", _id=f"{p1},{p2}") == {p1, p2}  # or
    assert _ids(client, "/Patient", _text=f"{b} or nowhere", _id=f"{p1},{p2}") == {p2}


def test_content_searches_every_string_value(client: httpx.Client) -> None:
    """search.html#_content: every string value of the resource; _text only sees the narrative."""
    fam, note = _word(), _word()
    pid = _create(client, new_patient(name=[{"family": fam.capitalize(), "given": ["Zoë"]}], text=_narrative(f"<p>{note}</p>")))["id"]
    assert _ids(client, "/Patient", _content=fam) == {pid}
    assert _ids(client, "/Patient", _content=f"zoe {fam}") == {pid}
    assert _ids(client, "/Patient", _content=note) == {pid}  # the narrative's text is content too
    assert _ids(client, "/Patient", _text=fam) == set()
    assert _ids(client, "/Patient", _content=f"{fam},{_word()}") == {pid}  # commas OR
    assert _ids(client, "/Observation", _content=fam) == set()  # per type


def test_update_and_delete_reindex_full_text(client: httpx.Client) -> None:
    """search.html#_text: the index follows updates and deletes."""
    old, new = _word(), _word()
    created = _create(client, new_patient(text=_narrative(f"<p>{old}</p>")))
    pid = created["id"]
    assert _ids(client, "/Patient", _text=old) == {pid}
    r = client.put(f"/Patient/{pid}", json={**created, "text": _narrative(f"<p>{new}</p>")})
    assert r.status_code == 200, r.text
    assert _ids(client, "/Patient", _text=old) == set()
    assert _ids(client, "/Patient", _text=new) == {pid}
    assert client.delete(f"/Patient/{pid}").status_code in (200, 204)
    assert _ids(client, "/Patient", _text=new) == set()


def test_missing_and_bad_modifier(client: httpx.Client) -> None:
    """search.html#missing on _text; an unsupported modifier is 400 (search.html#errors)."""
    fam = _word()
    with_text = _create(client, new_patient(name=[{"family": fam}], text=_narrative("<p>hello</p>")))["id"]
    bare = new_patient(name=[{"family": fam}])
    bare.pop("text", None)
    without = _create(client, bare)["id"]
    assert _ids(client, "/Patient", family=fam, **{"_text:missing": "true"}) == {without}
    assert _ids(client, "/Patient", family=fam, **{"_text:missing": "false"}) == {with_text}
    assert _ids(client, "/Patient", family=fam, **{"_content:missing": "false"}) == {with_text, without}
    assert client.get("/Patient", params={"_text:exact": "x"}).status_code == 400


def test_full_text_is_tenant_scoped(pg_admin_url: str) -> None:
    """search.html#_content: rows of another tenant never match (every EXISTS carries the tenant)."""
    word = _word()
    with seeded_database(pg_admin_url) as conn:
        insert_indexed(conn, "other", {"resourceType": "Patient", "id": "x1", "name": [{"family": word}]})
        insert_indexed(conn, "default", {"resourceType": "Patient", "id": "x2", "name": [{"family": "Other"}]})
        where = build_where("Patient", [("_content", word)])
        sql = f"SELECT r.id FROM resource r WHERE r.tenant_id = %(tenant)s AND r.resource_type = 'Patient' AND ({where.sql})"
        assert conn.execute(sql, {**where.binds, "tenant": "default"}).fetchall() == []
        assert conn.execute(sql, {**where.binds, "tenant": "other"}).fetchall() == [("x1",)]


def test_migration_backfills_existing_resources(pg_admin_url: str) -> None:
    """search.html#_text: resources stored before migration 0007 are indexed by it."""
    url = make_database(pg_admin_url, revision="0006")
    word = _word()
    patient = {"resourceType": "Patient", "id": "b1", "text": _narrative(f"<b>{word}</b>"), "name": [{"family": "Backfill"}]}
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO resource (tenant_id, resource_type, id, version_id, last_updated, content)"
            " VALUES ('default', 'Patient', 'b1', 1, now(), %s::jsonb)",
            (json.dumps(patient),),
        )
        migrate.upgrade(url)
        for value, params in ((word, "_text"), ("backfill", "_content")):
            where = build_where("Patient", [(params, value)])
            sql = f"SELECT r.id FROM resource r WHERE r.tenant_id = %(tenant)s AND ({where.sql})"
            assert conn.execute(sql, {**where.binds, "tenant": "default"}).fetchall() == [("b1",)]
