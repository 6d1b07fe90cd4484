"""Full-text index for ``_text`` and ``_content`` (R4 search.html#_text, #_content).

One ``idx_text`` row per resource and parameter: ``doc`` = ``to_tsvector('simple', text)`` of the
narrative without tags (``_text``) or of every string value of the resource (``_content``), both
normalised in Python (``fhir_server.search.rows.text_rows``). GIN on ``doc``; the tenant-leading
owner index serves the delete on rewrite and the correlated EXISTS of a search.

Existing live resources are back-filled here with the same Python extraction.

Revision ID: 0007
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_BATCH = 500


def upgrade() -> None:
    op.execute(
        "CREATE TABLE idx_text (tenant_id text NOT NULL, resource_type text NOT NULL,"
        " resource_id text NOT NULL, param text NOT NULL, doc tsvector NOT NULL)"
    )
    op.execute("CREATE INDEX idx_text_doc ON idx_text USING gin (doc)")
    op.execute("CREATE INDEX idx_text_owner ON idx_text (tenant_id, resource_type, resource_id, param)")
    _backfill()


def _backfill() -> None:
    from fhir_server.search.rows import IndexRows, text_rows

    conn = op.get_bind()
    insert = sa.text(
        "INSERT INTO idx_text (tenant_id, resource_type, resource_id, param, doc)"
        " VALUES (:t, :rt, :id, :p, to_tsvector('simple', :d))"
    )
    result = conn.execute(
        sa.text("SELECT tenant_id, resource_type, id, content::text FROM resource WHERE NOT deleted AND content IS NOT NULL"),
        execution_options={"stream_results": True, "max_row_buffer": _BATCH},
    )
    batch: list[dict[str, str]] = []
    for tenant, rtype, rid, content in result:
        rows = IndexRows()
        text_rows(json.loads(content), rows)
        batch += [{"t": tenant, "rt": rtype, "id": rid, "p": p, "d": d} for p, d in rows.text]
        if len(batch) >= _BATCH:
            conn.execute(insert, batch)
            batch = []
    if batch:
        conn.execute(insert, batch)


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS idx_text")
