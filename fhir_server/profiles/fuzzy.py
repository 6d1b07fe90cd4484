"""``Medication/$fuzzy-search``: medication names tolerant of small misspellings (this server's own
operation; R4 search.html has no fuzzy modifier — string search is prefix, ``:contains``, ``:exact``).

``GET [base]/Medication/$fuzzy-search?name=paracetmol[&_count=20][&system-of-medicine=ayurvedic…]``

Matches the ``name`` and ``generic-name`` index rows (``idx_string.value_norm``: accents and case
folded) that start with the value (score 1) or are similar to it by pg_trgm **word
similarity** (``value <% name_fold``: the best-matching run of words shares ≥ 50 % of its trigrams,
so ``paracetmol`` finds *Paracetamol 500 mg*, ``trifala`` *Triphala Churna*). Any other parameter is
an ordinary search criterion (every Medication parameter, modifiers, chains) compiled by
``search.compile.build_where`` with the tenant's registry and the caller's facility narrowing.
Answers a ``searchset`` Bundle ordered by score (``entry.search.score``, best first), at most
``_count`` (default 20, at most ``settings.max_page_size``) entries, no paging.

Index: the partial trigram index of migration 0018 over ``idx_string.name_fold`` (the folded
name, stored at write time by a trigger: no plpgsql call per candidate row). Values under 3
characters have no trigram: they match by prefix only. Equal scores are ordered by the trigram
similarity of the whole folded name (the closer, shorter name first), then by id.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import orjson
from starlette.responses import Response

from fhir_server.api.deps import access_of, database, tenant_of
from fhir_server.api.operations import OperationCall, operation
from fhir_server.api.responses import base_url, fhir_response
from fhir_server.auth.visibility import visible_binds
from fhir_server.errors import BadRequest
from fhir_server.search.compile import build_where
from fhir_server.search.custom import tenant_registry
from fhir_server.search.normalize import normalize
from fhir_server.search.query_values import like_escape

NAME_PARAMS = "('name', 'generic-name')"  # literal: matches the partial index of migration 0018
_OWN = frozenset({"name", "_count", "_format", "_pretty", "_summary", "_elements"})
DEFAULT_COUNT = 20
# pg_trgm word similarity of the folded names: 50 000-item bench, 300 misspellings found in the top 20:
# 0.45 and 0.5 → 86 % (0.5 scores fewer candidates), 0.55 → 78 %, 0.6 (the default) → 74 % (bench/README.md)
THRESHOLD = 0.5


def fuzzy_sql(where_sql: str, visible: str | None) -> str:
    """Candidates by prefix or word similarity on the name rows, best score per Medication; ties
    broken by the trigram similarity of the whole name (the shorter, closer name first), then id.
    The resource rows are read in that order only until ``count`` pass the criteria (LATERAL)."""
    extra = f" AND ({where_sql})" if where_sql and where_sql != "TRUE" else ""
    if visible:
        extra += f" AND {visible}"
    return (
        "WITH c AS ("
        " SELECT t.resource_id, 1.0::real AS score, similarity(medication_name_fold(%(q)s), t.name_fold) AS near"
        "  FROM idx_string t"
        "  WHERE t.tenant_id = %(tenant)s AND t.resource_type = 'Medication' AND t.param IN " + NAME_PARAMS +
        "  AND t.value_norm LIKE %(prefix)s"
        " UNION ALL"
        " SELECT t.resource_id, word_similarity(medication_name_fold(%(q)s), t.name_fold),"
        "  similarity(medication_name_fold(%(q)s), t.name_fold)"
        "  FROM idx_string t"
        "  WHERE t.resource_type = 'Medication' AND t.param IN " + NAME_PARAMS +
        "  AND medication_name_fold(%(q)s) <%% t.name_fold AND t.tenant_id = %(tenant)s AND %(trigrams)s"
        "), best AS (SELECT resource_id, max(score) AS score, max(near) AS near FROM c GROUP BY resource_id)"
        " SELECT r.resource_type, r.id, r.version_id, r.content, b.score"
        " FROM (SELECT * FROM best ORDER BY score DESC, near DESC, resource_id) b"
        " CROSS JOIN LATERAL (SELECT r.resource_type, r.id, r.version_id, r.content::text AS content FROM resource r"
        "  WHERE r.tenant_id = %(tenant)s AND r.resource_type = 'Medication' AND r.id = b.resource_id"
        f"  AND NOT r.deleted{extra}) r"
        " ORDER BY b.score DESC, b.near DESC, b.resource_id LIMIT %(count)s"
    )


@operation("fuzzy-search", levels=("type",), types=("Medication",), methods=("GET", "POST"))
async def fuzzy_search(call: OperationCall) -> Response:
    request = call.request
    name = call.text("name")
    if not name or not normalize(name).strip():
        raise BadRequest("$fuzzy-search needs a 'name' to look for", expression="name")
    count_raw = call.text("_count")
    cap = int(request.app.state.settings.max_page_size)
    try:
        count = min(int(count_raw), cap) if count_raw is not None else DEFAULT_COUNT
    except ValueError:
        raise BadRequest("_count must be a non-negative integer", expression="_count") from None
    if count < 0:
        raise BadRequest("_count must be a non-negative integer", expression="_count")
    tenant = tenant_of(request)
    criteria = [(k, v) for k, v in call.params if k not in _OWN and isinstance(v, str)]
    access = access_of(request)
    async with database(request).connection() as conn:
        registry = await tenant_registry(conn, tenant)
    from fhir_server.api.search import stored_terminology

    where = await stored_terminology(request).run(
        partial(build_where, "Medication", criteria, registry=registry, access=access)
    )
    q = normalize(name).strip()
    binds: dict[str, Any] = dict(where.binds)
    binds.update(tenant=tenant, q=q, prefix=like_escape(q) + "%", trigrams=len(q) >= 3, count=count)
    visible = visible_binds(access, "r", binds, resource_type="Medication")
    async with database(request).connection() as conn, conn.transaction():
        await conn.execute(f"SET LOCAL pg_trgm.word_similarity_threshold = {THRESHOLD}")
        cur = await conn.execute(fuzzy_sql(where.sql, visible), binds)
        rows = await cur.fetchall()
    base = base_url(request)
    bundle = {
        "resourceType": "Bundle", "type": "searchset", "total": len(rows),
        "entry": [
            {"fullUrl": f"{base}/Medication/{row[1]}", "resource": orjson.loads(row[3]),
             "search": {"mode": "match", "score": round(float(row[4]), 4)}}
            for row in rows
        ],
    }
    if where.warnings:
        outcome = {"resourceType": "OperationOutcome", "issue": [i.to_json() for i in where.warnings]}
        bundle["entry"].append({"resource": outcome, "search": {"mode": "outcome"}})
    return fhir_response(request, bundle)
