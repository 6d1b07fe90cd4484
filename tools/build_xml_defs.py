#!/usr/bin/env python
"""Package the element order and types the FHIR XML codec needs (https://hl7.org/fhir/R4/xml.html).

Reads (never at server run time) profiles-types.json.gz and profiles-resources.json.gz from
``/work/shared/data/fhir-r4/`` (or ``--src``) and writes
``fhir_server/definitions/data/xml-structures.json.gz``::

    {"fhirVersion": "4.0.1",
     "primitives": {type: "b" | "i" | "d" | "s"},     # JSON form: boolean, integer, decimal, string
     "resources": [type...],                            # concrete resource types
     "types": {name: [[element, flags, [type...]], ...]}}

``types`` holds every complex datatype and resource, and every backbone element under the name
of its path (``Patient.contact``), with its elements in StructureDefinition order (the order
XML requires). ``element`` ends in ``[x]`` for a choice; ``flags``: 1 = repeats (a JSON array),
2 = an XML attribute (``Element.id``, ``Extension.url``). A type is a datatype or resource name,
a backbone path, ``Resource`` (a contained resource) or ``xhtml`` (the narrative ``div``).

Usage: /work/venv/bin/python tools/build_xml_defs.py [--src DIR] [--out DIR]
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FHIR_TYPE_EXT = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type"
JSON_FORMS = {"boolean": "b", "integer": "i", "positiveInt": "i", "unsignedInt": "i", "decimal": "d"}
ARRAY, ATTR = 1, 2


def _sds(path: Path) -> list[dict[str, Any]]:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        entries = json.load(fh).get("entry", [])
    return [e["resource"] for e in entries if e["resource"].get("resourceType") == "StructureDefinition"]


def _type_code(t: dict[str, Any]) -> str:
    code: str = t["code"]
    if code.startswith("http://hl7.org/fhirpath/System."):
        # Resource.id and friends: the FHIR type is named by an extension (R4 snapshots)
        for ext in t.get("extension", ()):
            if ext.get("url") == FHIR_TYPE_EXT:
                return str(ext.get("valueUrl") or ext.get("valueUri"))
        return "string"
    return code


def _structure(sd: dict[str, Any], types: dict[str, list[list[Any]]]) -> None:
    root = sd["type"]
    elements = sd["snapshot"]["element"]
    backbones = {el["path"] for el in elements[1:] if any(t["code"] in ("BackboneElement", "Element") for t in el.get("type", ()))}
    types.setdefault(sd["id"] if sd.get("derivation") == "constraint" else root, [])
    for el in elements[1:]:
        path: str = el["path"]
        parent, _, name = path.rpartition(".")
        owner = sd["id"] if parent == root and sd.get("derivation") == "constraint" else parent
        if owner not in types:
            continue  # below an element the profile does not open up
        mx = (el.get("base") or {}).get("max") or el.get("max", "1")
        if el.get("max") == "0" and mx == "0":
            continue
        flags = ARRAY if mx != "1" else 0
        if "xmlAttr" in el.get("representation", ()):
            flags |= ATTR
        if "contentReference" in el:
            kinds = [el["contentReference"].lstrip("#")]
        elif path in backbones:
            kinds = [path]
            types.setdefault(path, [])
        else:
            kinds = [_type_code(t) for t in el.get("type", ())]
        types[owner].append([name, flags, kinds])


def build(src: Path) -> dict[str, Any]:
    type_sds = _sds(src / "profiles-types.json.gz")
    resource_sds = _sds(src / "profiles-resources.json.gz")
    primitives = {sd["id"]: JSON_FORMS.get(sd["id"], "s") for sd in type_sds if sd["kind"] == "primitive-type"}
    types: dict[str, list[list[Any]]] = {}
    for sd in type_sds:
        if sd["kind"] == "complex-type" and "snapshot" in sd:
            _structure(sd, types)
    resources = []
    for sd in resource_sds:
        if sd["kind"] == "resource" and sd.get("derivation") == "specialization" and not sd.get("abstract"):
            _structure(sd, types)
            resources.append(sd["id"])
    return {"fhirVersion": "4.0.1", "primitives": primitives, "resources": sorted(resources), "types": types}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", type=Path, default=ROOT.parent / "shared" / "data" / "fhir-r4")
    ap.add_argument("--out", type=Path, default=ROOT / "fhir_server" / "definitions" / "data")
    args = ap.parse_args()
    data = build(args.src)
    out = args.out / "xml-structures.json.gz"
    with gzip.GzipFile(out, "wb", mtime=0) as fh:
        fh.write(json.dumps(data, separators=(",", ":"), sort_keys=True).encode())
    n = sum(len(v) for v in data["types"].values())
    print(f"{out.relative_to(ROOT)}: {len(data['types'])} types, {n} elements, {len(data['resources'])} resources")


if __name__ == "__main__":
    main()
