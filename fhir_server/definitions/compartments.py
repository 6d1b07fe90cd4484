"""The R4 CompartmentDefinitions and the official OperationDefinition index, packaged by
``tools/build_compartments.py`` (https://hl7.org/fhir/R4/compartmentdefinition.html)."""

from __future__ import annotations

import gzip
import json
from functools import cache
from pathlib import Path
from typing import Any

DATA_DIR = Path(__file__).resolve().parent / "data"

__all__ = ["Compartment", "compartment", "official_operation_url"]


class Compartment:
    """One compartment: for each resource type, the search parameters that put a resource of
    that type in the compartment of the resource they reference."""

    def __init__(self, code: str, url: str, params: dict[str, tuple[str, ...]]) -> None:
        self.code = code
        self.url = url
        self.params = params

    def links(self) -> tuple[list[str], list[str]]:
        """``(types, params)`` as two aligned arrays (one pair per link), ``{def}`` left out."""
        pairs = [(t, p) for t, ps in sorted(self.params.items()) for p in ps if p != "{def}"]
        return [t for t, _ in pairs], [p for _, p in pairs]


def _load(name: str) -> Any:
    with gzip.open(DATA_DIR / name, "rb") as fh:
        return json.loads(fh.read())


@cache
def _compartments() -> dict[str, Compartment]:
    return {
        code: Compartment(code, c["url"], {t: tuple(ps) for t, ps in c["resources"].items()})
        for code, c in _load("compartments.json.gz").items()
    }


def compartment(code: str) -> Compartment:
    """``Patient``, ``Encounter``, ``RelatedPerson``, ``Practitioner`` or ``Device``."""
    return _compartments()[code]


@cache
def _operations() -> list[dict[str, Any]]:
    return list(_load("operation-definitions.json.gz"))


def official_operation_url(code: str, resource_type: str | None) -> str | None:
    """The canonical URL of the official R4 OperationDefinition for ``$code`` on ``resource_type``
    (None: system level), preferring one defined for that type over a ``Resource``-wide one."""
    best: str | None = None
    for od in _operations():
        if od["code"] != code:
            continue
        if resource_type is None:
            if od["system"]:
                return str(od["url"])
        elif resource_type in od["resource"]:
            return str(od["url"])
        elif "Resource" in od["resource"] and best is None:
            best = str(od["url"])
    return best
