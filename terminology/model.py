"""Compact code systems and value sets: what expansion and subsumption need, nothing else.

The same compact form is written by ``tools/build_terminology.py`` into ``data/terminology.json.gz``
and made at run time from CodeSystem / ValueSet resources (packaged ``codesystems/*.json``,
``valuesets/*.json``, and the ones a tenant stores). Displays, designations and properties other
than the hierarchy links are dropped.

CodeSystem (https://hl7.org/fhir/R4/codesystem.html)::

    {"url", "version", "content", "hierarchyMeaning", "codes": [code...], "parents": [[child, parent]...]}

``parents`` are index pairs into ``codes``: the ``concept`` nesting, plus the ``parent`` /
``subsumedBy`` (child to parent) and ``child`` (parent to child) concept properties, which the v3
code systems use for their second parents.

ValueSet (https://hl7.org/fhir/R4/valueset.html)::

    {"url", "version", "include": [inc...], "exclude": [inc...], "expansion": [[system, code]...]}
    inc = {"system", "version", "concept": [code...], "filter": [[property, op, value]...], "valueSet": [url...]}

``expansion`` only when ``ValueSet.expansion`` holds the whole expansion (no paging: ``total`` absent
or equal to the codes it lists).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

Coding = tuple[str | None, str]  # (system, code)

_PARENT_PROPERTIES = ("parent", "subsumedBy")
_CHILD_PROPERTIES = ("child",)


# -- FHIR JSON -> compact dict ---------------------------------------------------------------
def compact_codesystem(cs: dict[str, Any]) -> dict[str, Any]:
    codes: list[str] = []
    index: dict[str, int] = {}
    links: set[tuple[str, str]] = set()  # (child, parent)

    def walk(concepts: list[dict[str, Any]], parent: str | None) -> None:
        for c in concepts:
            code = c.get("code")
            if not isinstance(code, str) or not code:
                continue
            if code not in index:
                index[code] = len(codes)
                codes.append(code)
            if parent is not None:
                links.add((code, parent))
            for p in c.get("property", ()):
                value = p.get("valueCode")
                if not isinstance(value, str):
                    continue
                if p.get("code") in _PARENT_PROPERTIES:
                    links.add((code, value))
                elif p.get("code") in _CHILD_PROPERTIES:
                    links.add((value, code))
            walk(c.get("concept", ()), code)

    walk(cs.get("concept", ()), None)
    parents = sorted((index[c], index[p]) for c, p in links if c in index and p in index and c != p)
    out: dict[str, Any] = {"url": cs.get("url"), "version": cs.get("version"), "content": cs.get("content")}
    if cs.get("hierarchyMeaning"):
        out["hierarchyMeaning"] = cs["hierarchyMeaning"]
    out["codes"] = codes
    if parents:
        out["parents"] = [list(p) for p in parents]
    return out


def _compact_include(inc: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if inc.get("system"):
        out["system"] = inc["system"]
    if inc.get("version"):
        out["version"] = inc["version"]
    if inc.get("concept"):
        out["concept"] = [c["code"] for c in inc["concept"] if c.get("code")]
    if inc.get("filter"):
        out["filter"] = [[f.get("property"), f.get("op"), f.get("value")] for f in inc["filter"]]
    if inc.get("valueSet"):
        out["valueSet"] = list(inc["valueSet"])
    return out


def _contains(items: Iterable[dict[str, Any]], into: list[list[str | None]]) -> None:
    for c in items:
        if c.get("code"):
            into.append([c.get("system"), c["code"]])
        _contains(c.get("contains", ()), into)


def compact_valueset(vs: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"url": vs.get("url"), "version": vs.get("version")}
    compose = vs.get("compose") or {}
    if compose.get("include"):
        out["include"] = [_compact_include(i) for i in compose["include"]]
    if compose.get("exclude"):
        out["exclude"] = [_compact_include(i) for i in compose["exclude"]]
    expansion = vs.get("expansion")
    if isinstance(expansion, dict):
        found: list[list[str | None]] = []
        _contains(expansion.get("contains", ()), found)
        total = expansion.get("total")
        paged = expansion.get("offset") not in (None, 0) or (isinstance(total, int) and total > len(found))
        if not paged and (found or total == 0):
            out["expansion"] = found
    return out


# -- compact dict -> objects -------------------------------------------------------------------
@dataclass(slots=True)
class CodeSystemData:
    url: str
    version: str | None
    content: str | None
    hierarchy_meaning: str | None
    codes: frozenset[str]
    parents: dict[str, tuple[str, ...]]
    _children: dict[str, tuple[str, ...]] | None = field(default=None, repr=False)

    @classmethod
    def from_compact(cls, d: dict[str, Any]) -> CodeSystemData:
        codes = d.get("codes", [])
        parents: dict[str, list[str]] = {}
        for c, p in d.get("parents", ()):
            parents.setdefault(codes[c], []).append(codes[p])
        return cls(
            d["url"],
            d.get("version"),
            d.get("content"),
            d.get("hierarchyMeaning"),
            frozenset(codes),
            {k: tuple(v) for k, v in parents.items()},
        )

    @property
    def complete(self) -> bool:
        """Every code of the system is here (``content`` complete; absent counts as complete)."""
        return self.content in ("complete", None)

    @property
    def subsumption(self) -> bool:
        """The nesting means is-a (``hierarchyMeaning`` is-a, or absent: FHIR's default reading)."""
        return self.hierarchy_meaning in ("is-a", None)

    def children(self, code: str) -> tuple[str, ...]:
        if self._children is None:
            kids: dict[str, list[str]] = {}
            for child, ps in self.parents.items():
                for p in ps:
                    kids.setdefault(p, []).append(child)
            self._children = {k: tuple(v) for k, v in kids.items()}
        return self._children.get(code, ())

    def descendants(self, code: str, include_self: bool = True) -> frozenset[str]:
        return _closure(code, self.children, include_self)

    def ancestors(self, code: str, include_self: bool = True) -> frozenset[str]:
        return _closure(code, lambda c: self.parents.get(c, ()), include_self)


def _closure(start: str, step: Any, include_self: bool) -> frozenset[str]:
    seen = {start}
    todo = deque([start])
    while todo:
        for nxt in step(todo.popleft()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    if not include_self:
        seen.discard(start)
    return frozenset(seen)


@dataclass(frozen=True, slots=True)
class Include:
    system: str | None = None
    version: str | None = None
    concept: tuple[str, ...] = ()
    filter: tuple[tuple[str, str, str], ...] = ()
    value_set: tuple[str, ...] = ()

    @classmethod
    def from_compact(cls, d: dict[str, Any]) -> Include:
        return cls(
            d.get("system"),
            d.get("version"),
            tuple(d.get("concept", ())),
            tuple((str(p), str(o), str(v)) for p, o, v in d.get("filter", ())),
            tuple(d.get("valueSet", ())),
        )


@dataclass(frozen=True, slots=True)
class ValueSetData:
    url: str | None
    version: str | None
    include: tuple[Include, ...] = ()
    exclude: tuple[Include, ...] = ()
    expansion: frozenset[Coding] | None = None

    @classmethod
    def from_compact(cls, d: dict[str, Any]) -> ValueSetData:
        exp = d.get("expansion")
        return cls(
            d.get("url"),
            d.get("version"),
            tuple(Include.from_compact(i) for i in d.get("include", ())),
            tuple(Include.from_compact(i) for i in d.get("exclude", ())),
            frozenset((s, c) for s, c in exp) if exp is not None else None,
        )


def codesystem_from_resource(cs: dict[str, Any]) -> CodeSystemData:
    return CodeSystemData.from_compact(compact_codesystem(cs))


def valueset_from_resource(vs: dict[str, Any]) -> ValueSetData:
    return ValueSetData.from_compact(compact_valueset(vs))
