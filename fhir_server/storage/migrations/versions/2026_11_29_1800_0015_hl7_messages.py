"""HL7 v2 bridge (issue 6): the message log and the sender configuration.

* ``hl7_message``: every delimited inbound message, stored (raw bytes, its own commit) BEFORE it is
  processed; ``status`` received → processed | error; the ACK sent (``ack``, ``ack_code``), the
  resources written (``resources``: ``Type/id/_history/n``), the error (``error``, ``error_location``,
  ``error_code`` from HL7 table 0357) and ``attempts`` (first try + replays). A repeat of
  (sending application, sending facility, MSH-10) finds its row through ``hl7_message_dedupe`` and is
  answered with the stored ACK. Malformed messages whose MSH cannot be read have no key (NULL) and
  are kept for review only.
* ``hl7_sender``: one row per (MSH-3, MSH-4): the tenant it writes to, the agent its audit rows
  name, the role, and its options (unknown patient policy, assigning authority → system map,
  mapping overrides, time zone) as JSONB. Managed with ``fhir-server hl7 sender add|list|remove``.

Revision ID: 0015
"""

from __future__ import annotations

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE hl7_message (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            tenant_id text,
            sending_app text,
            sending_facility text,
            control_id text,
            message_type text,
            version text,
            raw bytea NOT NULL,
            peer text,
            received_at timestamptz NOT NULL DEFAULT clock_timestamp(),
            processed_at timestamptz,
            status text NOT NULL DEFAULT 'received'
                CONSTRAINT hl7_message_status_check CHECK (status IN ('received', 'processed', 'error')),
            ack_code text,
            ack text,
            resources jsonb NOT NULL DEFAULT '[]'::jsonb,
            error text,
            error_location text,
            error_code text,
            attempts integer NOT NULL DEFAULT 0
        )
        """
    )
    op.execute(
        "CREATE UNIQUE INDEX hl7_message_dedupe ON hl7_message (sending_app, sending_facility, control_id) "
        "WHERE control_id IS NOT NULL"
    )
    op.execute("CREATE INDEX hl7_message_status ON hl7_message (status, received_at)")
    op.execute("CREATE INDEX hl7_message_tenant ON hl7_message (tenant_id, received_at)")
    op.execute(
        """
        CREATE TABLE hl7_sender (
            sending_app text NOT NULL,
            sending_facility text NOT NULL,
            tenant_id text NOT NULL REFERENCES tenant (id),
            agent text NOT NULL,
            role text,
            options jsonb NOT NULL DEFAULT '{}'::jsonb,
            enabled boolean NOT NULL DEFAULT true,
            created_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (sending_app, sending_facility)
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS hl7_sender")
    op.execute("DROP TABLE IF EXISTS hl7_message")
