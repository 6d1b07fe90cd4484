"""Translate a SearchParameter FHIRPath expression, once, into a plain Python extractor.

``compile_expression("Patient.name | Patient.telecom.where(system='phone')", "Patient")`` returns
``extract(resource) -> list[(value, fhir_type)]``: the JSON values the expression selects, each
with its FHIR type (``HumanName``, ``dateTime``, ``Quantity``; backbone elements by path), which is
what index-row conversion needs to tell a HumanName from an Address or a Period from a dateTime.

Choice elements (``Observation.value``) are resolved statically to their JSON keys
(``valueQuantity``...), ``as``/``ofType``/``is`` check types with the R4 model (``Age`` is a
``Quantity``), ``where(resolve() is Patient)`` looks at the reference's type without resolving.
Anything outside the supported subset raises ``Unsupported``; the caller then falls back to
``fhirpathpy`` for that parameter.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

from fhir_server.search.fhirpath_model import PRIMITIVES, FhirModel, get_model
from fhir_server.search.fhirpath_parser import Ast, parse
from fhir_server.search.references import reference_type

Item = tuple[Any, str]
Fn = Callable[[list[Item]], list[Item]]
Types = frozenset[str] | None  # static result types; None when not known until run time

_ABSTRACT_RESOURCES = frozenset({"Resource", "DomainResource"})


class Unsupported(ValueError):
    """The expression uses FHIRPath the translator does not handle."""


def compile_expression(
    expression: str, resource_type: str, model: FhirModel | None = None
) -> Callable[[dict], list[Item]]:
    fn, _ = _Compiler(model or get_model()).compile(parse(expression), frozenset({resource_type}))

    def extract(resource: dict) -> list[Item]:
        return fn([(resource, resource_type)])

    return extract


def static_types(expression: str, resource_type: str, model: FhirModel | None = None) -> Types:
    """The FHIR types ``expression`` can return for ``resource_type`` (for reports and tests)."""
    return _Compiler(model or get_model()).compile(parse(expression), frozenset({resource_type}))[1]


def _as_bool(items: list[Item]) -> bool | None:
    """FHIRPath singleton evaluation of a collection in a boolean context."""
    if not items:
        return None
    if len(items) > 1:
        raise Unsupported("boolean of a multi-item collection")
    value = items[0][0]
    return value if isinstance(value, bool) else True


def _equal(a: list[Item], b: list[Item]) -> bool | None:
    if not a or not b:
        return None
    if len(a) != len(b):
        return False
    for (x, _), (y, _) in zip(a, b):
        if isinstance(x, bool) or isinstance(y, bool):
            if x is not y:
                return False
        elif isinstance(x, (int, float, Decimal)) and isinstance(y, (int, float, Decimal)):
            if Decimal(str(x)) != Decimal(str(y)):
                return False
        elif x != y:
            return False
    return True


def _bool_item(value: bool | None) -> list[Item]:
    return [] if value is None else [(value, "boolean")]


class _Compiler:
    def __init__(self, model: FhirModel) -> None:
        self.model = model

    # -- type helpers -------------------------------------------------------------------------
    def type_ok(self, actual: str, wanted: str) -> bool:
        return actual == wanted or self.model.is_subtype(actual, wanted)

    def is_type_name(self, name: str) -> bool:
        return name in self.model.parents or name in PRIMITIVES or name in _ABSTRACT_RESOURCES

    # -- entry --------------------------------------------------------------------------------
    def compile(self, ast: Ast, focus: Types) -> tuple[Fn, Types]:
        kind = ast[0]
        handler = getattr(self, f"c_{kind}", None)
        if handler is None:
            raise Unsupported(f"FHIRPath construct {kind!r}")
        return handler(ast, focus)

    def c_this(self, ast: Ast, focus: Types) -> tuple[Fn, Types]:
        return (lambda items: items), focus

    def c_lit(self, ast: Ast, focus: Types) -> tuple[Fn, Types]:
        value = ast[1]
        t = "boolean" if isinstance(value, bool) else "string" if isinstance(value, str) else "decimal"
        out = [(value, t)]
        return (lambda items: out), frozenset({t})

    def c_var(self, ast: Ast, focus: Types) -> tuple[Fn, Types]:
        raise Unsupported(f"environment variable %{ast[1]}")

    def c_id(self, ast: Ast, focus: Types) -> tuple[Fn, Types]:
        name = ast[1]
        # a type name leading a path filters the focus (``Patient.name`` evaluated on a Patient)
        if focus is not None and name[:1].isupper() and self.is_type_name(name):
            if focus and all(self.type_ok(t, name) for t in focus):
                return (lambda items: items), focus  # statically known to pass
            if any(self.type_ok(t, name) for t in focus):
                return (lambda items: [i for i in items if self.type_ok(i[1], name)]), frozenset(
                    t for t in focus if self.type_ok(t, name)
                )
            if not any(self.model.children(t, name) for t in focus):
                return (lambda items: []), frozenset()
        return self.member((lambda items: items), focus, name)

    def c_member(self, ast: Ast, focus: Types) -> tuple[Fn, Types]:
        base, types = self.compile(ast[1], focus)
        return self.member(base, types, ast[2])

    def member(self, base: Fn, types: Types, name: str) -> tuple[Fn, Types]:
        model = self.model
        if types is not None and any(t in PRIMITIVES for t in types) and name in ("extension", "id"):
            raise Unsupported(f"{name} of a primitive")
        table: dict[str, tuple[tuple[str, str], ...]] = {}
        out_types: set[str] | None = set()
        for t in types or ():
            kids = model.children(t, name) or ()
            table[t] = kids
            out_types.update(ct for _, ct in kids)  # type: ignore[union-attr]
        if types is None:
            out_types = None
        if out_types and out_types & (_ABSTRACT_RESOURCES | {"Resource"}):
            out_types = None  # contained / inline resources: known only from resourceType

        only = next(iter(table.values())) if len(table) == 1 and out_types is not None else None
        if only is not None and len(only) == 1:
            # the common case: one known input type, one JSON key (no choice, no inline resource)
            key, ct = only[0]

            def nav_one(items: list[Item]) -> list[Item]:
                out: list[Item] = []
                for value, _ in base(items):
                    if type(value) is dict:
                        v = value.get(key)
                        if v is None:
                            continue
                        if type(v) is list:
                            out.extend([(x, ct) for x in v if x is not None])
                        else:
                            out.append((v, ct))
                return out

            return nav_one, frozenset(out_types)  # type: ignore[arg-type]

        def nav(items: list[Item]) -> list[Item]:
            out: list[Item] = []
            for value, t in base(items):
                if type(value) is not dict:
                    continue
                kids = table.get(t)
                if kids is None:
                    kids = table[t] = model.children(t, name) or ()
                for key, ct in kids:
                    v = value.get(key)
                    if v is None:
                        continue
                    if ct in _ABSTRACT_RESOURCES or ct == "Resource":
                        for x in v if type(v) is list else (v,):
                            if type(x) is dict:
                                out.append((x, x.get("resourceType", ct)))
                    elif type(v) is list:
                        out.extend((x, ct) for x in v if x is not None)
                    else:
                        out.append((v, ct))
            return out

        return nav, (frozenset(out_types) if out_types is not None else None)

    def c_index(self, ast: Ast, focus: Types) -> tuple[Fn, Types]:
        base, types = self.compile(ast[1], focus)
        if ast[2][0] != "lit" or not isinstance(ast[2][1], int) or isinstance(ast[2][1], bool):
            raise Unsupported("computed indexer")
        i = ast[2][1]
        return (lambda items: base(items)[i : i + 1]), types

    def c_is(self, ast: Ast, focus: Types) -> tuple[Fn, Types]:
        base, _ = self.compile(ast[1], focus)
        wanted = ast[2]

        def is_fn(items: list[Item]) -> list[Item]:
            got = base(items)
            if len(got) != 1:
                return []
            return [(self.type_ok(got[0][1], wanted), "boolean")]

        return is_fn, frozenset({"boolean"})

    def c_as(self, ast: Ast, focus: Types) -> tuple[Fn, Types]:
        base, types = self.compile(ast[1], focus)
        return self.type_filter(base, types, ast[2])

    def type_filter(self, base: Fn, types: Types, wanted: str) -> tuple[Fn, Types]:
        out = None if types is None else frozenset(t for t in types if self.type_ok(t, wanted))
        return (lambda items: [i for i in base(items) if self.type_ok(i[1], wanted)]), out

    def c_op(self, ast: Ast, focus: Types) -> tuple[Fn, Types]:
        op = ast[1]
        left, lt = self.compile(ast[2], focus)
        right, rt = self.compile(ast[3], focus)
        if op == "|":
            types = None if lt is None or rt is None else lt | rt
            return (lambda items: left(items) + right(items)), types
        if op in ("=", "!="):
            negate = op == "!="

            def eq(items: list[Item]) -> list[Item]:
                r = _equal(left(items), right(items))
                return _bool_item(r if r is None or not negate else not r)

            return eq, frozenset({"boolean"})
        if op in ("and", "or", "xor", "implies"):

            def logic(items: list[Item]) -> list[Item]:
                a, b = _as_bool(left(items)), _as_bool(right(items))
                if op == "and":
                    r = False if a is False or b is False else (None if a is None or b is None else True)
                elif op == "or":
                    r = True if a is True or b is True else (None if a is None or b is None else False)
                elif op == "xor":
                    r = None if a is None or b is None else a != b
                else:
                    r = True if a is False or b is True else (None if a is None or b is None else False)
                return _bool_item(r)

            return logic, frozenset({"boolean"})
        raise Unsupported(f"operator {op!r}")

    def c_call(self, ast: Ast, focus: Types) -> tuple[Fn, Types]:
        _, base_ast, name, args = ast
        base, types = self.compile(base_ast, focus) if base_ast is not None else ((lambda items: items), focus)
        if name in ("as", "ofType") and len(args) == 1 and args[0][0] == "id":
            return self.type_filter(base, types, args[0][1])
        if name == "is" and len(args) == 1 and args[0][0] == "id":
            return self.c_is(("is", base_ast if base_ast is not None else ("this",), args[0][1]), focus)
        if name == "where" and len(args) == 1:
            return self.where(base, types, args[0])
        if name == "exists":
            if args:
                filtered, _ = self.where(base, types, args[0])
                return (lambda items: [(bool(filtered(items)), "boolean")]), frozenset({"boolean"})
            return (lambda items: [(bool(base(items)), "boolean")]), frozenset({"boolean"})
        if name == "empty" and not args:
            return (lambda items: [(not base(items), "boolean")]), frozenset({"boolean"})
        if name == "not" and not args:

            def not_fn(items: list[Item]) -> list[Item]:
                b = _as_bool(base(items))
                return _bool_item(None if b is None else not b)

            return not_fn, frozenset({"boolean"})
        if name == "first" and not args:
            return (lambda items: base(items)[:1]), types
        if name == "last" and not args:
            return (lambda items: base(items)[-1:]), types
        if name == "extension" and len(args) == 1 and args[0][0] == "lit" and isinstance(args[0][1], str):
            url = args[0][1]
            ext, ext_types = self.member(base, types, "extension")
            return (lambda items: [i for i in ext(items) if type(i[0]) is dict and i[0].get("url") == url]), ext_types
        raise Unsupported(f"function {name}()")

    def where(self, base: Fn, types: Types, criteria: Ast) -> tuple[Fn, Types]:
        # where(resolve() is X): the reference's own type, nothing is resolved
        if criteria[0] == "is" and criteria[1] == ("call", None, "resolve", []):
            wanted = criteria[2]
            return (lambda items: [i for i in base(items) if reference_type(i[0]) == wanted]), types
        crit, _ = self.compile(criteria, types)

        def where_fn(items: list[Item]) -> list[Item]:
            return [i for i in base(items) if _as_bool(crit([i])) is True]

        return where_fn, types
