"""Medication master search, second step (fhir_server/profiles/README.md, bench/README.md): the
transliteration-folded name stored at write time, and finer statistics for string prefixes.

* ``idx_string.name_fold``: ``medication_name_fold(value_norm)`` (migration 0017) for the Medication
  ``name`` / ``generic-name`` rows only, NULL elsewhere; set by a ``BEFORE INSERT OR UPDATE`` trigger
  whose ``WHEN`` keeps every other row on the fast path (the write paths — REST, bundles, HL7,
  ``$reindex``, bulk import — all insert ``idx_string`` rows with a column list, so none has to
  know). A nullable column without default is a catalog change (no table rewrite); existing rows
  are back-filled here. Replaces the 0017 expression index: its recheck called the plpgsql fold on
  every candidate row (20 000 calls, 0.4 s, for a two-letter query over 50 000 items), now a
  partial GIN trigram index on the stored column.
* ``idx_string.value_norm`` statistics target 1000 (default 100): with 100 histogram buckets a
  4-letter prefix (``Medication?name=toxo``, ~25 rows of 83 000) was estimated at ~500 rows, so the
  planner walked ``resource`` in ``_lastUpdated`` order probing each row (the default sort + LIMIT)
  and read all 50 000 rows when the matches were few: prefix p95 34 ms → 2 ms at 50 000 items.
  Costs a larger ANALYZE sample (300 000 rows) on this table.

Revision ID: 0018
"""

from __future__ import annotations

from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

NAME_ROWS = "resource_type = 'Medication' AND param IN ('name', 'generic-name')"

TRIGGER_SQL = """
CREATE OR REPLACE FUNCTION idx_string_medication_name_fold() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  NEW.name_fold := medication_name_fold(NEW.value_norm);
  RETURN NEW;
END
$$
"""


def upgrade() -> None:
    op.execute("ALTER TABLE idx_string ADD COLUMN IF NOT EXISTS name_fold text")
    op.execute(TRIGGER_SQL)
    op.execute("DROP TRIGGER IF EXISTS idx_string_name_fold ON idx_string")
    op.execute(
        "CREATE TRIGGER idx_string_name_fold BEFORE INSERT OR UPDATE OF value_norm, param, resource_type"
        " ON idx_string FOR EACH ROW"
        " WHEN (NEW.resource_type = 'Medication' AND NEW.param IN ('name', 'generic-name'))"
        " EXECUTE FUNCTION idx_string_medication_name_fold()"
    )
    op.execute(f"UPDATE idx_string SET name_fold = medication_name_fold(value_norm) WHERE {NAME_ROWS}")
    op.execute("DROP INDEX IF EXISTS idx_string_medication_name_trgm")
    op.execute(
        "CREATE INDEX IF NOT EXISTS idx_string_name_fold_trgm ON idx_string"
        f" USING gin (name_fold gin_trgm_ops) WHERE {NAME_ROWS}"
    )
    op.execute("ALTER TABLE idx_string ALTER COLUMN value_norm SET STATISTICS 1000")
    op.execute("ANALYZE idx_string")


def downgrade() -> None:
    op.execute("ALTER TABLE idx_string ALTER COLUMN value_norm SET STATISTICS -1")
    op.execute("DROP INDEX IF EXISTS idx_string_name_fold_trgm")
    op.execute("DROP TRIGGER IF EXISTS idx_string_name_fold ON idx_string")
    op.execute("DROP FUNCTION IF EXISTS idx_string_medication_name_fold()")
    op.execute("ALTER TABLE idx_string DROP COLUMN IF EXISTS name_fold")
    op.execute(
        "CREATE INDEX IF NOT EXISTS idx_string_medication_name_trgm ON idx_string"
        f" USING gin (medication_name_fold(value_norm) gin_trgm_ops) WHERE {NAME_ROWS}"
    )
