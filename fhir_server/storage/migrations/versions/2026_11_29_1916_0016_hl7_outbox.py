"""HL7 v2 bridge, outbound (issue 6 "Outbound"): destinations and the durable outbox.

* ``hl7_destination``: one row per (tenant, name): the device endpoint (host, port, TLS options),
  the message type it takes (``ORM^O01`` | ``OML^O21``) and v2 version, MSH-3/4 (sending) and
  MSH-5/6 (receiving) application/facility, which ServiceRequests it takes (``categories`` lab /
  imaging, optional ``codes``, ``performers``, ``locations``), ``enabled``, the ``retry`` policy
  (JSONB), ``forward_hl7`` (also send orders the HL7 inbound bridge wrote — never back to the
  application that sent them) and ``last_sequence``, the per-destination counter that orders its messages (taken under
  the destination row's lock in the writing transaction: sequence order = commit order).
* ``hl7_outbox``: one row per message: ``sequence`` per destination, the ServiceRequest and its
  version, ``event`` (new | cancel | hold | release → ORC-1 NW | CA | HD | RL), the encoded ``message`` and MSH-10
  ``control_id``; ``status`` queued → sending → sent | failed (a retry is scheduled) → … → dead;
  ``attempts``, ``next_attempt_at``, ``lease_owner`` + ``lease_until`` (a ``sending`` row whose
  lease ran out — its dispatcher died — is taken over), ``last_error``, the ACK (``ack_code``,
  ``ack_text``, ``ack``) and timestamps. ``hl7_outbox_due`` serves the claim query, which takes only
  the head (lowest unfinished sequence) of each destination.

Revision ID: 0016
"""

from __future__ import annotations

from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE hl7_destination (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            tenant_id text NOT NULL REFERENCES tenant (id),
            name text NOT NULL,
            host text NOT NULL,
            port integer NOT NULL CONSTRAINT hl7_destination_port_check CHECK (port BETWEEN 1 AND 65535),
            message_type text NOT NULL DEFAULT 'ORM^O01'
                CONSTRAINT hl7_destination_type_check CHECK (message_type IN ('ORM^O01', 'OML^O21')),
            version text NOT NULL DEFAULT '2.5.1',
            sending_app text NOT NULL DEFAULT 'FHIR-SERVER',
            sending_facility text NOT NULL DEFAULT '',
            receiving_app text NOT NULL DEFAULT '',
            receiving_facility text NOT NULL DEFAULT '',
            categories text[] NOT NULL DEFAULT '{lab}',
            codes text[] NOT NULL DEFAULT '{}',
            performers text[] NOT NULL DEFAULT '{}',
            locations text[] NOT NULL DEFAULT '{}',
            tls jsonb NOT NULL DEFAULT '{}'::jsonb,
            retry jsonb NOT NULL DEFAULT '{}'::jsonb,
            forward_hl7 boolean NOT NULL DEFAULT false,
            enabled boolean NOT NULL DEFAULT true,
            last_sequence bigint NOT NULL DEFAULT 0,
            created_at timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT hl7_destination_name UNIQUE (tenant_id, name)
        )
        """
    )
    op.execute(
        """
        CREATE TABLE hl7_outbox (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            tenant_id text NOT NULL,
            destination_id bigint NOT NULL REFERENCES hl7_destination (id) ON DELETE CASCADE,
            sequence bigint NOT NULL,
            resource_type text NOT NULL DEFAULT 'ServiceRequest',
            resource_id text NOT NULL,
            resource_version integer NOT NULL,
            event text NOT NULL CONSTRAINT hl7_outbox_event_check CHECK (event IN ('new', 'cancel', 'hold', 'release')),
            message_type text NOT NULL,
            control_id text NOT NULL,
            message text NOT NULL,
            status text NOT NULL DEFAULT 'queued'
                CONSTRAINT hl7_outbox_status_check CHECK (status IN ('queued', 'sending', 'sent', 'failed', 'dead')),
            attempts integer NOT NULL DEFAULT 0,
            next_attempt_at timestamptz NOT NULL DEFAULT clock_timestamp(),
            lease_owner text,
            lease_until timestamptz,
            last_error text,
            ack_code text,
            ack_text text,
            ack text,
            created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
            first_attempt_at timestamptz,
            last_attempt_at timestamptz,
            sent_at timestamptz,
            CONSTRAINT hl7_outbox_order UNIQUE (destination_id, sequence)
        )
        """
    )
    # the claim: per destination, the lowest sequence not yet sent/dead
    op.execute(
        "CREATE INDEX hl7_outbox_due ON hl7_outbox (destination_id, sequence) "
        "WHERE status IN ('queued', 'sending', 'failed')"
    )
    op.execute("CREATE INDEX hl7_outbox_resource ON hl7_outbox (tenant_id, resource_id, destination_id)")
    op.execute("CREATE INDEX hl7_outbox_status ON hl7_outbox (status, created_at)")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS hl7_outbox")
    op.execute("DROP TABLE IF EXISTS hl7_destination")
