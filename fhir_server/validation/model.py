"""Compile compact StructureDefinitions into per-type element tables the walker reads directly.

A ``TypeDef`` maps every JSON key allowed in an object of that type (choice variants expanded:
``valueQuantity``; primitive extension siblings: ``_birthDate``) to an ``Elem`` carrying all the
validator needs: JSON shape (array or not), cardinality, primitive checker or child TypeDef,
Reference target types, required-binding code sets. Built once, then only dict lookups.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# Elem.kind
PRIM, COMPLEX, RESOURCE, PRIMEXT = 0, 1, 2, 3
# Elem.code = kind, +4 when the JSON value is an array; PROHIBITED for max = 0 (profiles)
ARRAY, PROHIBITED = 4, 8
# TypeDef.post: checks run after walking an object of that type
POST_NONE, POST_REFERENCE, POST_EXTENSION, POST_CODING, POST_CONCEPT = 0, 1, 2, 3, 4
_POST = {
    "Reference": POST_REFERENCE,
    "Extension": POST_EXTENSION,
    "Coding": POST_CODING,
    "CodeableConcept": POST_CONCEPT,
}

# where a Reference / uri may point at a contained resource (dom-3 bookkeeping)
HASHREF_TYPES = frozenset(("uri", "url", "canonical"))


class Elem:
    __slots__ = (
        "check",
        "code",
        "codes",
        "contained",
        "hashref",
        "is_array",
        "key",
        "kind",
        "logical",
        "max",
        "min",
        "prim",
        "rx",
        "systems",
        "targets",
        "td",
        "type",
        "valueset",
    )

    def __init__(self, key: str, logical: str, is_array: bool, mn: int, mx: int | None, type_: str) -> None:
        self.key = key
        self.logical = logical  # the element name without [x] ("value" for valueQuantity)
        self.is_array = is_array
        self.min = mn
        self.max = mx  # None: unbounded
        self.kind = COMPLEX
        self.code = COMPLEX
        self.type = type_
        self.check: Callable[[Any], str | None] | None = None
        self.rx: Callable[[str], Any] | None = None  # fast accept for string-typed primitives
        self.td: TypeDef | None = None
        self.targets: frozenset[str] | None = None
        self.codes: frozenset[str] | None = None
        self.systems: dict[str, frozenset[str]] | None = None
        self.contained = False
        self.prim: Elem | None = None  # for PRIMEXT: the primitive element it extends
        self.hashref = type_ in HASHREF_TYPES
        self.valueset: str | None = None


class TypeDef:
    __slots__ = ("choice_keys", "choices", "elements", "is_resource", "name", "post", "required", "special", "url")

    def __init__(self, name: str, special: str) -> None:
        self.name = name
        self.special = special  # the FHIR type it is (Reference, Extension, Coding...) for post-checks
        self.elements: dict[str, Elem] = {}
        self.required: tuple[tuple[tuple[str, ...], str, int], ...] = ()
        self.choices: tuple[tuple[str, tuple[str, ...]], ...] = ()
        self.choice_keys: dict[str, str] | None = None  # variant key -> choice name, when any
        self.is_resource = False
        self.post = POST_NONE
        self.url: str | None = None

    def finish(self) -> None:
        self.post = _POST.get(self.special, POST_NONE)
        groups: dict[str, list[Elem]] = {}
        for e in self.elements.values():
            e.code = PROHIBITED if e.max == 0 else e.kind + (ARRAY if e.is_array else 0)
            groups.setdefault(e.logical, []).append(e)
        req, ch = [], []
        for logical, elems in groups.items():
            keys = tuple(e.key for e in elems)
            first = elems[0]
            if first.min:
                req.append((keys, logical, first.min))
            variants = tuple(e.key for e in elems if e.kind != PRIMEXT)
            if len(variants) > 1:
                ch.append((logical, variants))
        self.required = tuple(req)
        self.choices = tuple(ch)
        self.choice_keys = {k: name for name, variants in ch for k in variants} or None


def _cap(code: str) -> str:
    return code[0].upper() + code[1:]


class Compiler:
    """Turns compact definitions into TypeDefs, resolving types against ``types`` (by name)."""

    def __init__(
        self,
        types: dict[str, TypeDef],
        checkers: dict[str, Callable],
        valuesets: dict[str, dict],
        fast: dict[str, Callable] | None = None,
    ):
        self.types = types
        self.checkers = checkers
        self.fast = fast or {}
        self.valuesets = valuesets
        self._vs_cache: dict[str, tuple[frozenset[str], dict[str, frozenset[str]]]] = {}

    def _binding(self, url: str | None) -> tuple[frozenset[str], dict[str, frozenset[str]]] | None:
        if not url or url not in self.valuesets:
            return None
        got = self._vs_cache.get(url)
        if got is None:
            systems = {s: frozenset(c) for s, c in self.valuesets[url].items()}
            allcodes = frozenset(c for cs in systems.values() for c in cs)
            got = self._vs_cache[url] = (allcodes, systems)
        return got

    def compile(self, compact: dict[str, Any], name: str, base: TypeDef | None, into: TypeDef | None = None) -> TypeDef:
        """Compile a compact SD (snapshot or differential) over ``base`` (None for a specialization)."""
        children: dict[str, list[list[Any]]] = {}
        present = {entry[0] for entry in compact["elements"]}
        for entry in compact["elements"]:
            rel = entry[0]
            while True:
                parent = rel.rsplit(".", 1)[0] if "." in rel else ""
                children.setdefault(parent, []).append(entry)
                if parent == "" or parent in present:
                    break
                # a differential may constrain Patient.meta.tag without listing Patient.meta:
                # synthesize the parent (everything inherited) so the path can be followed
                present.add(parent)
                entry, rel = [parent, None, None, [], None, None, None], parent
        built: dict[str, TypeDef] = {}
        pending: list[tuple[Elem, str]] = []
        special = compact.get("type") or name
        td = into if into is not None else TypeDef(name, special)
        self._build(td, "", base, children, built, pending)
        for elem, cref in pending:
            target = built.get(cref)
            if target is not None:
                elem.td = target
        return td

    def _build(self, td: TypeDef, rel: str, base: TypeDef | None, children: dict, built: dict, pending: list) -> None:
        built[rel] = td
        elements = td.elements
        if base is not None:
            elements.update(base.elements)
            td.is_resource = base.is_resource
        for entry in children.get(rel, ()):
            crel, mn, mx, types, targets, vs, cref = entry
            seg = crel.rsplit(".", 1)[-1]
            is_choice = seg.endswith("[x]")
            logical = seg[:-3] if is_choice else seg
            old = [e for e in elements.values() if e.logical == logical]
            old_main = [e for e in old if e.kind != PRIMEXT]
            for e in old:
                del elements[e.key]
            if mn is None:
                mn = old_main[0].min if old_main else 0
            if mx is None:  # not stated (differential): inherit
                mx_int = old_main[0].max if old_main else None
            else:
                mx_int = None if mx == "*" else int(mx)
            is_array = old_main[0].is_array if old_main else mx_int != 1
            if not types and old_main:
                types = [e.type for e in old_main]
            if targets is None and old_main:
                t = old_main[0].targets
                targets = sorted(t) if t is not None else None
            if vs is None and old_main:
                vs = old_main[0].valueset
            old_by_type = {e.type: e for e in old_main}
            if cref:
                types = types or ["Element"]
            for code in types:
                key = logical + _cap(code) if is_choice else logical
                e = Elem(key, logical, is_array, mn, mx_int, code)
                e.valueset = vs
                checker = self.checkers.get(code)
                if checker is not None:
                    e.kind = PRIM
                    e.check = checker
                    e.rx = self.fast.get(code)
                elif code == "Resource":
                    e.kind = RESOURCE
                    e.contained = rel == "" and logical == "contained"
                elif cref:
                    pending.append((e, cref))
                elif crel in children:  # inline children: backbone element, or a constrained datatype
                    if code in ("BackboneElement", "Element"):
                        child_base = old_by_type[code].td if code in old_by_type else None
                        special = "BackboneElement"
                    else:
                        child_base = old_by_type[code].td if code in old_by_type else self.types.get(code)
                        special = code
                    child = TypeDef(f"{td.name}.{seg}", special)
                    self._build(child, crel, child_base, children, built, pending)
                    e.td = child
                elif code in old_by_type and old_by_type[code].td is not None:
                    e.td = old_by_type[code].td
                else:
                    e.td = self.types.get(code)
                # a target given by a profile url (not a type name) cannot be mapped: accept any
                if (
                    code == "Reference"
                    and targets is not None
                    and all(t in self.types and self.types[t].is_resource for t in targets)
                ):
                    e.targets = frozenset(targets)
                b = self._binding(vs)
                if b is not None:
                    if e.kind == PRIM:
                        e.codes = b[0]
                    elif code in ("Coding", "CodeableConcept"):
                        e.systems = b[1]
                elements[key] = e
                if e.kind == PRIM:
                    x = Elem("_" + key, logical, is_array, mn, mx_int, code)
                    x.kind = PRIMEXT
                    x.prim = e
                    x.td = self.types.get("Element")
                    elements[x.key] = x
        td.finish()
