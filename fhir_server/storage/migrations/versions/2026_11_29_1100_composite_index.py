"""Index table for composite search parameters (token$token and token$quantity pairs).

One row per pair of component values taken from the same element (``fhir_server.search.composite``):
the first component's token in ``system1``/``code1``, the second in the columns ``idx_token`` or
``idx_quantity`` use for it.

Revision ID: 0004
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "CREATE TABLE idx_composite (tenant_id text NOT NULL, resource_type text NOT NULL,"
        " resource_id text NOT NULL, param text NOT NULL, system1 text, code1 text, system text, code text,"
        " unit text, value numeric, low numeric, high numeric)"
    )
    op.execute("CREATE INDEX idx_composite_lookup ON idx_composite (tenant_id, resource_type, param, code1, code)")
    op.execute("CREATE INDEX idx_composite_owner ON idx_composite (tenant_id, resource_type, resource_id)")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS idx_composite")
