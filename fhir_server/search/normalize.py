"""String normalisation shared by index extraction and query compilation (R4 search.html#string).

"By default, a field matches a string query if the value of the field equals or starts with the
supplied parameter value, after both have been normalized by case and accent": NFKD, drop the
combining marks, then casefold. Punctuation and whitespace are kept as they are.
"""

from __future__ import annotations

import unicodedata

# value_norm carries a btree index (text_pattern_ops); PostgreSQL refuses btree entries over
# ~2700 bytes, so the normalised form is cut at this many UTF-8 bytes. value_exact keeps everything.
MAX_NORM_BYTES = 2000
# the same limit for the other btree-indexed columns: token system and code share one index entry,
# reference url and uri value have one each. Search values are cut the same way before comparing.
MAX_TOKEN_BYTES = 1000
MAX_URL_BYTES = 2000


def normalize(value: str) -> str:
    if value.isascii():  # fast path: nothing to decompose
        return value.casefold()
    decomposed = unicodedata.normalize("NFKD", value)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def truncate_utf8(value: str, max_bytes: int = MAX_NORM_BYTES) -> str:
    if len(value) * 4 <= max_bytes:
        return value
    raw = value.encode("utf-8")
    if len(raw) <= max_bytes:
        return value
    return raw[:max_bytes].decode("utf-8", errors="ignore")


def normalize_for_index(value: str) -> str:
    return truncate_utf8(normalize(value))


def token_key(value: str | None) -> str | None:
    return truncate_utf8(value, MAX_TOKEN_BYTES) if value else value


def url_key(value: str | None) -> str | None:
    return truncate_utf8(value, MAX_URL_BYTES) if value else value
