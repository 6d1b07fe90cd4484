"""Index rows for one resource, computed on every write (R4 search.html, "search parameter types").

``extract_index_rows(resource)`` evaluates every SearchParameter that applies to the resource's
type and turns what each expression selects into rows for the ``idx_*`` tables (see ``rows``).
Not indexed here: ``_id`` and ``_lastUpdated`` (columns of the ``resource`` table), ``_query``,
special parameters and the composite parameters ``composite`` does not support. ``_text`` and
``_content`` (no expression) get one full-text document each (``rows.text_rows``, ``idx_text``).

Each parameter's expression is narrowed to the resource type and compiled once per type, by the
FHIRPath translator (``fhirpath_compiler``) or, for anything it cannot translate, by ``fhirpathpy``
(``fhirpath_fallback``). ``ENGINE`` picks the default; ``bench/bench_extract.py`` compares them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fhir_server.search import composite, fhirpath_compiler, fhirpath_fallback
from fhir_server.search.expressions import expression_for_type
from fhir_server.search.fhirpath_model import get_model
from fhir_server.search.fhirpath_parser import FhirPathSyntaxError
from fhir_server.search.registry import SearchParamRegistry, get_registry
from fhir_server.search.rows import CONVERTERS, IndexRows, text_rows

__all__ = ["ENGINE", "IndexRows", "extract_index_rows", "plan_for_type"]

log = logging.getLogger(__name__)

ENGINE = "compiled"  # "compiled" (translator, fhirpathpy fallback) | "fhirpathpy"
NOT_INDEXED = frozenset({"_id", "_lastUpdated"})

Extractor = Callable[[dict], list[tuple[Any, str]]]
Plan = list[tuple[str, Callable[..., None], Extractor]]  # (param code, converter, extractor)

_plans: dict[tuple[str, str], Plan] = {}


def _compile(expression: str, resource_type: str, engine: str) -> Extractor:
    if engine == "compiled":
        try:
            return fhirpath_compiler.compile_expression(expression, resource_type)
        except (fhirpath_compiler.Unsupported, FhirPathSyntaxError) as exc:
            log.info("search expression %r for %s falls back to fhirpathpy: %s", expression, resource_type, exc)
    return fhirpath_fallback.compile_expression(expression, resource_type)


def plan_for_type(resource_type: str, engine: str = ENGINE, registry: SearchParamRegistry | None = None) -> Plan:
    """The compiled (code, converter, extractor) list for one resource type, built once per
    registry (the core one, or a tenant's overlay from ``custom``)."""
    key = (resource_type, engine)
    cache = _plans if registry is None else registry.plans
    plan = cache.get(key)
    if plan is not None:
        return plan
    registry = registry or get_registry()
    type_names = frozenset(get_model().parents)
    plan = []
    for code, sp in sorted(registry.for_type(resource_type).items()):
        converter = CONVERTERS.get(sp.type) if sp.type != "composite" else composite.converter(sp, registry)
        if converter is None or code in NOT_INDEXED:
            continue
        expression = expression_for_type(sp.expression, resource_type, type_names)
        if expression is None:
            continue
        plan.append((code, converter, _compile(expression, resource_type, engine)))
    cache[key] = plan
    return plan


def extract_index_rows(resource: dict, engine: str = ENGINE, registry: SearchParamRegistry | None = None) -> IndexRows:
    """The index rows of ``resource`` for the parameters of ``registry`` (default: the core R4 ones;
    a tenant's overlay adds its own SearchParameters, ``custom.tenant_registry``)."""
    rows = IndexRows()
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str):
        return rows
    for code, converter, extractor in plan_for_type(rtype, engine, registry):
        try:
            items = extractor(resource)
        except Exception:
            log.warning("search parameter %s.%s could not be evaluated", rtype, code, exc_info=True)
            continue
        if items:
            converter(code, items, rows)
    text_rows(resource, rows)
    return rows.finish()
