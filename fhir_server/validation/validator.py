"""The Validator: packaged R4 base definitions + profiles added at run time."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

from fhir_server.errors import Issue

from .compact import compact_structure_definition
from .model import Compiler, TypeDef
from .primitives import make_checkers, make_fast_paths
from .walker import Walker

DATA_DIR = Path(__file__).resolve().parents[1] / "definitions" / "data"
STRUCTURES_FILE = DATA_DIR / "validation-structures.json.gz"
VALUESETS_FILE = DATA_DIR / "validation-valuesets.json.gz"


def _load(path: Path) -> Any:
    with gzip.open(path, "rb") as fh:
        return json.loads(fh.read())


_PACKAGED: dict[str, Any] = {}


def packaged_data() -> tuple[dict[str, Any], dict[str, Any]]:
    """The packaged (structures, valuesets) JSON; read from disk once per process."""
    if not _PACKAGED:
        _PACKAGED["s"] = _load(STRUCTURES_FILE)
        _PACKAGED["v"] = _load(VALUESETS_FILE)
    return _PACKAGED["s"], _PACKAGED["v"]


class Validator:
    """Validates parsed FHIR R4 JSON (dicts) against the base definitions and optional profiles."""

    def __init__(self) -> None:
        structures, valuesets = packaged_data()
        self.fhir_version = structures.get("fhirVersion", "4.0.1")
        self.checkers = make_checkers(structures["primitives"])
        self.types: dict[str, TypeDef] = {}  # complex datatypes and resources, by type name
        self.profiles: dict[str, TypeDef] = {}  # by canonical url (base definitions too)
        self._compiler = Compiler(
            self.types, self.checkers, valuesets["valuesets"], make_fast_paths(structures["primitives"])
        )
        specs = structures["structures"]
        base = [s for s in specs if s.get("derivation") != "constraint"]
        for s in base:  # declare first so that element types resolve regardless of order
            self.types[s["type"]] = TypeDef(s["type"], s["type"])
            self.types[s["type"]].is_resource = s.get("kind") == "resource"
        for s in base:
            td = self._compiler.compile(s, s["type"], None, into=self.types[s["type"]])
            td.is_resource = s.get("kind") == "resource"
            td.url = s.get("url")
            if td.url:
                self.profiles[td.url] = td
        for s in specs:
            if s.get("derivation") == "constraint":
                self._add_constraint(s)
        self.resources: dict[str, TypeDef] = {
            s["type"]: self.types[s["type"]] for s in base if s.get("kind") == "resource" and not s.get("abstract")
        }
        self.resource_types = frozenset(self.resources)
        # core extensions (extensibility.html): url -> the value[x] keys they allow (empty: complex)
        self.extensions: dict[str, frozenset[str]] = {
            url: frozenset("value" + t[0].upper() + t[1:] for t in types)
            for url, types in structures.get("extensions", {}).items()
        }
        self._walker = Walker(self.resources, self.resource_types, self.extensions)

    # -- definitions -------------------------------------------------------------------------------
    def add_structure_definition(self, sd: dict[str, Any]) -> TypeDef:
        """Register a StructureDefinition: a new base type/resource (specialization), or a profile
        (constraint) with a snapshot or only a differential. Returns the compiled TypeDef."""
        if sd.get("resourceType") != "StructureDefinition" or not sd.get("url"):
            raise ValueError("not a StructureDefinition with a url")
        has_snapshot = bool((sd.get("snapshot") or {}).get("element"))
        compact = compact_structure_definition(sd, use_differential=not has_snapshot)
        if compact.get("kind") == "primitive-type":
            raise ValueError("primitive types are built in")
        if compact.get("derivation") == "constraint":
            return self._add_constraint(compact)
        name = compact["type"]
        if not has_snapshot:
            raise ValueError("a specialization needs a snapshot")
        td = self.types.get(name)
        if td is None:
            td = self.types[name] = TypeDef(name, name)
        else:
            td.elements.clear()
        self._compiler.compile(compact, name, None, into=td)
        td.is_resource = compact.get("kind") == "resource"
        td.url = compact["url"]
        self.profiles[td.url] = td
        if td.is_resource and not compact.get("abstract"):
            self.resources[name] = td
            self.resource_types = frozenset(self.resources)
            self._walker.resource_types = self.resource_types
        return td

    def _add_constraint(self, compact: dict[str, Any]) -> TypeDef:
        base_url = compact.get("base")
        base = self.profiles.get(base_url) if base_url else None
        if base is None:
            base = self.types.get(compact["type"])
        if base is None:
            raise ValueError(f"unknown base type {compact['type']!r}")
        td = self._compiler.compile(compact, compact.get("name") or compact["type"], base)
        td.special = base.special
        td.is_resource = base.is_resource
        td.finish()
        td.url = compact["url"]
        self.profiles[td.url] = td
        return td

    # -- validation --------------------------------------------------------------------------------
    def validate(
        self, resource: Any, profiles: list[str] | tuple[str, ...] | None = None, *, base: bool = True
    ) -> list[Issue]:
        """All issues found in ``resource`` (errors, and warnings that do not block a write).
        ``base=False``: only the ``profiles`` pass (the caller has just validated against base R4)."""
        issues: list[Issue] = []
        if base:
            try:
                self._walker.root(resource, issues)
            except RecursionError:
                issues.append(Issue("error", "too-costly", "the resource is nested too deeply to validate", None))
                return issues
        if profiles and type(resource) is dict:
            rt = resource.get("resourceType")
            for url in profiles:
                td = self.profiles.get(url.split("|")[0])
                if td is None:
                    issues.append(
                        Issue("error", "not-found", f"unknown profile {url!r}", rt if type(rt) is str else None)
                    )
                    continue
                if not td.is_resource or td.special != rt:
                    issues.append(
                        Issue(
                            "error",
                            "invalid",
                            f"profile {url!r} is for {td.special}, not {rt}",
                            rt if type(rt) is str else None,
                        )
                    )
                    continue
                seen = set(issues)
                extra: list[Issue] = []
                try:
                    self._walker.root(resource, extra, td, rt)
                except RecursionError:
                    extra.append(Issue("error", "too-costly", "the resource is nested too deeply to validate", None))
                issues.extend(i for i in extra if i not in seen)
        return issues
