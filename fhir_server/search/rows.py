"""Typed FHIR values -> index rows, one converter per SearchParameter type (R4 search.html).

Each converter takes the parameter code, the ``(value, fhir_type)`` items its expression selected
and the ``IndexRows`` to append to. Values that cannot be indexed (a malformed date, a Quantity
without a value, an Attachment under a reference parameter) are skipped: validation reports them,
the index just has nothing to match.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from fhir_server.definitions.resource_types import RESOURCE_TYPES
from fhir_server.search.normalize import (
    MAX_TOKEN_BYTES,
    MAX_URL_BYTES,
    normalize,
    normalize_for_index,
    token_key,
    url_key,
)
from fhir_server.search.ranges import DATE_MAX, DATE_MIN, NEG_INF, POS_INF, date_range, decimal_range, to_decimal
from fhir_server.search.references import parse_canonical, parse_reference

Item = tuple[Any, str]
NAN = Decimal("NaN")
ISO_4217 = "urn:iso:std:iso:4217"


@dataclass(slots=True)
class IndexRows:
    """Rows for the idx_* tables, each in table column order without tenant/type/resource id."""

    string: list[tuple[str, str, str]] = field(default_factory=list)  # param, value_norm, value_exact
    token: list[tuple[str, str | None, str | None, str | None]] = field(
        default_factory=list
    )  # param, system, code, text
    reference: list[tuple[str, str | None, str | None, str | None, str | None]] = field(default_factory=list)
    # ^ param, target_type, target_id, target_version, url
    date: list[tuple[str, datetime, datetime]] = field(default_factory=list)  # param, low, high (inclusive)
    number: list[tuple[str, Decimal, Decimal, Decimal]] = field(default_factory=list)  # param, value, low, high
    quantity: list[tuple[str, str | None, str | None, str | None, Decimal, Decimal, Decimal]] = field(
        default_factory=list
    )
    # ^ param, system, code, unit, value, low, high
    uri: list[tuple[str, str]] = field(default_factory=list)  # param, value
    composite: list[tuple] = field(default_factory=list)
    # ^ param, system1, code1, system, code, unit, value, low, high, value_norm, value_exact, dlow, dhigh
    #   (see composite.py; the second component in the columns of idx_token, idx_quantity, idx_string or idx_date)
    text: list[tuple[str, str]] = field(default_factory=list)
    # ^ param (_text | _content), document text; stored as to_tsvector('simple', text) in idx_text

    def finish(self) -> IndexRows:
        """Drop duplicate rows and cut btree-indexed values to what PostgreSQL can index."""
        self.token = [
            (p, token_key(s), token_key(c), t)
            if _long(s, MAX_TOKEN_BYTES) or _long(c, MAX_TOKEN_BYTES)
            else (p, s, c, t)
            for p, s, c, t in self.token
        ]
        self.reference = [
            (p, tt, ti, tv, url_key(u)) if _long(u, MAX_URL_BYTES) else (p, tt, ti, tv, u)
            for p, tt, ti, tv, u in self.reference
        ]
        self.uri = [(p, url_key(v)) if _long(v, MAX_URL_BYTES) else (p, v) for p, v in self.uri]  # type: ignore[misc]
        for name in _KINDS:
            rows = getattr(self, name)
            if len(rows) > 1:
                setattr(self, name, list(dict.fromkeys(rows)))
        return self

    def count(self) -> int:
        return sum(len(getattr(self, n)) for n in _KINDS)


_KINDS = ("string", "token", "reference", "date", "number", "quantity", "uri", "composite")


def _long(value: str | None, max_bytes: int) -> bool:
    """Could ``value`` exceed ``max_bytes`` of UTF-8? (cheap test on the length in characters)"""
    return value is not None and len(value) * 4 > max_bytes


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


# -- string -------------------------------------------------------------------------------------
_NAME_PARTS = ("family", "given", "prefix", "suffix", "text")
_ADDRESS_PARTS = ("line", "city", "district", "state", "postalCode", "country", "text")
_STRING_PARTS = {"HumanName": _NAME_PARTS, "Address": _ADDRESS_PARTS}


def string_rows(code: str, items: list[Item], rows: IndexRows) -> None:
    out = rows.string
    for value, ftype in items:
        if isinstance(value, str):
            if value:
                out.append((code, normalize_for_index(value), value))
            continue
        parts = _STRING_PARTS.get(ftype)
        if parts is None or not isinstance(value, dict):
            continue
        for part in parts:
            v = value.get(part)
            for s in v if isinstance(v, list) else (v,):
                if isinstance(s, str) and s:
                    out.append((code, normalize_for_index(s), s))


# -- token --------------------------------------------------------------------------------------
def _text(value: Any) -> str | None:
    return normalize(value) if isinstance(value, str) and value else None


def _coding_row(code: str, coding: dict) -> tuple[str, str | None, str | None, str | None] | None:
    system, c, display = _str(coding.get("system")), _str(coding.get("code")), _text(coding.get("display"))
    if system is None and c is None and display is None:
        return None
    return code, system, c, display


OF_TYPE_SUFFIX = ":of-type"


def token_rows(code: str, items: list[Item], rows: IndexRows) -> None:
    out = rows.token
    for value, ftype in items:
        if isinstance(value, bool):
            out.append((code, None, "true" if value else "false", None))
        elif isinstance(value, str):
            if value:
                out.append((code, None, value, None))
        elif not isinstance(value, dict):
            if isinstance(value, (int, Decimal)):
                out.append((code, None, str(value), None))
        elif ftype == "CodeableConcept":
            for coding in value.get("coding") or ():
                if isinstance(coding, dict) and (row := _coding_row(code, coding)):
                    out.append(row)
            if text := _text(value.get("text")):
                out.append((code, None, None, text))  # a text-only row: found by :text only
        elif ftype == "Coding":
            if row := _coding_row(code, value):
                out.append(row)
        elif ftype == "Identifier":
            system, v = _str(value.get("system")), _str(value.get("value"))
            type_ = value.get("type")
            text = _text(type_.get("text")) if isinstance(type_, dict) else None
            if system or v:
                out.append((code, system, v, text))
            if v and isinstance(type_, dict):
                # :of-type: token rows "<code>:of-type" = (type.coding.system, "type.coding.code|value")
                for coding in type_.get("coding") or ():
                    if isinstance(coding, dict) and (tc := _str(coding.get("code"))):
                        out.append((code + OF_TYPE_SUFFIX, _str(coding.get("system")), f"{tc}|{v}", None))
        elif ftype == "ContactPoint" and (v := _str(value.get("value"))):
            # the token is the value; the server may use ContactPoint.system as the token system
            out.append((code, _str(value.get("system")), v, None))


# -- reference ----------------------------------------------------------------------------------
IDENTIFIER_SUFFIX = ":identifier"


def reference_rows(code: str, items: list[Item], rows: IndexRows) -> None:
    out = rows.reference
    for value, ftype in items:
        if isinstance(value, str):
            parts = parse_reference(value) if ftype == "Reference" else parse_canonical(value)
            if parts:
                out.append((code, *parts))
        elif not isinstance(value, dict):
            continue
        elif "resourceType" in value:  # an inline resource (Bundle.entry[0].resource)
            rid = _str(value.get("id"))
            if rid:
                out.append((code, value["resourceType"], rid, None, None))
        elif ftype == "Reference":
            literal = _str(value.get("reference"))
            parts = parse_reference(literal) if literal else None
            if parts:
                ttype, tid, vid, url = parts
                if ttype is None and (declared := _str(value.get("type"))):
                    ttype = declared.rsplit("/", 1)[-1] if declared.rsplit("/", 1)[-1] in RESOURCE_TYPES else None
                out.append((code, ttype, tid, vid, url))
            ident = value.get("identifier")
            if isinstance(ident, dict):
                # R4 :identifier modifier: kept as a token row under "<code>:identifier"
                system, v = _str(ident.get("system")), _str(ident.get("value"))
                if system or v:
                    ttext = ident.get("type")
                    text = _text(ttext.get("text")) if isinstance(ttext, dict) else None
                    rows.token.append((code + IDENTIFIER_SUFFIX, system, v, text))


# -- date ---------------------------------------------------------------------------------------
def _bounds(value: Any) -> tuple[datetime, datetime] | None:
    try:
        return date_range(value) if isinstance(value, str) else None
    except ValueError:
        return None


def _period(value: dict) -> tuple[datetime, datetime] | None:
    start, end = _bounds(value.get("start")), _bounds(value.get("end"))
    if start is None and end is None:
        return None
    return (start[0] if start else DATE_MIN), (end[1] if end else DATE_MAX)


def _timing(value: dict) -> tuple[datetime, datetime] | None:
    ranges = [r for e in value.get("event") or () if (r := _bounds(e))]
    repeat = value.get("repeat")
    bounds = repeat.get("boundsPeriod") if isinstance(repeat, dict) else None
    if isinstance(bounds, dict) and (r := _period(bounds)):
        ranges.append(r)
    if not ranges:
        return None
    return min(r[0] for r in ranges), max(r[1] for r in ranges)


def date_rows(code: str, items: list[Item], rows: IndexRows) -> None:
    out = rows.date
    for value, ftype in items:
        if isinstance(value, str):
            r = _bounds(value)
        elif not isinstance(value, dict):
            continue
        elif ftype == "Period":
            r = _period(value)
        elif ftype == "Timing":
            r = _timing(value)
        else:
            continue
        if r is not None:
            out.append((code, r[0], r[1]))


# -- number and quantity --------------------------------------------------------------------
def _number(value: Any) -> Decimal | None:
    try:
        return to_decimal(value)
    except ValueError:
        return None


def _point(d: Decimal, comparator: Any = None) -> tuple[Decimal, Decimal, Decimal]:
    """(value, low, high) for a number; a comparator turns it into an open range (value NaN)."""
    low, high = decimal_range(d)
    if comparator == "<":
        return NAN, NEG_INF, d
    if comparator == "<=":
        return NAN, NEG_INF, high
    if comparator == ">":
        return NAN, d, POS_INF
    if comparator == ">=":
        return NAN, low, POS_INF
    return d, low, high


def _range(value: dict) -> tuple[Decimal, Decimal, Decimal] | None:
    """A Range as (NaN, low, high): NaN in the value column marks a row that is only a range."""
    lo = value.get("low") if isinstance(value.get("low"), dict) else {}
    hi = value.get("high") if isinstance(value.get("high"), dict) else {}
    lo_v, hi_v = _number(lo.get("value")), _number(hi.get("value"))
    if lo_v is None and hi_v is None:
        return None
    low = decimal_range(lo_v)[0] if lo_v is not None else NEG_INF
    high = decimal_range(hi_v)[1] if hi_v is not None else POS_INF
    return NAN, low, high


def number_rows(code: str, items: list[Item], rows: IndexRows) -> None:
    out = rows.number
    for value, ftype in items:
        if isinstance(value, dict):
            r = _range(value) if ftype == "Range" else None
        else:
            d = _number(value)
            r = _point(d) if d is not None else None
        if r is not None:
            out.append((code, *r))


_QUANTITY_TYPES = frozenset({"Quantity", "Age", "Duration", "Count", "Distance", "SimpleQuantity", "MoneyQuantity"})


def quantity_rows(code: str, items: list[Item], rows: IndexRows) -> None:
    out = rows.quantity
    for value, ftype in items:
        if not isinstance(value, dict):
            continue
        if ftype in _QUANTITY_TYPES:
            d = _number(value.get("value"))
            if d is not None:
                system, c, unit = _str(value.get("system")), _str(value.get("code")), _str(value.get("unit"))
                out.append((code, system, c, unit, *_point(d, value.get("comparator"))))
        elif ftype == "Money":
            d = _number(value.get("value"))
            if d is not None:
                out.append((code, ISO_4217, _str(value.get("currency")), None, *_point(d)))
        elif ftype == "Range":
            r = _range(value)
            if r is not None:
                lo, hi = value.get("low") or {}, value.get("high") or {}
                unit_of = lo if lo.get("value") is not None else hi
                out.append(
                    (code, _str(unit_of.get("system")), _str(unit_of.get("code")), _str(unit_of.get("unit")), *r)
                )
        # SampledData: not indexed (no single value to compare)


# -- uri ----------------------------------------------------------------------------------------
def uri_rows(code: str, items: list[Item], rows: IndexRows) -> None:
    out = rows.uri
    for value, _ in items:
        if isinstance(value, str) and value:
            out.append((code, value))


CONVERTERS: dict[str, Callable[[str, list[Item], IndexRows], None]] = {
    "string": string_rows,
    "token": token_rows,
    "reference": reference_rows,
    "date": date_rows,
    "number": number_rows,
    "quantity": quantity_rows,
    "uri": uri_rows,
}


# -- full text (_text, _content; search.html#_text, #_content) ---------------------------------------
# A tsvector is limited to 1 MB; a document is cut at this many characters (4 bytes each at most).
MAX_TEXT_CHARS = 200_000
_TAG = re.compile(r"<[^>]*>")
NO_NARRATIVE = frozenset({"Bundle", "Binary", "Parameters"})  # not DomainResources: no _text


def narrative_text(div: str) -> str:
    """The XHTML narrative without its tags, entities decoded."""
    return html.unescape(_TAG.sub(" ", div))


def _strings(value: Any, out: list[str]) -> None:
    if isinstance(value, str):
        out.append(value)
    elif isinstance(value, dict):
        for v in value.values():
            _strings(v, out)
    elif isinstance(value, list):
        for v in value:
            _strings(v, out)


def text_rows(resource: dict, rows: IndexRows) -> None:
    """``_text``: the narrative's text; ``_content``: every string value of the resource (the
    narrative as text, not XHTML). Both normalised like string values (case, accents)."""
    narrative = resource.get("text")
    div = narrative.get("div") if isinstance(narrative, dict) else None
    text = narrative_text(div) if isinstance(div, str) and div else ""
    if text.strip() and resource.get("resourceType") not in NO_NARRATIVE:
        rows.text.append(("_text", normalize(text[:MAX_TEXT_CHARS])))
    parts: list[str] = []
    for key, value in resource.items():
        if key == "text" and isinstance(narrative, dict):
            _strings({k: v for k, v in narrative.items() if k != "div"}, parts)
            parts.append(text)
        elif key != "resourceType":
            _strings(value, parts)
    content = " ".join(p for p in parts if p)
    if content.strip():
        rows.text.append(("_content", normalize(content[:MAX_TEXT_CHARS])))
