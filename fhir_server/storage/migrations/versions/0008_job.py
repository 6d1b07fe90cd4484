"""Asynchronous jobs (``$reindex`` now, bulk ``$export`` later): one generic, durable table.

A job belongs to a tenant, has a ``kind`` (the handler that runs it, ``fhir_server.jobs.runner``),
an ``owner`` (who asked), its ``request`` parameters, ``progress`` counts, a ``checkpoint`` to
resume from, and a ``result`` or ``error``. Runners claim queued jobs (and running ones whose
``heartbeat`` is old: their process died) with ``FOR UPDATE SKIP LOCKED``; ``worker`` is the lease
of the runner that holds the job, so a runner that lost it can no longer write progress.

Revision ID: 0008
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE job (
            tenant_id text NOT NULL,
            id uuid NOT NULL,
            kind text NOT NULL,
            status text NOT NULL
                CHECK (status IN ('queued', 'running', 'completed', 'failed', 'cancelled')),
            owner text,
            request jsonb NOT NULL DEFAULT '{}'::jsonb,
            progress jsonb NOT NULL DEFAULT '{}'::jsonb,
            checkpoint jsonb,
            result jsonb,
            error text,
            worker text,
            heartbeat timestamptz,
            created timestamptz NOT NULL DEFAULT now(),
            started timestamptz,
            updated timestamptz NOT NULL DEFAULT now(),
            finished timestamptz,
            expires timestamptz,
            PRIMARY KEY (tenant_id, id)
        );
        CREATE INDEX job_tenant_kind ON job (tenant_id, kind, created);
        -- what runners poll: the few unfinished jobs
        CREATE INDEX job_open ON job (created) WHERE status IN ('queued', 'running');
        CREATE INDEX job_expires ON job (expires) WHERE expires IS NOT NULL;
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE job")
