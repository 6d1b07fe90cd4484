"""Parsing reference strings for the index (R4 references.html#literal, search.html#reference).

``parse_reference("Patient/1/_history/2")`` -> ``("Patient", "1", "2", None)``;
``parse_reference("http://x.org/fhir/Patient/1")`` -> ``("Patient", "1", None, "http://x.org/fhir/Patient/1")``;
``parse_canonical("http://hl7.org/fhir/ValueSet/x|4.0.1")`` -> ``("ValueSet", "x", "4.0.1", "http://hl7.org/fhir/ValueSet/x")``:
a canonical always keeps its url (that is what canonical search matches), type and id when it
ends in ``Type/id``.
Local ``#contained`` references give ``None``: they are not indexed.
"""

from __future__ import annotations

import re

from fhir_server.definitions.resource_types import RESOURCE_TYPES

RefParts = tuple[str | None, str | None, str | None, str | None]  # type, id, version, url

_ID = r"[A-Za-z0-9\-.]{1,64}"
_RELATIVE_RE = re.compile(rf"^(?P<type>[A-Z][A-Za-z]+)/(?P<id>{_ID})(?:/_history/(?P<vid>{_ID}))?$")
_TAIL_RE = re.compile(rf"/(?P<type>[A-Z][A-Za-z]+)/(?P<id>{_ID})(?:/_history/(?P<vid>{_ID}))?$")


def is_absolute(ref: str) -> bool:
    return "://" in ref or ref.startswith(("urn:", "mailto:"))


def parse_reference(ref: str) -> RefParts | None:
    if not ref or ref.startswith("#"):
        return None
    if is_absolute(ref):
        m = _TAIL_RE.search(ref)
        if m and m["type"] in RESOURCE_TYPES:
            url = ref[: m.start()] + f"/{m['type']}/{m['id']}"
            return m["type"], m["id"], m["vid"], url
        return None, None, None, ref
    m = _RELATIVE_RE.match(ref)
    if m and m["type"] in RESOURCE_TYPES:
        return m["type"], m["id"], m["vid"], None
    return None, None, None, ref


def parse_canonical(value: str) -> RefParts | None:
    if not value or value.startswith("#"):
        return None
    url, _, version = value.partition("|")
    m = _TAIL_RE.search(url) if is_absolute(url) else _RELATIVE_RE.match(url)
    if m and m["type"] in RESOURCE_TYPES and not m["vid"]:
        return m["type"], m["id"], version or None, url
    return None, None, version or None, url


def reference_type(ref: object) -> str | None:
    """The resource type a Reference points at, for ``resolve() is X``: from ``reference``, else ``type``."""
    if not isinstance(ref, dict):
        return None
    literal = ref.get("reference")
    if isinstance(literal, str):
        parts = parse_reference(literal)
        if parts and parts[0]:
            return parts[0]
    declared = ref.get("type")
    if isinstance(declared, str) and declared:
        name = declared.rsplit("/", 1)[-1]
        return name if name in RESOURCE_TYPES else None
    return None
