"""Build ``fhir_server/definitions/data/compartments.json.gz`` and ``operation-definitions.json.gz``
from the official R4 definitions.

* compartments: the five R4 CompartmentDefinitions (Patient, Encounter, RelatedPerson,
  Practitioner, Device; https://hl7.org/fhir/R4/compartmentdefinition.html), each as
  ``{"url": ..., "resources": {resource type: [search parameter codes]}}``, only the types that
  have parameters (a type without parameters is never in that compartment). ``{def}`` (the
  compartment's own resource) is kept as written.
* operation definitions: the 46 official OperationDefinitions as
  ``[{"code", "url", "resource", "system", "type", "instance"}]``, so the CapabilityStatement
  can name the canonical URL of every registered operation.

The server never reads ``/work/shared`` at run time: run this script after changing it and
commit the output (byte-reproducible: gzip mtime 0, sorted keys).

Usage: python tools/build_compartments.py [--source DIR] [--out-dir DIR]
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SOURCE = Path("/work/shared/data/fhir-r4")
DEFAULT_OUT = REPO / "fhir_server" / "definitions" / "data"


def _write(path: Path, data: object) -> None:
    raw = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    with open(path, "wb") as fh, gzip.GzipFile(fileobj=fh, mode="wb", mtime=0, filename="") as gz:
        gz.write(raw)
    print(f"wrote {path} ({path.stat().st_size} bytes)")


def build(source: Path, out_dir: Path) -> None:
    with gzip.open(source / "profiles-resources.json.gz", "rb") as fh:
        bundle = json.loads(fh.read())
    resources = [e["resource"] for e in bundle["entry"]]

    compartments: dict[str, dict[str, object]] = {}
    for cd in (r for r in resources if r["resourceType"] == "CompartmentDefinition"):
        compartments[cd["code"]] = {
            "url": cd["url"],
            "resources": {x["code"]: list(x["param"]) for x in cd.get("resource", []) if x.get("param")},
        }
    # the standalone Patient file is the same definition; check that it agrees
    standalone = json.loads((source / "compartmentdefinition-patient.json").read_text())
    expected = {x["code"]: list(x["param"]) for x in standalone["resource"] if x.get("param")}
    if compartments["Patient"]["resources"] != expected:
        raise SystemExit("compartmentdefinition-patient.json differs from profiles-resources.json.gz")
    _write(out_dir / "compartments.json.gz", compartments)

    operations = [
        {
            "code": od["code"],
            "url": od["url"],
            "resource": list(od.get("resource", [])),
            "system": bool(od.get("system")),
            "type": bool(od.get("type")),
            "instance": bool(od.get("instance")),
        }
        for od in resources
        if od["resourceType"] == "OperationDefinition"
    ]
    operations.sort(key=lambda o: o["url"])
    _write(out_dir / "operation-definitions.json.gz", operations)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    build(args.source, args.out_dir)


if __name__ == "__main__":
    main()
