"""Reference.reference format and target type (https://hl7.org/fhir/R4/references.html).

Accepted forms of a literal reference:
  * relative ``Type/id`` and ``Type/id/_history/vid`` (Type a known R4 resource type, id an ``id``);
  * absolute ``http(s)://base/Type/id[/_history/vid]`` (the type is checked when the URL ends so),
    and any other absolute URL (not a FHIR RESTful one: nothing to check);
  * ``#id`` (a contained resource: checked against ``contained`` by the walker, ref-1), ``#``
    (the container, from inside a contained resource);
  * ``urn:uuid:<uuid>``, ``urn:oid:<oid>`` (bundle-internal, http.html#transaction);
  * a conditional reference ``Type?search`` (transactions, http.html#trules).
"""

from __future__ import annotations

import re

from fhir_server.errors import Issue

_ID = r"[A-Za-z0-9\-\.]{1,64}"
_RELATIVE = re.compile(rf"([A-Z][A-Za-z]+)/({_ID})(?:/_history/({_ID}))?")
_ABSOLUTE_TAIL = re.compile(rf"/([A-Z][A-Za-z]+)/({_ID})(?:/_history/({_ID}))?")
_HTTP = re.compile(r"https?://[^\s/]+(/\S*)?")
_URN_UUID = re.compile(r"urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_URN_OID = re.compile(r"urn:oid:[0-2](\.(0|[1-9][0-9]*))+")
_CONDITIONAL = re.compile(r"([A-Z][A-Za-z]+)\?\S+")
_OTHER_ABSOLUTE = re.compile(r"[a-zA-Z][a-zA-Z0-9+.\-]*:\S+")


def _target_issue(rtype: str, targets: frozenset[str], path: str) -> Issue:
    allowed = "|".join(sorted(targets))
    return Issue("error", "invalid", f"reference to a {rtype}, but this element may only refer to {allowed}", path)


def _check_type(
    ref: str, rtype: str, targets: frozenset[str] | None, path: str, resource_types: frozenset[str], issues: list[Issue]
) -> None:
    """The type named by a relative or conditional reference must exist and be an allowed target."""
    if rtype not in resource_types:
        issues.append(Issue("error", "value", f"reference {ref!r}: {rtype!r} is not an R4 resource type", path))
    elif targets is not None and rtype not in targets:
        issues.append(_target_issue(rtype, targets, path))


def check_reference(
    ref: str, targets: frozenset[str] | None, path: str, resource_types: frozenset[str], issues: list[Issue]
) -> None:
    """Append issues for a non-local reference string (local ``#...`` ones are handled by the caller)."""
    m = _RELATIVE.fullmatch(ref)
    if m is not None:
        _check_type(ref, m.group(1), targets, path, resource_types, issues)
        return
    if ref.startswith(("http://", "https://")):
        if not _HTTP.fullmatch(ref):
            issues.append(Issue("error", "value", f"reference {ref!r} is not a valid URL", path))
            return
        t = _ABSOLUTE_TAIL.search(ref)
        rtype = t.group(1) if t is not None and t.end() == len(ref) else None
        if targets is not None and rtype in resource_types and rtype not in targets:
            issues.append(_target_issue(rtype, targets, path))  # type: ignore[arg-type]
        return
    if ref.startswith("urn:uuid:"):
        if not _URN_UUID.fullmatch(ref):
            issues.append(Issue("error", "value", f"reference {ref!r} is not a valid urn:uuid", path))
        return
    if ref.startswith("urn:oid:"):
        if not _URN_OID.fullmatch(ref):
            issues.append(Issue("error", "value", f"reference {ref!r} is not a valid urn:oid", path))
        return
    m = _CONDITIONAL.fullmatch(ref)
    if m is not None:
        _check_type(ref, m.group(1), targets, path, resource_types, issues)
        return
    if _OTHER_ABSOLUTE.fullmatch(ref) and not ref[0].isupper():
        return  # another absolute URI scheme (urn:..., mailto:...)
    issues.append(
        Issue(
            "error",
            "value",
            f"reference {ref!r} is not a valid reference (Type/id, absolute URL, #id, urn:uuid:, urn:oid:)",
            path,
        )
    )
