"""The (tenant, type, last_updated) index covers live resources only.

Searches always ask for ``NOT deleted``, so they can use it; a read by id does not, so the planner
can no longer pick it over the primary key on a table without statistics (it did, walking every
row of the type per read right after a bulk load; bench/README.md finding 1).

Revision ID: 0006
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("DROP INDEX resource_type_updated")
    op.execute(
        "CREATE INDEX resource_type_updated_live ON resource (tenant_id, resource_type, last_updated) WHERE NOT deleted"
    )


def downgrade() -> None:
    op.execute("DROP INDEX resource_type_updated_live")
    op.execute("CREATE INDEX resource_type_updated ON resource (tenant_id, resource_type, last_updated)")
