"""``StoredTerminology``: the packaged terminology plus one tenant's stored CodeSystems and
ValueSets, fetched on demand through an async callback (the caller owns the SQL and the tenant).

Lookups are synchronous (the search compiler is pure), so a lookup of a URL not fetched yet raises
``Unresolved``; ``run(compute)`` fetches it and calls ``compute`` again, until it completes::

    where = await view.run(partial(build_where, "Observation", params))  # called with terminology=view

Packaged definitions win for their URLs (the R4 core value sets and code systems cannot be
redefined by a tenant), except a packaged code system without all its codes (SNOMED CT is here as
``not-present``), which a stored one may supply. Without ``|version`` the most recently updated
stored version is used.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from terminology.errors import NotExpandable, TerminologyError, Unresolved
from terminology.expand import Terminology, pick
from terminology.model import CodeSystemData, Coding, ValueSetData, codesystem_from_resource, valueset_from_resource

T = TypeVar("T")
MAX_FETCHES = 32


class Fetch(Protocol):
    def __call__(
        self, resource_type: str, *, url: str | None = None, id: str | None = None
    ) -> Awaitable[list[dict[str, Any]]]:
        """Live resources of ``resource_type`` with canonical ``url`` (latest first) or with ``id``."""
        ...


class StoredTerminology(Terminology):
    def __init__(self, fetch: Fetch, base: Terminology, max_fetches: int = MAX_FETCHES) -> None:
        super().__init__()
        self._base, self._fetch, self._left = base, fetch, max_fetches
        self._open = True  # False: anything not fetched yet counts as absent
        self._stored_cs: dict[str, list[CodeSystemData]] = {}
        self._stored_vs: dict[str, list[ValueSetData]] = {}
        self._by_id: dict[str, ValueSetData | None] = {}

    async def run(self, compute: Callable[..., T]) -> T:
        """``compute(terminology=self)``, again after each fetch it needed, until it completes."""
        while True:
            try:
                return compute(terminology=self)
            except Unresolved as u:
                if self._left <= 0:
                    self._open = False
                    continue
                self._left -= 1
                self._add(u, await self._fetch(u.resource_type, url=u.url, id=u.id))

    def _add(self, u: Unresolved, resources: list[dict[str, Any]]) -> None:
        resources = [r for r in resources if r.get("resourceType") == u.resource_type]
        if u.resource_type == "CodeSystem":
            self._stored_cs[u.url or ""] = [codesystem_from_resource(r) for r in resources]
        elif u.id is not None:
            self._by_id[u.id] = valueset_from_resource(resources[0]) if resources else None
        else:
            self._stored_vs[u.url or ""] = [valueset_from_resource(r) for r in resources]

    def _stored(self, resource_type: str, url: str, loaded: dict[str, list[Any]]) -> list[Any]:
        if url in loaded:
            return loaded[url]
        if self._open:
            raise Unresolved(resource_type, url=url)
        return []

    def codesystem(self, url: str, version: str | None = None) -> CodeSystemData | None:
        cs = self._base.codesystem(url, version)
        if cs is not None and cs.complete:
            return cs
        return pick(self._stored("CodeSystem", url, self._stored_cs), version) or cs  # type: ignore[return-value]

    def valueset(self, url: str, version: str | None = None) -> ValueSetData | None:
        vs = self._base.valueset(url, version)
        if vs is not None:
            return vs
        return pick(self._stored("ValueSet", url, self._stored_vs), version)  # type: ignore[return-value]

    def valueset_by_id(self, id: str) -> ValueSetData | None:
        if id not in self._by_id:
            if self._open:
                raise Unresolved("ValueSet", id=id)
            return None
        return self._by_id[id]

    def expand(self, url: str, version: str | None = None) -> frozenset[Coding]:
        if self._base.valueset(url, version) is not None:
            try:  # a packaged value set over packaged code systems: the shared cached expansion
                return self._base.expand(url, version)
            except NotExpandable:
                pass  # it may need a code system the tenant stored
            except TerminologyError:
                raise
        return super().expand(url, version)
