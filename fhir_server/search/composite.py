"""Composite search parameters (R4 search.html#composite): token$token, token$quantity,
token$date and token$string pairs.

Supported: two components, the first a token, the second a token, quantity, date or string, each component
expression a union of ``name`` / ``name.as(Type)`` paths relative to the element the parameter's
expression selects (Observation ``code-value-quantity``, ``code-value-concept``, ``combo-*``,
``component-*``; ``context-type-value``/``context-type-quantity`` of the conformance and knowledge
resources; Group ``characteristic-value``; Observation ``code-value-date``, ``code-value-string``).
One ``idx_composite`` row per pair of values taken from the SAME element (so
``component-code-value-quantity`` pairs a component's code with that component's value):
``(system1, code1, system, code, unit, value, low, high, value_norm, value_exact, dlow, dhigh)``,
the second part in the columns ``idx_token`` / ``idx_quantity`` / ``idx_string`` use (dates in
``dlow``/``dhigh``), so the same SQL serves it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fhir_server.errors import InvalidSearch
from fhir_server.search.normalize import token_key
from fhir_server.search.query_values import split_unescaped
from fhir_server.search.registry import SearchParam, SearchParamRegistry
from fhir_server.search.rows import IndexRows, Item, date_rows, quantity_rows, string_rows, token_rows

if TYPE_CHECKING:
    from fhir_server.search.compile import _Builder

_PATH = re.compile(r"\s*([a-z]\w*)(?:\.as\((\w+)\))?\s*")
Path = tuple[str, str | None]
SECOND_TYPES = ("token", "quantity", "date", "string")
_NO_TOKEN = (None, None)
_NO_QUANTITY = (None, None, None, None)
_NO_STRING = (None, None)
_NO_DATE = (None, None)


def _paths(expression: str) -> list[Path] | None:
    out = []
    for part in expression.split("|"):
        m = _PATH.fullmatch(part)
        if not m:
            return None
        out.append((m[1], m[2]))
    return out


def components(sp: SearchParam, registry: SearchParamRegistry) -> tuple[SearchParam, SearchParam] | None:
    """The two component parameters, if this composite is one of the supported shapes."""
    if sp.type != "composite" or len(sp.component) != 2:
        return None
    first, second = (registry.by_url.get(c.definition) for c in sp.component)
    if first is None or second is None or first.type != "token" or second.type not in SECOND_TYPES:
        return None
    if any(_paths(c.expression) is None for c in sp.component):
        return None
    return first, second


def _shape(value: Any) -> str:
    if not isinstance(value, dict):
        return "code"
    if "coding" in value or "text" in value:
        return "CodeableConcept"
    if "value" in value or "unit" in value:
        return "Quantity"
    return "Coding"


def _select(element: dict, paths: list[Path]) -> list[Item]:
    """``name`` / ``name.as(Type)`` on one element (choice elements by their JSON key)."""
    found: list[tuple[Any, str | None]] = []
    for name, as_type in paths:
        if as_type:
            found.append((element.get(name + as_type[0].upper() + as_type[1:]), as_type))
        elif name in element:
            found.append((element[name], None))
        else:
            found += [
                (v, k[len(name) :]) for k, v in element.items() if k.startswith(name) and k[len(name) :][:1].isupper()
            ]
    items: list[Item] = []
    for value, ftype in found:
        for v in value if isinstance(value, list) else (value,):
            if v is not None:
                items.append((v, ftype or _shape(v)))
    return items


def converter(sp: SearchParam, registry: SearchParamRegistry) -> Callable[[str, list[Item], IndexRows], None] | None:
    """An extract-time converter for ``sp`` (None: not a supported composite, not indexed)."""
    comps = components(sp, registry)
    if comps is None:
        return None
    p1, p2 = (_paths(c.expression) or [] for c in sp.component)
    second = comps[1].type

    def convert(code: str, items: list[Item], rows: IndexRows) -> None:
        for element, _ in items:
            if not isinstance(element, dict):
                continue
            tmp = IndexRows()
            token_rows("1", _select(element, p1), tmp)
            firsts = [(s, c) for _, s, c, _ in tmp.token if c is not None]
            if not firsts:
                continue
            seconds: list[tuple[Any, ...]]
            if second == "token":
                token_rows("2", _select(element, p2), tmp)
                seconds = [(s, c, *_NO_QUANTITY, *_NO_STRING, *_NO_DATE) for p, s, c, _ in tmp.token if p == "2" and c is not None]
            elif second == "quantity":
                quantity_rows("2", _select(element, p2), tmp)
                seconds = [(*q[1:], *_NO_STRING, *_NO_DATE) for q in tmp.quantity]
            elif second == "string":
                string_rows("2", _select(element, p2), tmp)
                seconds = [(*_NO_TOKEN, *_NO_QUANTITY, norm, exact, *_NO_DATE) for _, norm, exact in tmp.string]
            else:
                date_rows("2", _select(element, p2), tmp)
                seconds = [(*_NO_TOKEN, *_NO_QUANTITY, *_NO_STRING, low, high) for _, low, high in tmp.date]
            for s1, c1 in firsts:
                for s2, c2, *rest in seconds:
                    rows.composite.append((code, token_key(s1), token_key(c1), token_key(s2), token_key(c2), *rest))

    return convert


def composite_sql(b: _Builder, sp: SearchParam, raw_name: str, modifier: str, value: str) -> str | None:
    """``code-value-quantity=http://loinc.org|8480-6$gt100``: both parts on one stored pair."""
    comps = components(sp, b.registry)
    if comps is None:
        raise InvalidSearch(f"Search parameter '{raw_name}': this composite parameter is not yet supported")
    if modifier:
        raise InvalidSearch(f"Search parameter '{raw_name}': modifiers are not supported on composite parameters")
    pieces = b.alternatives(raw_name, value)
    if not pieces:
        return None
    conds = []
    for piece in pieces:
        parts = split_unescaped(piece, "$")
        if len(parts) != 2 or not all(parts):
            raise InvalidSearch(f"Search parameter '{raw_name}': a value is token$value (two components)")
        first = b.token_match(raw_name, parts[0], suffix="1")
        kind = comps[1].type
        if kind == "token":
            second = b.token_match(raw_name, parts[1])
        elif kind == "quantity":
            second = b.quantity_condition(comps[1], raw_name, "", parts[1])
        elif kind == "string":
            second = b.string_condition(comps[1], raw_name, "", parts[1])
        else:
            prefix, low, high = b.parse_date(comps[1], raw_name, parts[1])
            second = b.range_sql(prefix, low, high, "t.dlow", "t.dhigh")
        conds.append(f"({first}) AND ({second})")
    cond = conds[0] if len(conds) == 1 else " OR ".join(f"({c})" for c in conds)
    return b.exists("idx_composite", b.bind(sp.code), cond)
