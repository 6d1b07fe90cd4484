"""Keyset paging over the sort keys (https://hl7.org/fhir/R4/http.html#paging, search.html#sort).

A page token is opaque to the client: base64url JSON ``{"d": "n"|"p", "v": [[tag, value], ...]}``
holding the direction (next / previous) and the sort values of the boundary row (the last row of
the page for *next*, the first for *previous*), tiebreaks included. The next page is "every row
strictly after these values in the sort order", so rows created or deleted between two requests
never make the walk repeat or skip a row that existed throughout. *previous* is the same
condition in the reversed order (directions and NULL placement flipped), read backwards.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson

from fhir_server.errors import BadRequest

PAGE_PARAM = "_page"


@dataclass(frozen=True, slots=True)
class SortKey:
    """One ORDER BY term: an SQL expression over the resource row ``r`` and its direction."""

    sql: str
    desc: bool
    cast: str  # timestamptz | text | numeric: the SQL type the cursor value is bound as
    nullable: bool = True  # resources without a value sort last whatever the direction


@dataclass(frozen=True, slots=True)
class PageToken:
    backward: bool
    values: tuple[Any, ...]


_TAGS: dict[str, Callable[[str], Any]] = {"d": datetime.fromisoformat, "n": Decimal, "s": str}
_CAST_TAG = {"timestamptz": "d", "numeric": "n", "text": "s"}


def _enc(v: Any) -> Any:
    if v is None:
        return None
    if isinstance(v, datetime):
        return ["d", v.isoformat()]
    if isinstance(v, Decimal):
        return ["n", str(v)]
    return ["s", str(v)]


def encode_page(token: PageToken) -> str:
    raw = orjson.dumps({"d": "p" if token.backward else "n", "v": [_enc(v) for v in token.values]})
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page(text: str, keys: list[SortKey]) -> PageToken:
    """The token, checked against the sort keys of this search (a token of another search is a 400)."""
    try:
        raw = orjson.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        values = raw["v"]
        if raw["d"] not in ("n", "p") or len(values) != len(keys):
            raise ValueError
        out: list[Any] = []
        for v, k in zip(values, keys, strict=True):
            if v is None:
                if not k.nullable:
                    raise ValueError
                out.append(None)
                continue
            tag, value = v
            if tag != _CAST_TAG[k.cast] or not isinstance(value, str):
                raise ValueError
            out.append(_TAGS[tag](value))
        return PageToken(raw["d"] == "p", tuple(out))
    except (ValueError, TypeError, KeyError, InvalidOperation, orjson.JSONDecodeError, base64.binascii.Error):
        raise BadRequest("The paging token is not valid for this search", expression=PAGE_PARAM) from None


def order_by(keys: list[SortKey], columns: list[str], backward: bool) -> str:
    terms = []
    for k, col in zip(keys, columns, strict=True):
        desc = k.desc ^ backward
        term = f"{col} {'DESC' if desc else 'ASC'}"
        if k.nullable:
            term += " NULLS FIRST" if backward else " NULLS LAST"
        terms.append(term)
    return ", ".join(terms)


def after_condition(
    keys: list[SortKey], columns: list[str], values: tuple[Any, ...], backward: bool, bind: Callable[[Any], str]
) -> str:
    """Rows strictly after ``values`` in the (possibly reversed) order: an OR of
    ``k1 = c1 AND … AND k(i-1) = c(i-1) AND ki after ci``, NULL-aware."""
    if all(not k.nullable for k in keys) and len({k.desc for k in keys}) == 1 and None not in values:
        # one direction, no NULLs (the default order): a row comparison, which an index can serve
        op = "<" if keys[0].desc ^ backward else ">"
        cvals = ", ".join(f"{bind(v)}::{k.cast}" for k, v in zip(keys, values, strict=True))
        return f"({', '.join(columns)}) {op} ({cvals})"
    ors: list[str] = []
    eqs: list[str] = []
    for k, col, v in zip(keys, columns, values, strict=True):
        desc = k.desc ^ backward
        nulls_first = backward
        if v is None:
            after = f"{col} IS NOT NULL" if nulls_first else None
            eq = f"{col} IS NULL"
        else:
            p = f"{bind(v)}::{k.cast}"
            after = f"{col} {'<' if desc else '>'} {p}"
            if k.nullable and not nulls_first:
                after = f"({after} OR {col} IS NULL)"
            eq = f"{col} = {p}"
        if after is not None:
            ors.append("(" + " AND ".join([*eqs, after]) + ")")
        eqs.append(eq)
    return "(" + " OR ".join(ors) + ")" if ors else "FALSE"
