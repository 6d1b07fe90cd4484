"""Checking a resource against project profiles (profiling.html, extensibility.html).

``profile_issues(resource, urls)`` = the R4 validator with the profile compiled in (cardinality,
types, core required bindings: ``fhir_server.validation``) + what it does not do, read from the
profile (``rules.py``): extension slices by url (min/max, ``max = 0`` forbids), the extension's value
type and binding to the packaged ValueSets, fixed values, and the small per-extension rules of
``extra.py`` (homeopathic potency per scale). Expressions name the element
(``Medication.extension[2].valueCode``); diagnostics name the extension url and slice.
"""

from __future__ import annotations

import threading
from typing import Any

import terminology
from fhir_server.errors import Issue

from .catalog import BASE, catalog
from .extra import EXTENSION_RULES, RESOURCE_RULES
from .rules import ExtensionDef, ProfileRules, extension_def, profile_rules

_SD_PREFIX = BASE + "StructureDefinition/"


class _Compiled:
    def __init__(self) -> None:
        from fhir_server.validation import default_validator

        self.validator = validator = default_validator()  # the profiles are compiled into it
        self.extensions: dict[str, ExtensionDef] = {}
        self.profiles: dict[str, ProfileRules] = {}
        for sd in catalog().structure_definitions():
            try:
                if sd.get("type") == "Extension":
                    self.extensions[sd["url"]] = extension_def(sd)
                elif sd.get("kind") == "resource" and sd.get("derivation") == "constraint":
                    validator.add_structure_definition(sd)  # cardinality, types, core bindings
                    self.profiles[sd["url"]] = profile_rules(sd)
            except (KeyError, ValueError, TypeError):  # a broken definition must not stop the others
                continue


_compiled: _Compiled | None = None
_lock = threading.Lock()


def compiled() -> _Compiled:
    global _compiled
    if _compiled is None:
        with _lock:
            if _compiled is None:
                _compiled = _Compiled()
    return _compiled


def is_project_profile(url: str) -> bool:
    return url.startswith(_SD_PREFIX)


def claimed_profiles(resource: dict[str, Any]) -> list[str]:
    """The known project profiles ``resource.meta.profile`` claims (version suffix dropped)."""
    meta = resource.get("meta")
    if type(meta) is not dict or not meta.get("profile"):
        return []
    profiles = meta["profile"]
    if type(profiles) is not list:
        return []
    known = compiled().profiles
    return [u for p in profiles if type(p) is str and (u := p.split("|")[0]) in known]


def profile_issues(resource: dict[str, Any], urls: list[str], *, base: bool = True) -> list[Issue]:
    """R4 issues plus those of each profile in ``urls`` (an unknown url is a ``not-found`` error).
    ``base=False``: the profiles' issues only (a write path that has just validated base R4)."""
    c = compiled()
    issues = c.validator.validate(resource, urls, base=base)
    for url in urls:
        rules = c.profiles.get(url.split("|")[0])
        if rules is not None and resource.get("resourceType") == rules.type:
            issues += _check(resource, rules, c.extensions)
    return issues


# -- the checks -------------------------------------------------------------------------------------
def _codes(valueset: str) -> frozenset[tuple[str, str]] | None:
    return terminology.expand(valueset)


def _coding_issues(coding: Any, where: str, vs_codes: frozenset[tuple[str, str]] | None, required: bool) -> list[Issue]:
    """A Coding of a project code system must use one of its codes; under a required binding it must be in the value set."""
    if type(coding) is not dict:
        return []
    system, code = coding.get("system"), coding.get("code")
    if vs_codes is not None and system in {s for s, _ in vs_codes}:
        if (system, code) not in vs_codes:
            return [Issue("error", "code-invalid", f"'{code}' is not a code of {system}", f"{where}.code")]
        return []
    if required and vs_codes is not None:
        return [Issue("error", "code-invalid", f"the coding is not from the required value set ({system or 'no system'})", where)]
    return []


def _concept_issues(value: Any, where: str, valueset: str | None, required: bool) -> list[Issue]:
    vs_codes = _codes(valueset) if valueset else None
    if type(value) is not dict:
        return []
    codings = value.get("coding") or []
    out: list[Issue] = []
    in_vs = False
    for i, coding in enumerate(codings):
        bad = _coding_issues(coding, f"{where}.coding[{i}]", vs_codes, False)
        out += bad
        if not bad and vs_codes is not None and type(coding) is dict and (coding.get("system"), coding.get("code")) in vs_codes:
            in_vs = True
    if required and vs_codes is not None and not in_vs and not out:
        out.append(Issue("error", "code-invalid", f"a coding from {valueset} is required", where))
    return out


def _value_issues(ext: dict[str, Any], where: str, d: ExtensionDef) -> list[Issue]:
    keys = [k for k in ext if k.startswith("value")]
    if d.value_keys and (len(keys) != 1 or keys[0] not in d.value_keys):
        want = " or ".join(sorted(d.value_keys))
        return [Issue("error", "structure", f"the extension {d.url} ({d.name}) needs {want}", where)]
    if not keys:
        return []
    key = keys[0]
    value = ext[key]
    at = f"{where}.{key}"
    required = d.strength == "required"
    if d.valueset and key == "valueCode":
        vs_codes = _codes(d.valueset)
        if vs_codes is not None and value not in {c for _, c in vs_codes}:
            return [Issue("error", "code-invalid", f"'{value}' is not in {d.valueset} (extension {d.name})", at)]
    elif key == "valueCoding":
        return _coding_issues(value, at, _codes(d.valueset) if d.valueset else None, required)
    elif key == "valueCodeableConcept":
        return _concept_issues(value, at, d.valueset, required)
    rule = EXTENSION_RULES.get(d.url)
    return rule(value, at) if rule else []


def _walk(node: Any, path: list[str], where: str) -> list[tuple[Any, str]]:
    if not path:
        return [(node, where)]
    if type(node) is not dict or path[0] not in node:
        return []
    child, out = node[path[0]], []
    if type(child) is list:
        for i, item in enumerate(child):
            out += _walk(item, path[1:], f"{where}.{path[0]}[{i}]")
    else:
        out += _walk(child, path[1:], f"{where}.{path[0]}")
    return out


def _check(resource: dict[str, Any], rules: ProfileRules, extensions: dict[str, ExtensionDef]) -> list[Issue]:
    rt = rules.type
    out: list[Issue] = []
    counts: dict[str, list[int]] = {}
    exts = resource.get("extension")
    for i, ext in enumerate(exts if type(exts) is list else ()):
        if type(ext) is not dict or type(ext.get("url")) is not str:
            continue  # the R4 validator reports it
        url, where = ext["url"], f"{rt}.extension[{i}]"
        d = extensions.get(url)
        if d is None:
            if url.startswith(BASE):
                out.append(Issue("error", "structure", f"unknown project extension {url}", where))
            continue
        s = rules.slices.get(url)
        if s is not None:
            counts.setdefault(url, []).append(i)
            if s.max == 0:
                out.append(Issue(
                    "error", "structure",
                    f"the extension {url} ({s.name}) is not allowed in profile {rules.name} ({rules.url})", where,
                ))
                continue
            for key, want in s.fixed.items():
                if key in ext and ext[key] != want:
                    out.append(Issue(
                        "error", "value", f"{s.name} must be '{want}' in profile {rules.name}, not '{ext[key]}'",
                        f"{where}.{key}",
                    ))
        out += _value_issues(ext, where, d)
    for url, s in rules.slices.items():
        n = len(counts.get(url, ()))
        if n < s.min:
            out.append(Issue(
                "error", "required",
                f"profile {rules.name} requires the extension {url} ({s.name}) at least {s.min} time(s)",
                f"{rt}.extension",
            ))
        if s.max and n > s.max:
            for i in counts[url][s.max:]:
                out.append(Issue(
                    "error", "structure", f"the extension {url} ({s.name}) may appear at most {s.max} time(s)",
                    f"{rt}.extension[{i}]",
                ))
    for rule in rules.paths:
        for value, where in _walk(resource, rule.path, rt):
            if rule.fixed is not None and value != rule.fixed[1]:
                out.append(Issue("error", "value", f"must be '{rule.fixed[1]}' in profile {rules.name}", where))
            if rule.valueset:
                if type(value) is str:
                    codes = _codes(rule.valueset) or frozenset()
                    if value not in {c for _, c in codes}:
                        out.append(Issue("error", "code-invalid", f"'{value}' is not in {rule.valueset}", where))
                else:
                    out += _concept_issues(value, where, rule.valueset, True)
    for rule in RESOURCE_RULES.get(rules.url, ()):
        out += rule(resource, rules)
    return out
