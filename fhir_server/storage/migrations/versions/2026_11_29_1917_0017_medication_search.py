"""Medication master search (fhir_server/profiles/README.md): a trigram index for misspelling-tolerant
name search (``Medication/$fuzzy-search``, pg_trgm ``<%`` word similarity over transliteration-folded names).

A partial GIN index on ``medication_name_fold(value_norm)`` over the ``idx_string`` rows of the project SearchParameters ``name`` and
``generic-name`` of Medication only: the general ``idx_string_trgm`` covers every string row of every
type and tenant (names, addresses…), so a fuzzy Medication lookup would sift through all of them.
The fuzzy query repeats the predicate literally so the planner can use it. Prefix (``name=``) and
``:contains`` keep using ``idx_string_lookup`` / ``idx_string_trgm``.

Existing Medications get ``name``/``generic-name`` rows on their next write or through
``POST [base]/Medication/$reindex``.

Revision ID: 0017
"""

from __future__ import annotations

from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


# Transliteration folding of (already case/accent-normalised) names: Indian drug names are spelt
# several ways in Latin letters (triphala/trifala, ashwagandha/aswagandha, belladonna/beladona):
# aspirated consonants lose their h, c/ck → k, w → v, doubled letters collapse. Used on both sides.
# plpgsql, not sql: a SQL function is inlined into the query but not matched against the index
# expression, so the planner never used the index (seen with EXPLAIN).
FOLD_SQL = """
CREATE OR REPLACE FUNCTION medication_name_fold(v text) RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE STRICT AS $$
BEGIN
  RETURN regexp_replace(
    translate(
      replace(replace(replace(replace(replace(replace(replace(replace(replace(v,
        'ph', 'f'), 'th', 't'), 'dh', 'd'), 'bh', 'b'), 'kh', 'k'), 'gh', 'g'), 'sh', 's'), 'ck', 'k'), 'ch', 'c'),
      'cwz', 'kvj'),
    '([a-z])\\1+', '\\1', 'g');
END
$$
"""


def upgrade() -> None:
    op.execute(FOLD_SQL)
    op.execute(
        "CREATE INDEX IF NOT EXISTS idx_string_medication_name_trgm ON idx_string"
        " USING gin (medication_name_fold(value_norm) gin_trgm_ops)"
        " WHERE resource_type = 'Medication' AND param IN ('name', 'generic-name')"
    )


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS idx_string_medication_name_trgm")
    op.execute("DROP FUNCTION IF EXISTS medication_name_fold(text)")
