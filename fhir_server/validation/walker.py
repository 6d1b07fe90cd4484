"""Walk a parsed FHIR JSON resource against compiled TypeDefs and collect Issues.

Rules applied (R4 json.html, datatypes.html, resource.html, references.html, extensibility.html):
unknown elements, choice variants, ``_x`` primitive-extension siblings and their null alignment,
arrays vs single values, no empty strings / objects / arrays, cardinality, primitive formats,
required bindings, Reference format and targets, ext-1, ele-1, dom-2..5, ref-1.
"""

from __future__ import annotations

from typing import Any

from fhir_server.errors import Issue

from .model import (
    ARRAY,
    COMPLEX,
    POST_CODING,
    POST_EXTENSION,
    POST_REFERENCE,
    PRIM,
    PROHIBITED,
    RESOURCE,
    Elem,
    TypeDef,
)
from .rules import (
    Ctx,
    code_issue,
    coding_rule,
    concept_rule,
    contained_rules,
    err,
    extension_rule,
    finish_resource,
    reference_rule,
    unknown_issue,
)


class Walker:
    def __init__(
        self,
        resources: dict[str, TypeDef],
        resource_types: frozenset[str],
        extensions: dict[str, frozenset[str]] | None = None,
    ) -> None:
        self.resources = resources
        self.resource_types = resource_types
        self.extensions = extensions or {}

    # -- resources ---------------------------------------------------------------------------------
    def root(self, obj: Any, issues: list[Issue], td: TypeDef | None = None, path: str | None = None) -> None:
        if type(obj) is not dict:
            issues.append(err("structure", "a resource must be a JSON object", path or ""))
            return
        rt = obj.get("resourceType")
        if td is None:
            td = self._resource_td(rt, path or "", issues)
            if td is None:
                return
        path = path or rt
        ctx = Ctx(issues)
        self.walk(td, obj, path, ctx)
        finish_resource(ctx)

    def _resource_td(self, rt: Any, path: str, issues: list[Issue]) -> TypeDef | None:
        if rt is None:
            issues.append(
                err("required", "resourceType is missing", f"{path}.resourceType" if path else "resourceType")
            )
            return None
        td = self.resources.get(rt) if type(rt) is str else None
        if td is None:
            issues.append(err("structure", f"unknown resourceType {rt!r} (not an R4 resource type)", path or str(rt)))
        return td

    def _contained(self, obj: Any, path: str, ctx: Ctx) -> None:
        issues = ctx.issues
        if type(obj) is not dict:
            issues.append(err("structure", "a resource must be a JSON object", path))
            return
        if not obj:
            issues.append(err("structure", "empty object is not allowed", path))
            return
        td = self._resource_td(obj.get("resourceType"), path, issues)
        if td is None:
            return
        prev = ctx.current
        ctx.current = len(ctx.contained)
        cid = obj.get("id")
        ctx.contained.append((cid if type(cid) is str else None, path))
        self.walk(td, obj, path, ctx)
        ctx.current = prev
        contained_rules(obj, path, issues)

    # -- objects -----------------------------------------------------------------------------------
    def walk(self, td: TypeDef, obj: dict, path: str, ctx: Ctx) -> None:
        """Check every key of ``obj`` against ``td``, then cardinality and choice rules."""
        elements = td.elements
        issues = ctx.issues
        for key, val in obj.items():
            e = elements.get(key)
            if e is None:
                if key != "resourceType" or not td.is_resource:
                    issues.append(unknown_issue(td, key, path))
                continue
            code = e.code
            if code == 0:  # single primitive: the hot path
                rx = e.rx
                if rx is not None and type(val) is str and rx(val) is not None:
                    msg = None
                else:
                    msg = e.check(val)
                if msg is None:
                    if e.codes is not None:
                        if val not in e.codes:
                            issues.append(code_issue(e, val, f"{path}.{key}"))
                    elif e.hashref and val[0] == "#":
                        ctx.hash_refs.add(val)
                elif type(val) is list:
                    issues.append(err("structure", f"{key} must be a single value, not an array", f"{path}.{key}"))
                else:
                    issues.append(err("value", msg, f"{path}.{key}"))
            elif code == 1:  # single complex
                sub = e.td
                if type(val) is dict and val and sub is not None:
                    p = f"{path}.{key}"
                    self.walk(sub, val, p, ctx)
                    if sub.post:
                        self.post(sub.post, e, val, p, ctx)
                elif type(val) is list:
                    issues.append(err("structure", f"{key} must be a single value, not an array", f"{path}.{key}"))
                else:
                    self.complex(e, val, f"{path}.{key}", ctx)
            elif code >= ARRAY and code < PROHIBITED:
                name = e.prim.key if e.prim else key
                if type(val) is not list:
                    issues.append(
                        err("structure", f"{key} must be a JSON array (max is {e.max or '*'})", f"{path}.{name}")
                    )
                    continue
                if not val:
                    issues.append(err("structure", "empty array is not allowed", f"{path}.{name}"))
                    continue
                if e.max is not None and len(val) > e.max:
                    issues.append(err("structure", f"{len(val)} values, at most {e.max} allowed", f"{path}.{name}"))
                base = f"{path}.{name}"
                if code == ARRAY + COMPLEX:
                    for i, item in enumerate(val):
                        self.complex(e, item, f"{base}[{i}]", ctx)
                elif code == ARRAY + PRIM:
                    self._prim_array(e, val, obj, base, ctx)
                elif code == ARRAY + RESOURCE:
                    for i, item in enumerate(val):
                        if e.contained:
                            self._contained(item, f"{base}[{i}]", ctx)
                        else:
                            self.root(item, issues, None, f"{base}[{i}]")
                else:
                    self._ext_array(e, val, obj, base, ctx)
            elif code == PROHIBITED:
                issues.append(err("structure", f"{key} is not allowed here (max 0)", f"{path}.{key}"))
            elif type(val) is list:
                issues.append(
                    err(
                        "structure",
                        f"{key} must be a single value, not an array",
                        f"{path}.{e.prim.key if e.prim else key}",
                    )
                )
            elif code == RESOURCE:
                if e.contained:
                    self._contained(val, f"{path}.{key}", ctx)
                else:
                    self.root(val, issues, None, f"{path}.{key}")
            else:  # PRIMEXT: _x sibling of a single primitive
                self.complex(e, val, f"{path}.{e.prim.key}", ctx)
        for keys, name, mn in td.required:
            for k in keys:
                if k in obj:
                    if mn > 1 and type(obj[k]) is list and len(obj[k]) < mn:
                        issues.append(err("required", f"at least {mn} {name} required", f"{path}.{name}"))
                    break
            else:
                issues.append(err("required", f"missing required element {name!r}", f"{path}.{name}"))
        ck = td.choice_keys
        if ck is not None:
            found = [k for k in obj if k in ck]
            if len(found) > 1:
                names = [ck[k] for k in found]
                if len(set(names)) != len(names):
                    issues.append(
                        err(
                            "structure",
                            f"only one type allowed for a choice element, found {', '.join(found)}",
                            f"{path}.{found[-1]}",
                        )
                    )
        if len(obj) == 1 and "id" in obj and not td.is_resource:
            issues.append(err("invalid", "an element must have a value or children (ele-1)", path))

    def complex(self, e: Elem, val: Any, path: str, ctx: Ctx) -> None:
        """An object-valued element (datatype, backbone element, or the _x of a primitive)."""
        if type(val) is not dict:
            msg = "null is not allowed here" if val is None else f"{e.type} must be a JSON object"
            ctx.issues.append(err("structure", msg, path))
            return
        if not val:
            ctx.issues.append(err("structure", "empty object is not allowed", path))
            return
        td = e.td
        if td is None:
            return
        self.walk(td, val, path, ctx)
        if td.post:
            self.post(td.post, e, val, path, ctx)

    def post(self, post: int, e: Elem, val: dict, path: str, ctx: Ctx) -> None:
        """Type-specific rules after the generic walk: Reference, Extension (ext-1), bindings."""
        if post == POST_REFERENCE:
            reference_rule(e, val, path, ctx, self.resource_types)
        elif post == POST_EXTENSION:
            extension_rule(val, path, ctx, self.extensions)
        elif e.systems is not None:
            if post == POST_CODING:
                coding_rule(e, val, path, ctx)
            else:
                concept_rule(e, val, path, ctx)

    # -- helpers -----------------------------------------------------------------------------------
    def _prim_array(self, e: Elem, val: list, obj: dict, base: str, ctx: Ctx) -> None:
        issues = ctx.issues
        check, codes, rx = e.check, e.codes, e.rx
        for i, item in enumerate(val):
            if rx is not None and type(item) is str and rx(item) is not None:
                msg = None
            elif item is None:
                ext = obj.get("_" + e.key)
                if not (type(ext) is list and i < len(ext) and ext[i] is not None):
                    issues.append(
                        err("structure", "null is only allowed where _" + e.key + " has an entry", f"{base}[{i}]")
                    )
                continue
            else:
                msg = check(item)
            if msg is not None:
                issues.append(err("value", msg, f"{base}[{i}]"))
            elif codes is not None and item not in codes:
                issues.append(code_issue(e, item, f"{base}[{i}]"))
            elif e.hashref and item[0] == "#":
                ctx.hash_refs.add(item)

    def _ext_array(self, e: Elem, val: list, obj: dict, base: str, ctx: Ctx) -> None:
        prim = obj.get(e.prim.key)  # type: ignore[union-attr]
        if prim is not None and (type(prim) is not list or len(prim) != len(val)):
            ctx.issues.append(err("structure", f"_{e.prim.key} must align with {e.prim.key} (same length)", base))  # type: ignore[union-attr]
        for i, item in enumerate(val):
            if item is None:
                if not (type(prim) is list and i < len(prim) and prim[i] is not None):
                    ctx.issues.append(
                        err("structure", "null is only allowed where the value array has a value", f"{base}[{i}]")
                    )
                continue
            self.complex(e, item, f"{base}[{i}]", ctx)
