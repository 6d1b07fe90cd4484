"""The server's terminology: packaged code systems and value sets, ValueSet expansion, is-a
hierarchies. Pure Python, no database; see README.md.

    >>> import terminology
    >>> ("http://hl7.org/fhir/administrative-gender", "male") in terminology.expand(
    ...     "http://hl7.org/fhir/ValueSet/administrative-gender")
    True

``packaged()`` is the shared ``Terminology`` (loaded on first use from ``data/terminology.json.gz``,
built by ``tools/build_terminology.py``, and the project's own ``codesystems/*.json`` and
``valuesets/*.json``); ``stored(fetch)`` adds one tenant's stored CodeSystems and ValueSets.
"""

from __future__ import annotations

import gzip
import json
from functools import cache
from pathlib import Path
from typing import Any

from terminology.errors import (
    NotExpandable,
    TerminologyError,
    UnknownCode,
    UnknownHierarchy,
    UnknownValueSet,
    Unresolved,
)
from terminology.expand import Terminology
from terminology.model import (
    CodeSystemData,
    Coding,
    ValueSetData,
    codesystem_from_resource,
    valueset_from_resource,
)
from terminology.stored import Fetch, StoredTerminology

__all__ = [
    "Coding",
    "Fetch",
    "NotExpandable",
    "StoredTerminology",
    "Terminology",
    "TerminologyError",
    "UnknownCode",
    "UnknownHierarchy",
    "UnknownValueSet",
    "Unresolved",
    "ancestors",
    "descendants",
    "expand",
    "packaged",
    "stored",
]

HERE = Path(__file__).resolve().parent
DATA_FILE = HERE / "data" / "terminology.json.gz"
# the project's own definitions (CodeSystem, ValueSet, or a Bundle of them), one file each;
# they take precedence over the R4 definitions with the same URL
LOCAL_DIRS = (HERE / "codesystems", HERE / "valuesets")


def _local_resources() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for d in LOCAL_DIRS:
        for path in sorted(d.glob("*.json")):
            res = json.loads(path.read_text(encoding="utf-8"))
            if res.get("resourceType") == "Bundle":
                out += [e["resource"] for e in res.get("entry", ()) if "resource" in e]
            else:
                out.append(res)
    return out


@cache
def packaged() -> Terminology:
    with gzip.open(DATA_FILE, "rt", encoding="utf-8") as fh:
        data = json.load(fh)
    local = _local_resources()
    codesystems = [codesystem_from_resource(r) for r in local if r.get("resourceType") == "CodeSystem"]
    valuesets = [valueset_from_resource(r) for r in local if r.get("resourceType") == "ValueSet"]
    codesystems += [CodeSystemData.from_compact(d) for d in data["codesystems"]]
    valuesets += [ValueSetData.from_compact(d) for d in data["valuesets"]]
    return Terminology(codesystems, valuesets)


def stored(fetch: Fetch) -> StoredTerminology:
    """The packaged terminology plus what ``fetch`` finds among a tenant's stored resources."""
    return StoredTerminology(fetch, packaged())


def expand(url: str, version: str | None = None) -> frozenset[Coding] | None:
    """The packaged value set's ``(system, code)`` pairs; ``None`` when it cannot be expanded here."""
    try:
        return packaged().expand(url, version)
    except TerminologyError:
        return None


def descendants(system: str, code: str) -> frozenset[str] | None:
    """``code`` and the codes below it (is-a) in a packaged code system; ``None`` if unknown."""
    try:
        return packaged().descendants(system, code)
    except TerminologyError:
        return None


def ancestors(system: str, code: str) -> frozenset[str] | None:
    """``code`` and the codes above it (is-a) in a packaged code system; ``None`` if unknown."""
    try:
        return packaged().ancestors(system, code)
    except TerminologyError:
        return None
