"""``Terminology``: code systems and value sets by canonical URL; ValueSet expansion
(https://hl7.org/fhir/R4/valueset.html#expansion) and is-a subsumption over CodeSystem hierarchies.

Expansion supports what the packaged definitions use: ``include``/``exclude`` of listed concepts,
of whole code systems (``content`` complete), ``filter`` on the ``concept`` (or ``code``) property
with ``is-a``, ``descendent-of``, ``is-not-a``, ``generalizes``, ``=``, ``in``, ``not-in`` (several
filters AND), and ``valueSet`` imports (intersected with the system part). A ValueSet with a whole
``expansion`` is taken as it is. Code system versions are not told apart: an include pinned to
another version uses the version present here.
"""

from __future__ import annotations

from collections.abc import Iterable

from terminology.errors import NotExpandable, UnknownCode, UnknownHierarchy, UnknownValueSet
from terminology.model import CodeSystemData, Coding, Include, ValueSetData

_SUBSUMPTION_OPS = frozenset({"is-a", "descendent-of", "is-not-a", "generalizes"})


def pick(
    candidates: Iterable[CodeSystemData | ValueSetData], version: str | None
) -> CodeSystemData | ValueSetData | None:
    """The one with ``version``; without a version the first (the preferred or latest one)."""
    for c in candidates:
        if version is None or c.version == version:
            return c
    return None


def canonical(url: str | None, version: str | None = None) -> str:
    return f"{url}|{version}" if version else str(url)


class Terminology:
    def __init__(self, codesystems: Iterable[CodeSystemData] = (), valuesets: Iterable[ValueSetData] = ()) -> None:
        self._cs: dict[str, list[CodeSystemData]] = {}
        self._vs: dict[str, list[ValueSetData]] = {}
        for cs in codesystems:
            self._cs.setdefault(cs.url, []).append(cs)
        for vs in valuesets:
            if vs.url:
                self._vs.setdefault(vs.url, []).append(vs)
        self._cache: dict[tuple[str, str | None], frozenset[Coding]] = {}
        self._busy: set[tuple[str | None, str | None]] = set()

    # -- lookups (StoredTerminology adds a tenant's stored resources) ------------------------
    def codesystem(self, url: str, version: str | None = None) -> CodeSystemData | None:
        return pick(self._cs.get(url, ()), version)  # type: ignore[return-value]

    def valueset(self, url: str, version: str | None = None) -> ValueSetData | None:
        return pick(self._vs.get(url, ()), version)  # type: ignore[return-value]

    def valueset_by_id(self, id: str) -> ValueSetData | None:
        return None  # packaged value sets have no resource id

    def counts(self) -> tuple[int, int]:
        return sum(map(len, self._cs.values())), sum(map(len, self._vs.values()))

    # -- expansion ------------------------------------------------------------------------------
    def expand(self, url: str, version: str | None = None) -> frozenset[Coding]:
        """Every ``(system, code)`` of the value set; raises ``NotExpandable`` (``UnknownValueSet``)."""
        key = (url, version)
        if key in self._cache:
            return self._cache[key]
        vs = self.valueset(url, version)
        if vs is None:
            raise UnknownValueSet(f"value set {canonical(url, version)} is not known to this server")
        result = self.expand_valueset(vs)
        self._cache[key] = result
        return result

    def expand_reference(self, ref: str) -> frozenset[Coding]:
        """``url[|version]`` or a relative ``ValueSet/id`` (R4 search.html#token, ``:in``)."""
        if ref.startswith("ValueSet/"):
            vid = ref[len("ValueSet/") :]
            vs = self.valueset_by_id(vid)
            if vs is None:
                raise UnknownValueSet(f"{ref} is not a stored value set")
            return self.expand_valueset(vs)
        url, _, version = ref.partition("|")
        return self.expand(url, version or None)

    def expand_valueset(self, vs: ValueSetData) -> frozenset[Coding]:
        if vs.expansion is not None:
            return vs.expansion
        name = canonical(vs.url, vs.version)
        if not vs.include:
            raise NotExpandable(f"value set {name} has neither an expansion nor a compose to expand")
        key = (vs.url, vs.version)
        if key in self._busy:
            raise NotExpandable(f"value set {name} includes itself")
        self._busy.add(key)
        try:
            out: set[Coding] = set()
            for inc in vs.include:
                out |= self._include(inc, name)
            for exc in vs.exclude:
                out -= self._include(exc, name)
        finally:
            self._busy.discard(key)
        return frozenset(out)

    def _include(self, inc: Include, name: str) -> set[Coding]:
        parts: list[set[Coding]] = []
        if inc.system:
            if inc.concept and not inc.filter:
                codes = set(inc.concept)  # listed codes need no code system
            else:
                cs = self._complete(inc.system, inc.version, f"value set {name}")
                codes = set(inc.concept) if inc.concept else set(cs.codes)
                for prop, op, value in inc.filter:
                    codes &= self._filter(cs, prop, op, value, name)
            parts.append({(inc.system, c) for c in codes})
        for ref in inc.value_set:
            url, _, version = ref.partition("|")
            parts.append(set(self.expand(url, version or None)))
        if not parts:
            return set()
        out = parts[0]
        for p in parts[1:]:
            out &= p
        return out

    def _complete(self, system: str, version: str | None, needed_by: str) -> CodeSystemData:
        cs = self.codesystem(system, version) or (self.codesystem(system) if version else None)
        if cs is None:
            raise NotExpandable(f"{needed_by} needs code system {system}, which is not available on this server")
        if not cs.complete:
            raise NotExpandable(f"{needed_by} needs all of code system {system}, which is here as '{cs.content}' only")
        return cs

    def _filter(self, cs: CodeSystemData, prop: str, op: str, value: str, name: str) -> set[str]:
        what = f"filter '{prop} {op} {value}' of value set {name}"
        if prop not in ("concept", "code"):
            raise NotExpandable(f"{what} is not supported (only filters on the concept itself)")
        if op in _SUBSUMPTION_OPS and not cs.subsumption:
            raise NotExpandable(f"{what}: the hierarchy of {cs.url} is not is-a")
        if op == "is-a":
            return set(cs.descendants(value))
        if op == "descendent-of":
            return set(cs.descendants(value, include_self=False))
        if op == "is-not-a":
            return set(cs.codes - cs.descendants(value))
        if op == "generalizes":
            return set(cs.ancestors(value))
        if op == "=":
            return {value}
        if op == "in":
            return set(value.split(","))
        if op == "not-in":
            return set(cs.codes - set(value.split(",")))
        raise NotExpandable(f"{what} is not supported")

    # -- subsumption ------------------------------------------------------------------------------
    def descendants(self, system: str, code: str) -> frozenset[str]:
        """``code`` and every code it subsumes (is-a), for ``:below``."""
        return self.hierarchy(system, code).descendants(code)

    def ancestors(self, system: str, code: str) -> frozenset[str]:
        """``code`` and every code that subsumes it, for ``:above``."""
        return self.hierarchy(system, code).ancestors(code)

    def hierarchy(self, system: str, code: str) -> CodeSystemData:
        cs = self.codesystem(system)
        if cs is None or not cs.complete:
            raise UnknownHierarchy(f"the hierarchy of code system {system} is not known to this server")
        if not cs.subsumption:
            raise UnknownHierarchy(f"code system {system} has no is-a hierarchy ({cs.hierarchy_meaning})")
        if code not in cs.codes:
            raise UnknownCode(f"code '{code}' is not defined in code system {system}")
        return cs
