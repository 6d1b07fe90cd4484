"""Search parameters -> one SQL boolean expression over the index tables (R4 search.html).

``build_where("Patient", [("name", "peter"), ("birthdate", "ge1970,lt1960")])`` returns a
``SearchWhere`` whose ``sql`` refers to the resource row as ``r`` and to the tenant as the bind
``%(tenant)s`` (supplied by the caller), e.g.::

    SELECT r.id FROM resource r
    WHERE r.tenant_id = %(tenant)s AND r.resource_type = %(rtype)s AND NOT r.deleted AND (<sql>)

Repeated parameters AND, comma-separated values OR, every client value is a bind (``%(pN)s``).
Each criterion is an ``EXISTS`` over one ``idx_*`` table. Semantics, per parameter type:

* token: ``code``, ``system|code``, ``|code`` (no system), ``system|``; ``:not`` (no matching
  value, including resources without one), ``:text`` (normalised starts-with on the display /
  CodeableConcept.text / Identifier.type.text, at the start of any word), ``:of-type``
  (``system|code|value`` of an Identifier's type coding and value); ``:in``/``:not-in`` (a value
  set's expansion), ``:below``/``:above`` (is-a) via the ``terminology`` package.
* string: normalised (case- and accent-insensitive) starts-with; ``:exact``; ``:contains``.
* reference: ``id``, ``Type/id[/_history/v]``, absolute URL (``base_url`` makes this server's own
  URLs local), canonical ``url|version``; ``:Type``; ``:identifier``.
* chained ``ref[:Type].param=`` and reverse-chained ``_has:Type:ref:param=`` (see ``chain``).
* date, number, quantity: prefixes with range semantics, see ``_Builder.range_sql`` and
  ``_Builder.number_sql``; quantity ``value|system|code`` and ``value||code`` (code or unit).
* uri: exact, ``:below``, ``:above`` (on path segments).
* ``:missing`` on every type. ``_id``, ``_lastUpdated`` use the resource row; ``_text`` and
  ``_content`` are PostgreSQL full-text searches on ``idx_text``.

Unknown parameters are ignored with a warning; a bad value, prefix or modifier raises
``InvalidSearch``. Composite parameters (token$token, token$quantity) are in ``composite``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from fhir_server.auth.visibility import Access
from fhir_server.definitions.resource_types import RESOURCE_TYPES
from fhir_server.errors import InvalidSearch, Issue
from fhir_server.search.cardinality import single_valued
from fhir_server.search.chain import chain_sql, has_sql
from fhir_server.search.composite import composite_sql
from fhir_server.search.normalize import normalize, token_key, truncate_utf8, url_key
from fhir_server.search.query_values import like_escape, split_prefix, split_unescaped, unescape
from fhir_server.search.ranges import DATE_MAX, DATE_MIN, date_range, decimal_range, to_decimal
from fhir_server.search.references import is_absolute, parse_canonical, parse_reference
from fhir_server.search.registry import SearchParam, SearchParamRegistry, get_registry
from fhir_server.search.rows import IDENTIFIER_SUFFIX, NO_NARRATIVE, OF_TYPE_SUFFIX
from terminology import Terminology, TerminologyError, packaged

_TABLES = {
    "string": "idx_string",
    "token": "idx_token",
    "reference": "idx_reference",
    "date": "idx_date",
    "number": "idx_number",
    "quantity": "idx_quantity",
    "uri": "idx_uri",
}
_SUPPORTED_MODIFIERS = {
    "string": {"missing", "exact", "contains"},
    "token": {"missing", "not", "text", "of-type", "in", "not-in", "below", "above"},
    "reference": {"missing", "identifier"},  # plus :[type]
    "date": {"missing"},
    "number": {"missing"},
    "quantity": {"missing"},
    "uri": {"missing", "below", "above"},
}
_KNOWN_MODIFIERS = frozenset(
    [
        "missing",
        "exact",
        "contains",
        "text",
        "not",
        "above",
        "below",
        "in",
        "not-in",
        "of-type",
        "identifier",
        "type",
        "iterate",
    ]
)
_CODE_SET_MODIFIERS = frozenset({"in", "not-in", "below", "above"})  # need terminology: code_set()
_UNSUPPORTED_PARAMS = {"_query", "_filter", "_list", "_type"}
NAN_SQL = "'NaN'::numeric"


@dataclass
class SearchWhere:
    sql: str
    binds: dict[str, object] = field(default_factory=dict)
    warnings: list[Issue] = field(default_factory=list)


def build_where(
    resource_type: str,
    params: list[tuple[str, str]],
    *,
    base_url: str | None = None,
    now: datetime | None = None,
    registry: SearchParamRegistry | None = None,
    terminology: Terminology | None = None,
    access: Access | None = None,
) -> SearchWhere:
    """Compile raw ``(name[:modifier], value)`` query pairs (result parameters already removed).
    ``terminology`` serves the token ``:in``/``:not-in``/``:below``/``:above`` modifiers (default:
    the packaged definitions only; ``terminology.StoredTerminology`` adds the tenant's own).
    ``access``: chained targets and ``_has`` sources only among the resources the caller may see
    (the main row's own visibility is the caller's to add, with ``visible_sql``)."""
    b = _Builder(resource_type, registry or get_registry(), base_url, now)
    b.terminology = terminology
    b.access = access  # chain targets and _has sources are limited to what the caller may see
    clauses, params = b.merged_dates(params)
    clauses += [c for name, value in params if (c := b.parameter(name, value)) is not None]
    sql = " AND ".join(clauses) if clauses else "TRUE"
    return SearchWhere(sql=sql, binds=b.binds, warnings=b.warnings)


def _bad(name: str, message: str) -> InvalidSearch:
    return InvalidSearch(f"Search parameter '{name}': {message}")


class _Builder:
    def __init__(self, resource_type: str, registry: SearchParamRegistry, base_url: str | None, now: datetime | None):
        self.resource_type = resource_type
        self.registry = registry
        self.base_url = base_url.rstrip("/") + "/" if base_url else None
        self.now = now or datetime.now(UTC)
        self.binds: dict[str, object] = {}
        self.warnings: list[Issue] = []
        self.alias = "r"  # the SQL alias of the resource row the criteria apply to
        self.strict = False  # unknown parameters: warning (top level) or InvalidSearch (chains, _has)
        self._aliases = [0]  # shared with child builders
        self.terminology: Terminology | None = None  # None: packaged definitions only
        self.access: Access | None = None  # None: every resource of the tenant (fhir_server.auth.visibility)

    def child(self, resource_type: str, alias: str) -> _Builder:
        """A builder for criteria on another resource row (a chain target, a _has source)."""
        c = copy.copy(self)
        c.resource_type, c.alias, c.strict = resource_type, alias, True
        return c

    def new_aliases(self) -> tuple[str, str]:
        """Fresh (link, resource) SQL aliases for one chain / _has level."""
        self._aliases[0] += 1
        return f"l{self._aliases[0]}", f"r{self._aliases[0]}"

    def bind(self, value: object) -> str:
        name = f"p{len(self.binds)}"
        self.binds[name] = value
        return f"%({name})s"

    def warn(self, message: str) -> None:
        self.warnings.append(Issue("warning", "not-supported", message))

    def merged_dates(self, params: list[tuple[str, str]]) -> tuple[list[str], list[tuple[str, str]]]:
        """Repeated criteria (AND) on a single-valued date element — ``birthdate=ge…&birthdate=lt…``
        — as ONE ``EXISTS`` whose row satisfies them all (``fhir_server.search.cardinality``); the
        clauses and the parameters left for ``parameter``."""
        groups: dict[str, list[int]] = {}
        for i, (name, value) in enumerate(params):
            if value and "," not in value and name.isalnum():
                groups.setdefault(name, []).append(i)
        clauses: list[str] = []
        merged: set[int] = set()
        for name, positions in groups.items():
            if len(positions) < 2:
                continue
            sp = self.registry.get(self.resource_type, name)
            if sp is None or sp.type != "date" or not single_valued(self.resource_type, sp.expression):
                continue
            conds = [self.date_condition(sp, name, "", params[i][1]) for i in positions]
            clauses.append(self.exists(_TABLES["date"], self.bind(sp.code), " AND ".join(_paren(c) for c in conds)))
            merged.update(positions)
        if not merged:
            return [], params
        return clauses, [p for i, p in enumerate(params) if i not in merged]

    # -- one query parameter ----------------------------------------------------------------
    def parameter(self, raw_name: str, value: str) -> str | None:
        if raw_name.startswith("_has:") or raw_name == "_has":
            return has_sql(self, raw_name, value)
        if "." in raw_name:
            return chain_sql(self, raw_name, value)
        name, _, modifier = raw_name.partition(":")
        if name in ("_text", "_content"):
            return self.text_param(raw_name, modifier, value)
        sp = self.registry.get(self.resource_type, name)
        if sp is None and self.strict:
            raise _bad(raw_name, f"unknown search parameter '{name}' for {self.resource_type}")
        if sp is None or name in _UNSUPPORTED_PARAMS:
            what = "Unknown" if sp is None else "Unsupported"
            self.warn(f"{what} search parameter '{name}' for {self.resource_type}: ignored")
            return None
        if sp.type == "special":
            self.warn(f"Special search parameter '{name}' is not supported: ignored")
            return None
        if value == "":
            self.warn(f"Search parameter '{raw_name}' has no value: ignored")
            return None
        if sp.type == "composite":
            return composite_sql(self, sp, raw_name, modifier, value)
        if name == "_id":
            return self.id_param(raw_name, modifier, value)
        if name == "_lastUpdated":
            return self.last_updated_param(raw_name, modifier, value)
        return self.index_param(sp, raw_name, modifier, value)

    def modifier_check(self, sp: SearchParam, raw_name: str, modifier: str) -> None:
        if not modifier:
            return
        if sp.type == "reference" and modifier in RESOURCE_TYPES:
            if sp.target and modifier not in sp.target:
                raise _bad(raw_name, f"{modifier} is not a target type of this parameter")
            return
        if modifier in _SUPPORTED_MODIFIERS.get(sp.type, ()):
            return
        if modifier in _KNOWN_MODIFIERS:
            raise _bad(raw_name, f"modifier ':{modifier}' is not supported for {sp.type} parameters")
        raise _bad(raw_name, f"unknown modifier ':{modifier}'")

    def exists(self, table: str, param: str, condition: str | None = None, negate: bool = False) -> str:
        """``[NOT] EXISTS`` an index row of this resource for ``param`` (a bind placeholder)."""
        sql = (
            f"EXISTS (SELECT 1 FROM {table} t WHERE t.tenant_id = %(tenant)s"
            f" AND t.resource_type = {self.alias}.resource_type AND t.resource_id = {self.alias}.id"
            f" AND t.param = {param}"
        )
        sql += f" AND {_paren(condition)})" if condition else ")"
        return f"NOT {sql}" if negate else sql

    def alternatives(self, raw_name: str, value: str) -> list[str]:
        """The comma-separated values (OR), empty ones dropped."""
        pieces = [p for p in split_unescaped(value, ",") if p != ""]
        if not pieces:
            self.warn(f"Search parameter '{raw_name}' has no value: ignored")
        return pieces

    def index_param(self, sp: SearchParam, raw_name: str, modifier: str, value: str) -> str | None:
        self.modifier_check(sp, raw_name, modifier)
        table = _TABLES[sp.type]
        if modifier == "missing":
            if value not in ("true", "false"):
                raise _bad(raw_name, "the value of :missing must be true or false")
            present = self.exists(table, self.bind(sp.code))
            if sp.type == "reference":  # a Reference with only an identifier is present too
                present = f"({present} OR {self.exists('idx_token', self.bind(sp.code + IDENTIFIER_SUFFIX))})"
            return f"NOT {present}" if value == "true" else present
        pieces = self.alternatives(raw_name, value)
        if not pieces:
            return None
        if sp.type == "reference" and modifier == "identifier":
            param = self.bind(sp.code + IDENTIFIER_SUFFIX)
            return self.exists("idx_token", param, _or([self.token_match(raw_name, p) for p in pieces]))
        if sp.type == "token" and modifier == "of-type":
            param = self.bind(sp.code + OF_TYPE_SUFFIX)
            return self.exists("idx_token", param, _or([self.of_type_match(raw_name, p) for p in pieces]))
        if sp.type == "token" and modifier in _CODE_SET_MODIFIERS:
            codings = frozenset().union(*(self.code_set(raw_name, modifier, p) for p in pieces))
            cond = self.codings_condition(codings)
            return self.exists("idx_token", self.bind(sp.code), cond, negate=modifier == "not-in")
        param = self.bind(sp.code)
        build = getattr(self, f"{sp.type}_condition")
        cond = _or([build(sp, raw_name, modifier, p) for p in pieces])
        return self.exists(table, param, cond, negate=sp.type == "token" and modifier == "not")

    # -- token ------------------------------------------------------------------------------
    def token_condition(self, sp: SearchParam, raw_name: str, modifier: str, piece: str) -> str:
        if modifier == "text":
            text = like_escape(normalize(unescape(piece)))
            return f"(t.text LIKE {self.bind(text + '%')} OR t.text LIKE {self.bind('% ' + text + '%')})"
        return self.token_match(raw_name, piece)

    def token_match(self, raw_name: str, piece: str, suffix: str = "") -> str:
        """``[system|]code`` on ``t.system``/``t.code`` (``t.system1``/``t.code1`` with ``suffix="1"``)."""
        parts = split_unescaped(piece, "|")
        if len(parts) == 1:
            code = unescape(parts[0])
            if not code:
                raise _bad(raw_name, "empty token")
            return f"t.code{suffix} = {self.bind(token_key(code))}"
        if len(parts) != 2:
            raise _bad(raw_name, f"a token is [system|]code, got {unescape(piece)!r}")
        system, code = unescape(parts[0]), unescape(parts[1])
        if not system and not code:
            raise _bad(raw_name, "empty token")
        system, code = token_key(system), token_key(code)  # type: ignore[assignment]
        if not system:
            return f"t.system{suffix} IS NULL AND t.code{suffix} = {self.bind(code)}"
        if not code:
            return f"t.system{suffix} = {self.bind(system)}"
        return f"t.system{suffix} = {self.bind(system)} AND t.code{suffix} = {self.bind(code)}"

    def code_set(self, raw_name: str, modifier: str, piece: str) -> frozenset[tuple[str | None, str]]:
        """The ``(system, code)`` pairs one value stands for (search.html#token): ``:in``/``:not-in``
        a value set (canonical ``url[|version]`` or ``ValueSet/id``), ``:below`` the code and the
        codes it subsumes, ``:above`` the code and the codes subsuming it (is-a)."""
        value = unescape(piece)
        t = self.terminology or packaged()
        try:
            if modifier in ("in", "not-in"):
                if self.base_url and value.startswith(self.base_url + "ValueSet/"):
                    value = value[len(self.base_url) :]
                return t.expand_reference(value)
            parts = split_unescaped(piece, "|")
            system, code = (unescape(parts[0]), unescape(parts[1])) if len(parts) == 2 else ("", "")
            if not system or not code:
                raise _bad(raw_name, f"with :{modifier} the value is system|code, got {value!r}")
            codes = t.descendants(system, code) if modifier == "below" else t.ancestors(system, code)
            return frozenset((system, c) for c in codes)
        except TerminologyError as e:
            message = f"Search parameter '{raw_name}': {e}"
            raise InvalidSearch(message, issues=[Issue("error", e.issue_code, message, raw_name)]) from None

    def codings_condition(self, codings: frozenset[tuple[str | None, str]]) -> str:
        """Rows whose ``(system, code)`` is one of ``codings``, one ``= ANY(array)`` per system (the
        ``idx_token_lookup`` index is on code, system). A row without a system (a ``code``
        element, whose system is implied by its binding) matches on the code alone."""
        if not codings:
            return "FALSE"
        by_system: dict[str | None, set[str]] = {}
        for system, code in codings:
            by_system.setdefault(token_key(system), set()).add(token_key(code))  # type: ignore[arg-type]
        if len(by_system) == 1 and None not in by_system:  # the usual case: one array, sent once
            [(system, codes)] = by_system.items()
            return f"t.code = ANY({self.bind(sorted(codes))}) AND (t.system = {self.bind(system)} OR t.system IS NULL)"
        conds = [
            f"t.system = {self.bind(s)} AND t.code = ANY({self.bind(sorted(c))})"
            for s, c in sorted(by_system.items(), key=lambda i: i[0] or "")
            if s is not None
        ]
        every_code = sorted({c for cs in by_system.values() for c in cs})
        conds.append(f"t.system IS NULL AND t.code = ANY({self.bind(every_code)})")
        return _or(conds)

    def of_type_match(self, raw_name: str, piece: str) -> str:
        """``:of-type=system|code|value`` (search.html#token): Identifier.type coding + value, all
        three required; stored as ``(type system, "type code|value")`` under ``<code>:of-type``."""
        parts = [unescape(p) for p in split_unescaped(piece, "|")]
        if len(parts) != 3 or not all(parts):
            raise _bad(raw_name, "with :of-type the value is system|code|value, all three required")
        system, code, value = parts
        return f"t.system = {self.bind(token_key(system))} AND t.code = {self.bind(token_key(code + '|' + value))}"

    # -- string -----------------------------------------------------------------------------
    def string_condition(self, sp: SearchParam, raw_name: str, modifier: str, piece: str) -> str:
        text = unescape(piece)
        if modifier == "exact":
            return f"t.value_exact = {self.bind(text)}"
        norm = like_escape(truncate_utf8(normalize(text)))
        if modifier == "contains":
            return f"t.value_norm LIKE {self.bind('%' + norm + '%')}"
        return f"t.value_norm LIKE {self.bind(norm + '%')}"

    # -- reference --------------------------------------------------------------------------
    def reference_condition(self, sp: SearchParam, raw_name: str, modifier: str, piece: str) -> str:
        value = unescape(piece)
        if not value:
            raise _bad(raw_name, "empty reference")
        if modifier:  # :[type] -- the value is an id (or Type/id of that same type)
            rid = value.split("/", 1)[1] if value.startswith(modifier + "/") else value
            if "/" in rid:
                raise _bad(raw_name, f"with :{modifier} the value is a resource id, got {value!r}")
            return f"t.target_type = {self.bind(modifier)} AND t.target_id = {self.bind(rid)}"
        if self.base_url and value.startswith(self.base_url):
            value = value[len(self.base_url) :]
        if is_absolute(value):
            if "|" in value:  # canonical url|version
                _, _, version, url = parse_canonical(value) or (None, None, None, value)
                cond = f"t.url = {self.bind(url_key(url))}"
                return cond + (f" AND t.target_version = {self.bind(version)}" if version else "")
            parts = parse_reference(value)
            assert parts is not None
            _, _, version, url = parts
            cond = f"t.url = {self.bind(url_key(url))}"
            return cond + (f" AND t.target_version = {self.bind(version)}" if version else "")
        if "/" not in value:
            return f"t.target_id = {self.bind(value)}"
        parts = parse_reference(value)
        if not parts or parts[0] is None:
            raise _bad(raw_name, f"{value!r} is not [Type/]id or an absolute URL")
        rtype, rid, version, _ = parts
        if sp.target and rtype not in sp.target:
            raise _bad(raw_name, f"{rtype} is not a target type of this parameter")
        cond = f"t.target_type = {self.bind(rtype)} AND t.target_id = {self.bind(rid)}"
        return cond + (f" AND t.target_version = {self.bind(version)}" if version else "")

    # -- date -------------------------------------------------------------------------------
    def parse_date(self, sp: SearchParam | None, raw_name: str, piece: str) -> tuple[str, datetime, datetime]:
        prefix, text = split_prefix(unescape(piece).replace(" ", "+"))
        prefix = self.check_prefix(sp, raw_name, prefix)
        try:
            low, high = date_range(text)
        except ValueError:
            raise _bad(raw_name, f"{text!r} is not a valid date/dateTime") from None
        return prefix, low, high

    def check_prefix(self, sp: SearchParam | None, raw_name: str, prefix: str | None) -> str:
        if prefix == "??":
            raise _bad(raw_name, "unknown prefix (use eq, ne, gt, lt, ge, le, sa, eb or ap)")
        prefix = prefix or "eq"
        if sp is not None and sp.comparator and prefix not in sp.comparator:
            raise _bad(raw_name, f"prefix {prefix!r} is not allowed for this parameter")
        return prefix

    def date_condition(self, sp: SearchParam, raw_name: str, modifier: str, piece: str) -> str:
        prefix, low, high = self.parse_date(sp, raw_name, piece)
        return self.range_sql(prefix, low, high, "t.low", "t.high")

    def range_sql(self, prefix: str, low: datetime, high: datetime, t_low: str, t_high: str) -> str:
        """Date prefixes against target ``[t_low, t_high]``: see ``range_condition``."""
        return range_condition(prefix, low, high, t_low, t_high, self.bind, self.now)

    # -- number and quantity -----------------------------------------------------------------
    def number_condition(self, sp: SearchParam, raw_name: str, modifier: str, piece: str) -> str:
        return self.number_sql(sp, raw_name, unescape(piece))

    def number_sql(self, sp: SearchParam, raw_name: str, text: str) -> str:
        """Numbers: the search value ``v`` has the range ``[sl, sh)`` of its written precision, a
        stored value the range of its own (rows from a Range or a ``<``/``>`` comparator carry NaN
        as value and only a range). eq/ne/sa/eb/ap compare ranges; gt/lt/ge/le compare with the
        exact value ("gt100: values that are greater than exactly 100", search.html#number)."""
        prefix, number = split_prefix(text)
        prefix = self.check_prefix(sp, raw_name, prefix)
        try:
            v = to_decimal(number)
        except ValueError:
            raise _bad(raw_name, f"{number!r} is not a number") from None
        sl, sh = decimal_range(v)
        if prefix in ("eq", "ne"):
            eq = f"t.low >= {self.bind(sl)} AND t.high <= {self.bind(sh)}"
            return eq if prefix == "eq" else f"NOT ({eq})"
        if prefix == "gt":
            p = self.bind(v)
            return f"t.high > {p} AND t.value > {p}"  # NaN sorts above every number in PostgreSQL
        if prefix == "ge":
            p = self.bind(v)
            return f"t.high > {p} AND t.value >= {p}"
        if prefix == "lt":
            p = self.bind(v)
            return f"t.low < {p} AND (t.value < {p} OR t.value = {NAN_SQL})"
        if prefix == "le":
            p = self.bind(v)
            return f"t.low <= {p} AND (t.value <= {p} OR t.value = {NAN_SQL})"
        if prefix == "sa":
            return f"t.low >= {self.bind(sh)}"
        if prefix == "eb":
            return f"t.high <= {self.bind(sl)}"
        # ap: 10% of the value either side (or the precision range if wider)
        tol = abs(v) / 10
        lo, hi = min(sl, v - tol), max(sh, v + tol)
        return f"t.low < {self.bind(hi)} AND t.high > {self.bind(lo)}"

    def quantity_condition(self, sp: SearchParam, raw_name: str, modifier: str, piece: str) -> str:
        parts = split_unescaped(piece, "|")
        if len(parts) not in (1, 3):
            raise _bad(raw_name, "a quantity is [prefix]number[|system|code]")
        cond = self.number_sql(sp, raw_name, unescape(parts[0]))
        if len(parts) == 3:
            system, code = unescape(parts[1]), unescape(parts[2])
            if system:
                cond += f" AND t.system = {self.bind(system)}"
                if code:
                    cond += f" AND t.code = {self.bind(code)}"
            elif code:
                p = self.bind(code)
                cond += f" AND (t.code = {p} OR t.unit = {p})"
        return cond

    # -- uri --------------------------------------------------------------------------------
    def uri_condition(self, sp: SearchParam, raw_name: str, modifier: str, piece: str) -> str:
        value = unescape(piece)
        if modifier == "below":
            stem = value.rstrip("/")
            return f"(t.value = {self.bind(value)} OR t.value LIKE {self.bind(like_escape(stem) + '/%')})"
        if modifier == "above":
            p = self.bind(value)
            return f"(t.value = {p} OR starts_with({p}, rtrim(t.value, '/') || '/'))"
        return f"t.value = {self.bind(url_key(value))}"

    # -- resource-row parameters ------------------------------------------------------------
    def id_param(self, raw_name: str, modifier: str, value: str) -> str | None:
        ids = [unescape(p) for p in self.alternatives(raw_name, value)]
        if not ids:
            return None
        if modifier == "not":
            return f"{self.alias}.id <> ALL({self.bind(ids)})"
        if modifier:
            raise _bad(raw_name, f"modifier ':{modifier}' is not supported on _id")
        return f"{self.alias}.id = ANY({self.bind(ids)})"

    def last_updated_param(self, raw_name: str, modifier: str, value: str) -> str | None:
        if modifier:
            raise _bad(raw_name, f"modifier ':{modifier}' is not supported on _lastUpdated")
        conds = []
        for piece in self.alternatives(raw_name, value):
            prefix, low, high = self.parse_date(None, raw_name, piece)
            conds.append(self.range_sql(prefix, low, high, f"{self.alias}.last_updated", f"{self.alias}.last_updated"))
        return _or(conds) if conds else None

    def text_param(self, raw_name: str, modifier: str, value: str) -> str | None:
        """``_text`` / ``_content`` (search.html#_text, #_content): PostgreSQL full text on the
        ``idx_text`` document (narrative text / every string value), ``websearch_to_tsquery('simple',
        value)``: words AND, ``"a phrase"``, ``or``, ``-word``; case and accents ignored. Commas OR."""
        name = raw_name.partition(":")[0]
        if name == "_text" and self.resource_type in NO_NARRATIVE:
            self.warn(f"_text does not apply to {self.resource_type}: ignored")
            return None
        if modifier == "missing":
            if value not in ("true", "false"):
                raise _bad(raw_name, "the value of :missing must be true or false")
            return self.exists("idx_text", self.bind(name), negate=value == "true")
        if modifier:
            raise _bad(raw_name, f"modifier ':{modifier}' is not supported on {name}")
        conds = [
            f"t.doc @@ websearch_to_tsquery('simple', {self.bind(normalize(unescape(p)))})"
            for p in self.alternatives(raw_name, value)
        ]
        return self.exists("idx_text", self.bind(name), _or(conds)) if conds else None


def _paren(sql: str) -> str:
    return sql if sql.startswith("(") and sql.endswith(")") and _balanced(sql[1:-1]) else f"({sql})"


def _balanced(sql: str) -> bool:
    depth = 0
    for c in sql:
        depth += (c == "(") - (c == ")")
        if depth < 0:
            return False
    return depth == 0


def _or(conds: list[str]) -> str:
    return conds[0] if len(conds) == 1 else "(" + " OR ".join(_paren(c) for c in conds) + ")"


def range_condition(
    prefix: str, low: datetime, high: datetime, t_low: str, t_high: str, bind: Callable[[Any], str], now: datetime
) -> str:
    """Date prefixes, search range [sl, sh] against target [tl, th], both inclusive
    (search.html#prefix: "the range of the search value fully contains the range of the
    target value", "the range above the search value intersects the range of the target"...).
    ``bind`` turns a value into its placeholder; ``now`` anchors ``ap``."""
    if prefix == "ap":  # 10% of the gap between now and the value, on either side
        mid = low + (high - low) / 2
        gap = abs(now - mid) / 10
        low, high = _shift(low, -gap), _shift(high, gap)
        return f"{t_low} <= {bind(high)} AND {t_high} >= {bind(low)}"
    if prefix in ("eq", "ne"):
        eq = f"{t_low} >= {bind(low)} AND {t_high} <= {bind(high)}"
        return eq if prefix == "eq" else f"NOT ({eq})"
    if prefix == "gt":
        return f"{t_high} > {bind(high)}"
    if prefix == "lt":
        return f"{t_low} < {bind(low)}"
    # ge/le: the last conjunct follows from the OR (th ≥ tl ≥ sl, resp. tl ≤ th ≤ sh) but, unlike
    # the OR, an index on the bound can use it (bench/README.md "Search at scale": 1 s → 1.3 ms)
    if prefix == "ge":
        return f"({t_high} > {bind(high)} OR {t_low} >= {bind(low)}) AND {t_high} >= {bind(low)}"
    if prefix == "le":
        return f"({t_low} < {bind(low)} OR {t_high} <= {bind(high)}) AND {t_low} <= {bind(high)}"
    if prefix == "sa":
        return f"{t_low} > {bind(high)}"
    if prefix == "eb":
        return f"{t_high} < {bind(low)}"
    raise AssertionError(prefix)


def _shift(d: datetime, delta: timedelta) -> datetime:
    try:
        return d + delta
    except OverflowError:
        return DATE_MIN if delta < timedelta(0) else DATE_MAX
