"""Rules beyond the element tables: resource-level invariants and type-specific checks.

resource.html / domainresource.html (dom-2, dom-3, dom-4, dom-5, contained id), references.html (ref-1),
extensibility.html (ext-1, core extension value types), terminologies.html (required bindings on
Coding / CodeableConcept), and the wording of unknown-element issues.
"""

from __future__ import annotations

from typing import Any

from fhir_server.errors import Issue

from .model import PRIMEXT, Elem, TypeDef
from .references import check_reference


class Ctx:
    """Per root resource: the bookkeeping for contained resources and local references."""

    __slots__ = ("contained", "current", "hash_refs", "issues", "local_refs", "refers_container")

    def __init__(self, issues: list[Issue]) -> None:
        self.issues = issues
        self.contained: list[tuple[str | None, str]] = []  # (id, path) of each contained resource
        self.local_refs: list[tuple[str, str]] = []  # ("#x", path)
        self.hash_refs: set[str] = set()  # every "#x" seen in Reference.reference / uri / canonical
        self.current = -1  # index of the contained resource being walked, -1 for the container
        self.refers_container: set[int] = set()


def err(code: str, msg: str, path: str) -> Issue:
    return Issue("error", code, msg, path)


def finish_resource(ctx: Ctx) -> None:
    """ref-1: every #local reference resolves; dom-3: every contained resource is referenced."""
    ids = {cid for cid, _ in ctx.contained if cid}
    for ref, path in ctx.local_refs:
        if ref != "#" and ref[1:] not in ids:
            ctx.issues.append(
                err("invariant", f"local reference {ref!r} has no contained resource with that id (ref-1)", path)
            )
    for i, (cid, path) in enumerate(ctx.contained):
        if cid and "#" + cid not in ctx.hash_refs and i not in ctx.refers_container:
            ctx.issues.append(
                err("invariant", f"contained resource {cid!r} is not referenced from the resource (dom-3)", path)
            )


def contained_rules(obj: dict, path: str, issues: list[Issue]) -> None:
    """dom-2, dom-4, dom-5 and the id of a contained resource."""
    if obj.get("id") is None:
        issues.append(err("required", "a contained resource must have an id", f"{path}.id"))
    if "contained" in obj:
        issues.append(err("invariant", "a contained resource must not contain resources (dom-2)", f"{path}.contained"))
    meta = obj.get("meta")
    if type(meta) is dict:
        for k in ("versionId", "lastUpdated"):
            if k in meta:
                msg = f"a contained resource must not have meta.{k} (dom-4)"
                issues.append(err("invariant", msg, f"{path}.meta.{k}"))
        if "security" in meta:
            msg = "a contained resource must not have meta.security (dom-5)"
            issues.append(err("invariant", msg, f"{path}.meta.security"))


def reference_rule(e: Elem, val: dict, path: str, ctx: Ctx, resource_types: frozenset[str]) -> None:
    ref = val.get("reference")
    if type(ref) is str and ref:
        if ref[0] == "#":
            ctx.local_refs.append((ref, path + ".reference"))
            ctx.hash_refs.add(ref)
            if ref == "#":
                ctx.refers_container.add(ctx.current)
        else:
            check_reference(ref, e.targets, path + ".reference", resource_types, ctx.issues)


def extension_rule(val: dict, path: str, ctx: Ctx, extensions: dict[str, frozenset[str]]) -> None:
    """ext-1, and the value[x] type of a core extension the server knows."""
    value_key = None
    for k in val:
        if k[:5] == "value" or k[:6] == "_value":
            value_key = k
            break
    if (value_key is not None) == ("extension" in val):
        if value_key:
            msg = "extension must have either a value[x] or nested extensions, not both (ext-1)"
        else:
            msg = "extension must have a value[x] or nested extensions (ext-1)"
        ctx.issues.append(err("invariant", msg, path))
    if value_key is not None:
        url = val.get("url")
        allowed = extensions.get(url) if type(url) is str else None
        key = value_key.lstrip("_")
        if allowed is not None and key not in allowed:
            shown = ", ".join(sorted(allowed)) or "none: it is a complex extension"
            ctx.issues.append(
                err("structure", f"extension {url} does not allow {key} (allowed: {shown})", f"{path}.{key}")
            )


def coding_rule(e: Elem, c: dict, path: str, ctx: Ctx) -> None:
    """A Coding in a system of a required value set must carry one of its codes."""
    system = c.get("system")
    if type(system) is not str:
        return
    codes = e.systems.get(system)  # type: ignore[union-attr]
    code = c.get("code")
    if codes is not None and type(code) is str and code not in codes:
        msg = f"code {code!r} is not in the required value set {e.valueset}"
        ctx.issues.append(err("code-invalid", msg, f"{path}.code"))


def concept_rule(e: Elem, val: dict, path: str, ctx: Ctx) -> None:
    codings = val.get("coding")
    if type(codings) is list:
        for i, c in enumerate(codings):
            if type(c) is dict:
                coding_rule(e, c, f"{path}.coding[{i}]", ctx)


def code_issue(e: Elem, val: Any, path: str) -> Issue:
    shown = "|".join(sorted(e.codes)) if e.codes and len(e.codes) <= 12 else f"the value set {e.valueset}"
    return err("code-invalid", f"{val!r} is not a valid code, expected one of {shown}", path)


def unknown_issue(td: TypeDef, key: str, path: str) -> Issue:
    if key.startswith("_") and key[1:] in td.elements:
        return err("structure", f"{key!r}: {key[1:]} is not a primitive element", f"{path}.{key}")
    choices: dict[str, list[str]] = {}
    for e in td.elements.values():
        if e.key != e.logical and e.kind != PRIMEXT:
            choices.setdefault(e.logical, []).append(e.key)
    for name, variants in choices.items():
        if key.startswith(name) and key[len(name) : len(name) + 1].isupper():
            msg = f"{key!r} is not an allowed type for {name}[x] (allowed: {', '.join(variants)})"
            return err("structure", msg, f"{path}.{key}")
    return err("structure", f"unknown element {key!r} in {td.name}", f"{path}.{key}")
