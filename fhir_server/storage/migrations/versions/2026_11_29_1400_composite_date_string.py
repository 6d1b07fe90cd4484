"""Composite parameters whose second component is a date or a string (Observation
``code-value-date``, ``code-value-string``; R4 search.html#composite).

``idx_composite`` gains the columns ``idx_string`` and ``idx_date`` use for that component:
``value_norm``/``value_exact`` and ``dlow``/``dhigh`` (inclusive timestamptz bounds). Existing
Observations with a string, dateTime or Period value are back-filled with the same Python
extraction the write path uses.

Revision ID: 0009
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_BATCH = 500
_PARAMS = ("code-value-date", "code-value-string")


def upgrade() -> None:
    op.execute(
        "ALTER TABLE idx_composite ADD COLUMN value_norm text, ADD COLUMN value_exact text,"
        " ADD COLUMN dlow timestamptz, ADD COLUMN dhigh timestamptz"
    )
    _backfill()


def _backfill() -> None:
    from fhir_server.search.extract import extract_index_rows

    conn = op.get_bind()
    insert = sa.text(
        "INSERT INTO idx_composite (tenant_id, resource_type, resource_id, param, system1, code1, system, code,"
        " unit, value, low, high, value_norm, value_exact, dlow, dhigh) VALUES (:t, 'Observation', :id, :p, :s1, :c1,"
        " :s, :c, :u, :v, :lo, :hi, :vn, :ve, :dl, :dh)"
    )
    result = conn.execute(
        sa.text(
            "SELECT tenant_id, id, content::text FROM resource WHERE resource_type = 'Observation' AND NOT deleted"
            " AND content ?| array['valueString', 'valueDateTime', 'valuePeriod']"
        ),
        execution_options={"stream_results": True, "max_row_buffer": _BATCH},
    )
    keys = ("p", "s1", "c1", "s", "c", "u", "v", "lo", "hi", "vn", "ve", "dl", "dh")
    batch: list[dict[str, object]] = []
    for tenant, rid, content in result:
        rows = extract_index_rows(json.loads(content))
        batch += [{"t": tenant, "id": rid, **dict(zip(keys, row, strict=True))} for row in rows.composite if row[0] in _PARAMS]
        if len(batch) >= _BATCH:
            conn.execute(insert, batch)
            batch = []
    if batch:
        conn.execute(insert, batch)


def downgrade() -> None:
    op.execute("DELETE FROM idx_composite WHERE param IN ('code-value-date', 'code-value-string')")
    op.execute(
        "ALTER TABLE idx_composite DROP COLUMN value_norm, DROP COLUMN value_exact, DROP COLUMN dlow, DROP COLUMN dhigh"
    )
