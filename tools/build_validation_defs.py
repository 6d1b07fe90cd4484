#!/usr/bin/env python
"""Build the packaged validation data from the official FHIR R4 4.0.1 definitions.

Reads (never at server run time) from ``/work/shared/data/fhir-r4/`` (or ``--src``):
  profiles-types.json.gz, profiles-resources.json.gz  -> element tables (snapshots)
  hl7.fhir.r4.core-4.0.1.tgz                          -> value[x] types of the core extensions
  valuesets.json.gz, v3-codesystems.json.gz           -> required-binding code sets, expanded

Writes ``fhir_server/definitions/data/``:
  validation-structures.json.gz  {"fhirVersion", "primitives": {type: regex}, "structures": [compact SD...],
                                  "extensions": {core extension url: [value type...]}}
  validation-valuesets.json.gz   {"valuesets": {url: {system: [code...]}}, "unexpanded": [url...]}

Usage: /work/venv/bin/python tools/build_validation_defs.py [--src DIR] [--out DIR]
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import tarfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fhir_server.validation.compact import compact_structure_definition

REGEX_EXT = "http://hl7.org/fhir/StructureDefinition/regex"


def _bundle(path: Path) -> list[dict[str, Any]]:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return [e["resource"] for e in json.load(fh).get("entry", []) if "resource" in e]


def _primitive_regexes(sds: list[dict[str, Any]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for sd in sds:
        if sd.get("kind") != "primitive-type":
            continue
        for el in sd["snapshot"]["element"]:
            if el["path"] != sd["type"] + ".value":
                continue
            for t in el.get("type", ()):
                for ext in t.get("extension", ()):
                    if ext.get("url") == REGEX_EXT:
                        out[sd["type"]] = ext["valueString"]
    return out


def _core_extensions(tgz: Path) -> dict[str, list[str]]:
    """url -> allowed value[x] type codes of each core extension ([] = complex: no value[x])."""
    out: dict[str, list[str]] = {}
    if not tgz.exists():
        return out
    with tarfile.open(tgz) as tf:
        for m in tf.getmembers():
            if not m.name.startswith("package/StructureDefinition-") or not m.name.endswith(".json"):
                continue
            sd = json.load(tf.extractfile(m))  # type: ignore[arg-type]
            if sd.get("type") != "Extension" or sd.get("derivation") != "constraint":
                continue
            for el in (sd.get("snapshot") or {}).get("element", ()):
                if el.get("id") == "Extension.value[x]":
                    types = [t["code"] for t in el.get("type", ())]
                    out[sd["url"]] = [] if el.get("max") == "0" else sorted(types)
    return dict(sorted(out.items()))


def _all_codes(concepts: list[dict[str, Any]], into: list[str]) -> None:
    for c in concepts:
        into.append(c["code"])
        if c.get("concept"):
            _all_codes(c["concept"], into)


def _descendants(concepts: list[dict[str, Any]], code: str, include_self: bool) -> list[str] | None:
    for c in concepts:
        if c["code"] == code:
            out: list[str] = [code] if include_self else []
            _all_codes(c.get("concept", []), out)
            return out
        found = _descendants(c.get("concept", []), code, include_self)
        if found is not None:
            return found
    return None


class Expander:
    """Expand ValueSet.compose from the CodeSystems in the package; ``None`` when it cannot."""

    def __init__(self, valuesets: dict[str, dict], codesystems: dict[str, dict]) -> None:
        self.vs, self.cs = valuesets, codesystems
        self.cache: dict[str, dict[str, set[str]] | None] = {}

    def _include(self, inc: dict[str, Any]) -> dict[str, set[str]] | None:
        out: dict[str, set[str]] = {}
        system = inc.get("system")
        codes: set[str] | None = None
        if system:
            if inc.get("concept"):
                codes = {c["code"] for c in inc["concept"]}
            else:
                cs = self.cs.get(system)
                if cs is None or cs.get("content") not in ("complete", None):
                    return None
                if inc.get("filter"):
                    codes = set()
                    for f in inc["filter"]:
                        if f.get("property") != "concept" or f.get("op") not in ("is-a", "descendent-of"):
                            return None
                        d = _descendants(cs.get("concept", []), f["value"], f["op"] == "is-a")
                        if d is None:
                            return None
                        codes |= set(d)
                else:
                    lst: list[str] = []
                    _all_codes(cs.get("concept", []), lst)
                    codes = set(lst)
            out[system] = codes
        for ref in inc.get("valueSet", ()):
            sub = self.expand(ref.split("|")[0])
            if sub is None:
                return None
            if system:  # intersection with the system part
                out[system] &= sub.get(system, set())
            else:
                for s, c in sub.items():
                    out.setdefault(s, set()).update(c)
        return out

    def expand(self, url: str) -> dict[str, set[str]] | None:
        if url in self.cache:
            return self.cache[url]
        self.cache[url] = None  # cycle guard
        vs = self.vs.get(url)
        result: dict[str, set[str]] | None = None
        if vs is not None:
            result = {}
            compose = vs.get("compose") or {}
            for inc in compose.get("include", ()):
                part = self._include(inc)
                if part is None:
                    result = None
                    break
                for s, c in part.items():
                    result.setdefault(s, set()).update(c)
            if result is not None:
                for exc in compose.get("exclude", ()):
                    part = self._include(exc)
                    if part is None:  # cannot tell what is excluded: do not check at all
                        result = None
                        break
                    for s, c in part.items():
                        if s in result:
                            result[s] -= c
            if result is not None and not any(result.values()):
                result = None
        self.cache[url] = result
        return result


def build(src: Path, out: Path) -> dict[str, int]:
    types = _bundle(src / "profiles-types.json.gz")
    resources = _bundle(src / "profiles-resources.json.gz")
    sds = [r for r in types + resources if r.get("resourceType") == "StructureDefinition"]
    sds = [sd for sd in sds if sd.get("kind") != "logical"]

    structures = []
    for sd in sds:
        if sd.get("kind") == "primitive-type":
            continue  # primitives are checked by regex + semantics, see primitives.py
        structures.append(compact_structure_definition(sd))
    primitives = _primitive_regexes(sds)
    extensions = _core_extensions(src / "hl7.fhir.r4.core-4.0.1.tgz")

    valuesets: dict[str, dict] = {}
    codesystems: dict[str, dict] = {}
    for name in ("valuesets.json.gz", "v3-codesystems.json.gz"):
        for r in _bundle(src / name):
            if r.get("resourceType") == "ValueSet":
                valuesets.setdefault(r["url"], r)
            elif r.get("resourceType") == "CodeSystem":
                codesystems.setdefault(r["url"], r)
    expander = Expander(valuesets, codesystems)
    wanted = sorted({e[5] for s in structures for e in s["elements"] if e[5]})
    expanded: dict[str, dict[str, list[str]]] = {}
    unexpanded: list[str] = []
    for url in wanted:
        exp = expander.expand(url)
        if exp is None:
            unexpanded.append(url)
        else:
            expanded[url] = {s: sorted(c) for s, c in sorted(exp.items()) if c}

    out.mkdir(parents=True, exist_ok=True)
    _write(
        out / "validation-structures.json.gz",
        {"fhirVersion": "4.0.1", "primitives": primitives, "structures": structures, "extensions": extensions},
    )
    _write(
        out / "validation-valuesets.json.gz", {"fhirVersion": "4.0.1", "valuesets": expanded, "unexpanded": unexpanded}
    )
    return {
        "structures": len(structures),
        "elements": sum(len(s["elements"]) for s in structures),
        "core_extensions": len(extensions),
        "required_valuesets": len(wanted),
        "expanded": len(expanded),
        "unexpanded": len(unexpanded),
    }


def _write(path: Path, data: Any) -> None:
    raw = json.dumps(data, separators=(",", ":"), sort_keys=False).encode()
    # mtime=0: the same input gives byte-identical output
    with open(path, "wb") as fh, gzip.GzipFile(fileobj=fh, mode="wb", compresslevel=9, mtime=0) as gz:
        gz.write(raw)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--src", type=Path, default=Path("/work/shared/data/fhir-r4"))
    ap.add_argument("--out", type=Path, default=ROOT / "fhir_server" / "definitions" / "data")
    args = ap.parse_args()
    stats = build(args.src, args.out)
    print(json.dumps(stats))
    for f in sorted(args.out.glob("validation-*.json.gz")):
        print(f"{f.name}: {f.stat().st_size} bytes")


if __name__ == "__main__":
    main()
