"""Is a search parameter's element single-valued for a resource type?

A resource has at most one index row for a parameter whose expression, for that type, is a plain
path of elements that all have max cardinality 1 (``Patient.birthDate``). Several criteria on such a
parameter (``birthdate=ge1990-01-01&birthdate=lt1990-02-01``) then hold for the resource exactly
when one row satisfies them all, so the compiler may test them in ONE ``EXISTS`` — one index range
scan instead of a join of two half-open ranges (bench/README.md "Search at scale": the birthdate
range). Anything else (choices, arrays, ``where()``, ``|`` with two paths for the type) is "no".
Cardinalities come from the R4 StructureDefinitions the validator loads.
"""

from __future__ import annotations

import re
from functools import cache

from fhir_server.validation import default_validator

__all__ = ["single_valued"]

_PATH = re.compile(r"[A-Za-z]+(?:\.[a-z][A-Za-z0-9]*)+")


@cache
def single_valued(resource_type: str, expression: str | None) -> bool:
    if not expression:
        return False
    mine = [p.strip() for p in expression.split("|") if p.strip().startswith(resource_type + ".")]
    if len(mine) != 1 or not _PATH.fullmatch(mine[0]):
        return False
    types = default_validator().types
    td = types.get(resource_type)
    for step in mine[0].split(".")[1:]:
        elem = td.elements.get(step) if td is not None else None
        if elem is None or elem.is_array or elem.max != 1:
            return False
        td = elem.td if elem.td is not None else types.get(elem.type)
    return True
