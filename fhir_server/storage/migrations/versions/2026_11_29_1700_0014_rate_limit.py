"""Rate-limit counters shared by every worker process (issue 5, "CORS and rate limits").

``rate_limit``: one row per (limit, key, window) — fixed-window counters of the ``limits``
library's strategy, kept by ``fhir_server.ratelimit.storage.PostgresStorage``. UNLOGGED: counters
are worthless after a crash and cheap to lose; they never hold patient data.

Revision ID: 0014
"""

from __future__ import annotations

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "CREATE UNLOGGED TABLE rate_limit (key text PRIMARY KEY, count bigint NOT NULL, expires_at timestamptz NOT NULL)"
    )
    op.execute("CREATE INDEX rate_limit_expires ON rate_limit (expires_at)")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS rate_limit")
