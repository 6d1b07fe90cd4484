"""Chained parameters and reverse chaining (R4 search.html#chaining, search.html#has).

Both follow ``idx_reference`` rows to ``resource`` rows of the same tenant that are not deleted,
and compile the rest of the parameter with a child builder whose resource row is the alias of
that level (``r1``, ``r2``...; the link rows are ``l1``, ``l2``...):

* ``subject:Patient.name=peter``: EXISTS a ``subject`` reference of this row to a live Patient
  whose ``name`` matches. Without ``:Type``, every target type of the link that has the next
  parameter. Several levels recurse (``a.b.c=v`` is ``a`` then ``b.c=v`` on the target).
* ``_has:Observation:patient:code=1234-5``: EXISTS a live Observation whose ``patient`` reference
  points to this row and whose ``code`` matches; the last part may be another ``_has`` or a chain.

Only local references are followed: relative ones, and absolute ones under ``base_url``.
Commas in the value OR the final values; unknown links, types and parameters are 400s.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fhir_server.auth.visibility import visible_sql
from fhir_server.definitions.resource_types import RESOURCE_TYPES
from fhir_server.errors import InvalidSearch
from fhir_server.search.registry import SearchParam

if TYPE_CHECKING:
    from fhir_server.search.compile import _Builder

_NO_TEXT = frozenset({"Bundle", "Binary", "Parameters"})


def _bad(name: str, message: str) -> InvalidSearch:
    return InvalidSearch(f"Search parameter '{name}': {message}")


def _next_name(rest: str) -> str:
    return rest.split(".", 1)[0].split(":", 1)[0]


def _applies(b: _Builder, rtype: str, name: str) -> bool:
    if name == "_has":
        return True
    if name == "_text":
        return rtype not in _NO_TEXT
    return b.registry.get(rtype, name) is not None


def _reference_param(b: _Builder, rtype: str, code: str, raw_name: str) -> SearchParam:
    sp = b.registry.get(rtype, code)
    if sp is None:
        raise _bad(raw_name, f"unknown search parameter '{code}' for {rtype}")
    if sp.type != "reference":
        raise _bad(raw_name, f"'{code}' is not a reference parameter of {rtype}")
    return sp


def _local(b: _Builder, link: str) -> str:
    """The link row is a reference to this server (relative, or absolute under ``base_url``)."""
    if b.base_url:
        base = b.bind(b.base_url)
        return f"({link}.url IS NULL OR {link}.url = {base} || {link}.target_type || '/' || {link}.target_id)"
    return f"{link}.url IS NULL"


def _live(b: _Builder, row: str) -> str:
    """The row is of this tenant, not deleted, and one the caller may see (facility, patient context)."""
    live = f"{row}.tenant_id = %(tenant)s AND NOT {row}.deleted"
    visible = visible_sql(b.access, row, b.bind)
    return f"{live} AND {visible}" if visible else live


def chain_sql(b: _Builder, raw_name: str, value: str) -> str | None:
    """``link[:Type].rest=value`` on ``b``'s resource row (search.html#chaining)."""
    first, rest = raw_name.split(".", 1)
    code, _, type_mod = first.partition(":")
    if not rest or not code:
        raise _bad(raw_name, "a chain is reference[:Type].parameter")
    sp = _reference_param(b, b.resource_type, code, raw_name)
    nxt = _next_name(rest)
    if type_mod:
        if type_mod not in RESOURCE_TYPES:
            raise _bad(raw_name, f"unknown resource type '{type_mod}'")
        if sp.target and type_mod not in sp.target:
            raise _bad(raw_name, f"{type_mod} is not a target type of '{code}'")
        if not _applies(b, type_mod, nxt):
            raise _bad(raw_name, f"unknown search parameter '{nxt}' for {type_mod}")
        targets = [type_mod]
    else:
        targets = [t for t in sp.target if _applies(b, t, nxt)]
        if not targets:
            names = ", ".join(sp.target) or "none"
            raise _bad(raw_name, f"'{nxt}' is not a search parameter of any target of '{code}' ({names})")
    link, row = b.new_aliases()
    branches = _per_type(b, targets, nxt, rest, value, row)
    if not branches:
        return None
    # Uncorrelated (the targets first, then the links to them): PostgreSQL turns it into a semi
    # join from the few matching targets, where a correlated EXISTS walked every link of every row
    # (bench/README.md "Search at scale": patient.identifier on 1M Observations, 5.2 s → 0.75 ms).
    # Target types with different definitions of the next parameter are UNION ALL branches, not an
    # OR: an OR kept PostgreSQL from planning each branch on its own indexes (1.3 s).
    targets_sql = " UNION ALL ".join(
        f"SELECT {row}.resource_type, {row}.id FROM resource {row}"
        f" WHERE {row}.resource_type = ANY({b.bind(types)}) AND {_live(b, row)} AND ({cond})"
        for types, cond in branches
    )
    return (
        f"({b.alias}.resource_type, {b.alias}.id) IN (SELECT {link}.resource_type, {link}.resource_id"
        f" FROM idx_reference {link} WHERE {link}.tenant_id = %(tenant)s AND {link}.param = {b.bind(code)}"
        f" AND {link}.target_type = ANY({b.bind(targets)}) AND {_local(b, link)}"
        f" AND ({link}.target_type, {link}.target_id) IN ({targets_sql}))"
    )


def _per_type(b: _Builder, targets: list[str], nxt: str, rest: str, value: str, row: str) -> list[tuple[list[str], str]]:
    """The rest of the chain on each target type: ``(types, condition on row)``, one per group of
    types sharing one definition of the next parameter."""
    groups: dict[object, list[str]] = {}
    for t in targets:
        sp = b.registry.get(t, nxt)
        key = t if sp is None or nxt in ("_has", "_text") else sp.url
        groups.setdefault(key, []).append(t)
    branches = []
    for types in groups.values():
        cond = b.child(types[0], row).parameter(rest, value)
        if cond is not None:
            branches.append((types, cond))
    return branches


def has_sql(b: _Builder, raw_name: str, value: str) -> str | None:
    """``_has:Type:reference:rest=value``: a live ``Type`` refers to this row (search.html#has)."""
    parts = raw_name.split(":", 3)
    if len(parts) != 4 or not all(parts[1:]):
        raise _bad(raw_name, "reverse chaining is _has:Type:reference:parameter")
    _, rtype, code, rest = parts
    if rtype not in RESOURCE_TYPES:
        raise _bad(raw_name, f"unknown resource type '{rtype}'")
    sp = _reference_param(b, rtype, code, raw_name)
    if sp.target and b.resource_type not in sp.target:
        raise _bad(raw_name, f"{rtype}.{code} does not refer to {b.resource_type}")
    link, row = b.new_aliases()
    cond = b.child(rtype, row).parameter(rest, value)
    if cond is None:
        return None
    return (  # uncorrelated, like chain_sql
        f"({b.alias}.resource_type, {b.alias}.id) IN (SELECT {link}.target_type, {link}.target_id"
        f" FROM idx_reference {link} WHERE {link}.tenant_id = %(tenant)s AND {link}.resource_type = {b.bind(rtype)}"
        f" AND {link}.param = {b.bind(code)} AND {link}.target_type IS NOT NULL AND {_local(b, link)}"
        f" AND {link}.resource_id IN (SELECT {row}.id FROM resource {row}"
        f" WHERE {row}.resource_type = {b.bind(rtype)} AND {_live(b, row)} AND ({cond})))"
    )
