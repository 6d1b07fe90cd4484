"""``_sort`` (https://hl7.org/fhir/R4/search.html#sort) → ORDER BY keys over the index tables.

Each key is a correlated subquery on the parameter's ``idx_*`` rows of the resource (every one
carrying ``tenant_id = %(tenant)s``): the lowest value for an ascending key, the highest for a
descending one; resources without a value sort last in both directions. The order always ends
with ``id`` (``resource_type, id`` when several types are searched) so it is total (stable)
and keyset paging can resume after any row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from fhir_server.errors import Issue
from fhir_server.search.paging import SortKey
from fhir_server.search.registry import SearchParamRegistry, get_registry

_NAN = "'NaN'::numeric"
# param type -> (table, ascending aggregate expression, descending aggregate expression, cast)
_COLUMNS: dict[str, tuple[str, str, str, str]] = {
    "date": ("idx_date", "min(t.low)", "max(t.high)", "timestamptz"),
    "string": ("idx_string", "min(t.value_norm)", "max(t.value_norm)", "text"),
    "token": ("idx_token", "min(t.code)", "max(t.code)", "text"),
    "number": (
        "idx_number",
        f"min(CASE WHEN t.value = {_NAN} THEN t.low ELSE t.value END)",
        f"max(CASE WHEN t.value = {_NAN} THEN t.high ELSE t.value END)",
        "numeric",
    ),
    "quantity": (
        "idx_quantity",
        f"min(CASE WHEN t.value = {_NAN} THEN t.low ELSE t.value END)",
        f"max(CASE WHEN t.value = {_NAN} THEN t.high ELSE t.value END)",
        "numeric",
    ),
    "reference": (
        "idx_reference",
        "min(coalesce(t.target_type || '/' || t.target_id, t.url))",
        "max(coalesce(t.target_type || '/' || t.target_id, t.url))",
        "text",
    ),
    "uri": ("idx_uri", "min(t.value)", "max(t.value)", "text"),
}

_TYPE_KEY = SortKey("r.resource_type", True, "text", nullable=False)  # only when several types are searched
DEFAULT_ORDER = [SortKey("r.last_updated", True, "timestamptz", nullable=False), SortKey("r.id", True, "text", nullable=False)]


def default_order(types: list[str]) -> list[SortKey]:
    """``last_updated desc, id desc`` (plus ``resource_type desc`` before id when several types)."""
    return DEFAULT_ORDER if len(types) == 1 else [DEFAULT_ORDER[0], _TYPE_KEY, DEFAULT_ORDER[1]]


@dataclass
class SortSpec:
    keys: list[SortKey]
    applied: list[str] = field(default_factory=list)  # the _sort items that were used, e.g. "-date"
    warnings: list[Issue] = field(default_factory=list)

    @property
    def value(self) -> str:
        return ",".join(self.applied)


def common_param_type(types: list[str], code: str, registry: SearchParamRegistry) -> str | None:
    """The parameter type of ``code`` if it is defined, with one type, on every one of ``types``."""
    kinds = set()
    for t in types:
        sp = registry.get(t, code)
        if sp is None:
            return None
        kinds.add(sp.type)
    return kinds.pop() if len(kinds) == 1 else None


def build_sort(
    types: list[str], sort_values: list[str], bind: Callable[[object], str], registry: SearchParamRegistry | None = None
) -> SortSpec:
    """``types``: the searched resource types (system search: several, or [] for any type)."""
    registry = registry or get_registry()
    if not sort_values:
        return SortSpec(default_order(types))
    keys: list[SortKey] = []
    spec = SortSpec(keys)
    seen: set[str] = set()
    for piece in ",".join(sort_values).split(","):
        piece = piece.strip()
        if not piece:
            continue
        desc = piece.startswith("-")
        code = piece[1:] if desc else piece
        if code in seen:
            continue
        if code == "_id":
            keys.append(SortKey("r.id", desc, "text", nullable=False))
        elif code == "_lastUpdated":
            keys.append(SortKey("r.last_updated", desc, "timestamptz", nullable=False))
        else:
            kind = common_param_type(types, code, registry) if types else None
            if kind not in _COLUMNS:
                why = "is not a search parameter of" if kind is None else f"({kind}) cannot sort"
                where = ", ".join(types) if types else "every type (use _type)"
                spec.warnings.append(
                    Issue("warning", "not-supported", f"_sort: '{code}' {why} {where}: ignored", "_sort")
                )
                continue
            table, asc_agg, desc_agg, cast = _COLUMNS[kind]
            sql = (
                f"(SELECT {desc_agg if desc else asc_agg} FROM {table} t WHERE t.tenant_id = %(tenant)s"
                f" AND t.resource_type = r.resource_type AND t.resource_id = r.id AND t.param = {bind(code)})"
            )
            keys.append(SortKey(sql, desc, cast))
        seen.add(code)
        spec.applied.append(piece)
    if not keys:
        return SortSpec(default_order(types), [], spec.warnings)
    if len(types) != 1:
        keys.append(SortKey("r.resource_type", False, "text", nullable=False))
    if "_id" not in seen:
        keys.append(SortKey("r.id", False, "text", nullable=False))
    return spec
