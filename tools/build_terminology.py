#!/usr/bin/env python
"""Build the packaged terminology from the official FHIR R4 4.0.1 definitions.

Reads (never at server run time) from ``/work/shared/data/fhir-r4/`` (or ``--src``):
  valuesets.json.gz, v3-codesystems.json.gz, v2-tables.json.gz  -> every CodeSystem and ValueSet

Writes ``terminology/data/terminology.json.gz``:
  {"fhirVersion", "codesystems": [compact CodeSystem...], "valuesets": [compact ValueSet...]}
in the compact form of ``terminology/model.py`` (codes with parent links, compose, whole
expansions; no displays). Same input, byte-identical output (like build_validation_defs.py).

Usage: /work/venv/bin/python tools/build_terminology.py [--src DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from terminology.model import compact_codesystem, compact_valueset

SOURCES = ("valuesets.json.gz", "v3-codesystems.json.gz", "v2-tables.json.gz")


def _bundle(path: Path) -> list[dict[str, Any]]:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return [e["resource"] for e in json.load(fh).get("entry", []) if "resource" in e]


def build(src: Path, out: Path) -> dict[str, int]:
    codesystems: dict[str, dict[str, Any]] = {}
    valuesets: dict[str, dict[str, Any]] = {}
    for name in SOURCES:
        for r in _bundle(src / name):
            if r.get("resourceType") == "CodeSystem" and r.get("url") and r.get("content") != "supplement":
                codesystems.setdefault(r["url"], compact_codesystem(r))
            elif r.get("resourceType") == "ValueSet" and r.get("url"):
                valuesets.setdefault(r["url"], compact_valueset(r))
    data = {
        "fhirVersion": "4.0.1",
        "codesystems": [codesystems[u] for u in sorted(codesystems)],
        "valuesets": [valuesets[u] for u in sorted(valuesets)],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    raw = json.dumps(data, separators=(",", ":")).encode()
    with open(out, "wb") as fh, gzip.GzipFile(filename="", fileobj=fh, mode="wb", compresslevel=9, mtime=0) as gz:
        gz.write(raw)
    return {
        "codesystems": len(codesystems),
        "concepts": sum(len(c["codes"]) for c in codesystems.values()),
        "parent_links": sum(len(c.get("parents", ())) for c in codesystems.values()),
        "valuesets": len(valuesets),
        "raw_bytes": len(raw),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--src", type=Path, default=Path("/work/shared/data/fhir-r4"))
    ap.add_argument("--out", type=Path, default=ROOT / "terminology" / "data" / "terminology.json.gz")
    args = ap.parse_args()
    print(json.dumps(build(args.src, args.out)))
    print(f"{args.out.name}: {args.out.stat().st_size} bytes")


if __name__ == "__main__":
    main()
