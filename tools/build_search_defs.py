"""Build ``fhir_server/definitions/data/search-parameters.json.gz`` from the official R4 package.

Reads the 1375 SearchParameters of FHIR R4 4.0.1 (``search-parameters.json.gz``, a Bundle) and
writes the compact list the server loads at start (``fhir_server.search.registry``). The server
never reads ``/work/shared`` at run time: run this script after changing it and commit the output.

The core SearchParameters carry no ``modifier`` element, so each entry gets the modifiers the
R4 spec allows for its type (https://hl7.org/fhir/R4/search.html#modifiers); ``comparator`` is
filled the same way for date/number/quantity when the definition leaves it out
(https://hl7.org/fhir/R4/search.html#prefix).

The extension/example SearchParameters that only exist as separate files in the
``hl7.fhir.r4.core`` package (25 of them, several with no base or expression) are not part of the
core set and are left out; the script checks that every core definition in the package matches
the bundle's.

Usage: python tools/build_search_defs.py [--source DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SOURCE = Path("/work/shared/data/fhir-r4")
DEFAULT_OUT = REPO / "fhir_server" / "definitions" / "data" / "search-parameters.json.gz"

# R4 search.html "Modifiers": what each parameter type accepts
MODIFIERS_BY_TYPE: dict[str, list[str]] = {
    "string": ["missing", "exact", "contains"],
    "token": ["missing", "text", "not", "above", "below", "in", "not-in", "of-type"],
    "reference": ["missing", "type", "identifier", "above", "below"],
    "date": ["missing"],
    "number": ["missing"],
    "quantity": ["missing"],
    "uri": ["missing", "below", "above"],
    "composite": ["missing"],
    "special": ["missing"],
}
ALL_PREFIXES = ["eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"]


def compact(sp: dict) -> dict:
    """One SearchParameter -> the fields the server uses, short and stable."""
    ptype = sp["type"]
    out: dict = {
        "url": sp["url"],
        "code": sp["code"],
        "base": list(sp.get("base", [])),
        "type": ptype,
        "expression": sp.get("expression"),
    }
    if sp.get("target"):
        out["target"] = list(sp["target"])
    if sp.get("component"):
        out["component"] = [{"definition": c["definition"], "expression": c["expression"]} for c in sp["component"]]
    out["modifier"] = list(sp.get("modifier") or MODIFIERS_BY_TYPE.get(ptype, ["missing"]))
    comparators = sp.get("comparator")
    if not comparators and ptype in ("date", "number", "quantity"):
        comparators = ALL_PREFIXES
    if comparators:
        out["comparator"] = list(comparators)
    if "multipleOr" in sp:
        out["multipleOr"] = sp["multipleOr"]
    if "multipleAnd" in sp:
        out["multipleAnd"] = sp["multipleAnd"]
    if sp.get("chain"):
        out["chain"] = list(sp["chain"])
    return out


def check_against_package(source: Path, params: list[dict]) -> None:
    """The package's SearchParameter-*.json files must agree with the bundle for every core one."""
    tgz = source / "hl7.fhir.r4.core-4.0.1.tgz"
    if not tgz.exists():
        print(f"note: {tgz} not found, skipping the package cross-check", file=sys.stderr)
        return
    by_url = {p["url"]: p for p in params}
    seen = 0
    with tarfile.open(tgz) as tar:
        for member in tar.getmembers():
            if not member.name.startswith("package/SearchParameter-"):
                continue
            fh = tar.extractfile(member)
            if fh is None:
                continue
            res = json.load(fh)
            mine = by_url.get(res.get("url"))
            if mine is None:
                continue
            seen += 1
            if (mine["expression"], mine["type"], mine["base"]) != (
                res.get("expression"),
                res.get("type"),
                list(res.get("base", [])),
            ):
                raise SystemExit(f"package and bundle disagree on {res['url']}")
    if seen != len(params):
        print(f"note: {len(params) - seen} bundle parameters have no package file", file=sys.stderr)


def build(source: Path, out: Path) -> list[dict]:
    bundle = json.loads(gzip.decompress((source / "search-parameters.json.gz").read_bytes()))
    params = [compact(e["resource"]) for e in bundle["entry"] if e["resource"]["resourceType"] == "SearchParameter"]
    params.sort(key=lambda p: p["url"])
    check_against_package(source, params)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = json.dumps(params, separators=(",", ":"), sort_keys=True).encode()
    # mtime=0: the same input gives byte-identical output
    out.write_bytes(gzip.compress(payload, compresslevel=9, mtime=0))
    return params


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    params = build(args.source, args.out)
    types: dict[str, int] = {}
    for p in params:
        types[p["type"]] = types.get(p["type"], 0) + 1
    print(f"wrote {len(params)} search parameters to {args.out} ({args.out.stat().st_size} bytes): {types}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
