"""A project profile's StructureDefinition → the rules the checker applies (profiling.html).

Read from the **differential** (the project's profiles have no snapshot):

* extension slices — ``<Type>.extension:<slice>`` with ``type[0].profile[0]`` = the extension's url
  (slicing by url, discriminator ``value:url``): their ``min``/``max`` (``max = 0`` forbids the
  extension) and a ``fixed[x]``/``pattern[x]`` on the slice's ``value[x]``;
* extension definitions — ``Extension.value[x]`` type(s) and binding (``required`` enforced;
  every binding checks codings of the project's own code systems for unknown codes);
* other elements (no ``:`` in the id) with a ``fixed[x]``/``pattern[x]`` value or a ``required``
  binding to a project value set (cardinality, types and core bindings are left to
  ``fhir_server.validation``, which compiles the same profile).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import terminology


@dataclass(frozen=True, slots=True)
class ExtensionDef:
    url: str
    name: str
    value_keys: frozenset[str]  # "valueCode", …; empty: a complex extension (not checked further)
    valueset: str | None
    strength: str | None


@dataclass(slots=True)
class Slice:
    name: str
    url: str
    min: int
    max: int | None  # None: *
    fixed: dict[str, Any] = field(default_factory=dict)  # value key → required value


@dataclass(slots=True)
class PathRule:
    path: list[str]  # below the root, e.g. ["ingredient", "strength", "numerator", "system"]
    fixed: tuple[str, Any] | None = None  # ("fixedUri", "http://unitsofmeasure.org") — compared by value
    valueset: str | None = None  # required binding


@dataclass(slots=True)
class ProfileRules:
    url: str
    name: str
    type: str
    slices: dict[str, Slice] = field(default_factory=dict)  # by extension url
    paths: list[PathRule] = field(default_factory=list)


def _fixed(el: dict[str, Any]) -> tuple[str, Any] | None:
    for key, value in el.items():
        if key.startswith(("fixed", "pattern")) and key not in ("fixed", "pattern"):
            return key, value
    return None


def extension_def(sd: dict[str, Any]) -> ExtensionDef:
    keys: set[str] = set()
    valueset = strength = None
    for el in (sd.get("differential") or {}).get("element", ()):
        if el.get("path") == "Extension.value[x]" and ":" not in el.get("id", ""):
            keys |= {"value" + t["code"][0].upper() + t["code"][1:] for t in el.get("type", ()) if t.get("code")}
            binding = el.get("binding") or {}
            if binding.get("valueSet"):
                valueset, strength = binding["valueSet"].split("|")[0], binding.get("strength")
    return ExtensionDef(sd["url"], sd.get("name") or sd["id"], frozenset(keys), valueset, strength)


def profile_rules(sd: dict[str, Any]) -> ProfileRules:
    root = sd["type"]
    rules = ProfileRules(sd["url"], sd.get("name") or sd["id"], root)
    by_slice: dict[str, Slice] = {}
    for el in (sd.get("differential") or {}).get("element", ()):
        eid: str = el.get("id") or el.get("path", "")
        head, _, slice_part = eid.partition(":")
        if slice_part:
            name, _, rest = slice_part.partition(".")
            if head != f"{root}.extension":
                continue  # slices of other elements are not checked (README: gaps)
            if not rest:
                profiles = [p for t in el.get("type", ()) for p in t.get("profile", ())]
                if not profiles:
                    continue
                mx = el.get("max", "*")
                by_slice[name] = rules.slices[profiles[0].split("|")[0]] = Slice(
                    name, profiles[0].split("|")[0], int(el.get("min", 0)), None if mx == "*" else int(mx)
                )
            elif rest == "value[x]" and name in by_slice and (f := _fixed(el)):
                key = "value" + f[0].removeprefix("fixed").removeprefix("pattern")
                by_slice[name].fixed[key] = f[1]
            continue
        path = el.get("path", "")
        if path == root:
            continue
        rel = path[len(root) + 1 :].split(".")
        binding = el.get("binding") or {}
        vs = binding.get("valueSet", "").split("|")[0] if binding.get("strength") == "required" else None
        fixed = _fixed(el)
        if fixed or (vs and terminology.expand(vs) is not None):
            rules.paths.append(PathRule(rel, fixed, vs or None))
    return rules
