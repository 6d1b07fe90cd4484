"""Roles → allowed resource types × interactions × operations, intersected with SMART scopes.

The defaults ship as data (``roles.json`` next to this module); a tenant overrides them per role
and type (``role_permission`` rows, ``fhir_server.auth.role_overrides``). A request's effective
permission is ``role permission ∩ scope permission`` (``Permission``). Nothing here knows HTTP: the
request glue (which interaction a path is, 403s) is ``fhir_server.api.access``.

Vocabulary
* interactions: ``read vread search history create update patch delete`` (R4 http.html);
* operations: names without ``$`` (``everything``, ``validate``, ``meta-add``, ``export``,
  ``reindex``, ``finalize``…), granted by name or ``fnmatch`` pattern (``meta*``, ``*``).
  A rule whose types are ``*`` also grants its operations at system level (``[base]/$op``).
  A read-only operation (registered ``affects_state=False``) on a type or instance needs only
  ``read`` on that type, unless it matches ``explicit_operations`` (bulk export, reindex); every
  other operation needs a grant. With scopes, a read-only operation needs ``r`` on the type, a
  state-changing one ``u`` (system level: on ``*``).

Override precedence for one (role, type, interaction or operation), first that speaks wins:
deny on the type, grant on the type, deny on ``*``, grant on ``*``, the shipped defaults.
An unknown role has no defaults: it may do only what a tenant granted it (a custom role).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from functools import lru_cache
from pathlib import Path
from typing import Any

from fhir_server.auth.scopes import ScopeSet, letter_of
from fhir_server.definitions.resource_types import RESOURCE_TYPES

__all__ = [
    "INTERACTIONS",
    "Defaults",
    "Override",
    "Permission",
    "RolePolicy",
    "Rule",
    "defaults",
    "role_interaction",
]

INTERACTIONS = ("read", "vread", "search", "history", "create", "update", "patch", "delete")
_ALL_TYPES = tuple(sorted(RESOURCE_TYPES))
# the finer names api.access uses (SMART tells instance history from wider history) → the role's word
_ROLE_WORD = {
    "history-instance": "history", "history-type": "history", "history-system": "history",
    "search-type": "search", "search-system": "search",
}


def role_interaction(interaction: str) -> str:
    return _ROLE_WORD.get(interaction, interaction)


@dataclass(frozen=True, slots=True)
class Rule:
    types: frozenset[str] | None  # None: every type (``*``)
    interactions: frozenset[str]
    operations: tuple[str, ...]  # names or fnmatch patterns


@dataclass(frozen=True, slots=True)
class Override:
    """One ``role_permission`` row: a tenant's grant or deny for a role on a type (or ``*``)."""

    role: str
    resource_type: str  # an R4 type or "*"
    effect: str  # grant | deny
    interactions: frozenset[str]
    operations: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Defaults:
    roles: dict[str, tuple[Rule, ...]]
    descriptions: dict[str, str]
    explicit_operations: tuple[str, ...]


def _expand_interactions(values: Iterable[str], sets: dict[str, list[str]], where: str) -> frozenset[str]:
    out: set[str] = set()
    for v in values:
        if v == "*":
            out.update(INTERACTIONS)
        elif v.startswith("@"):
            if v[1:] not in sets:
                raise ValueError(f"{where}: unknown interaction set {v}")
            out.update(sets[v[1:]])
        elif v in INTERACTIONS:
            out.add(v)
        else:
            raise ValueError(f"{where}: unknown interaction {v!r}")
    return frozenset(out)


def _expand_types(values: Iterable[str], groups: dict[str, list[str]], where: str) -> frozenset[str] | None:
    out: set[str] = set()
    for v in values:
        if v == "*":
            return None
        names = groups.get(v[1:]) if v.startswith("@") else [v]
        if names is None:
            raise ValueError(f"{where}: unknown group {v}")
        for name in names:
            if name not in RESOURCE_TYPES:
                raise ValueError(f"{where}: {name!r} is not an R4 resource type")
        out.update(names)
    return frozenset(out)


def load_defaults(data: dict[str, Any]) -> Defaults:
    sets = data.get("interaction_sets", {})
    groups = data.get("groups", {})
    roles: dict[str, tuple[Rule, ...]] = {}
    descriptions: dict[str, str] = {}
    for role, spec in data["roles"].items():
        rules = []
        for n, r in enumerate(spec["rules"]):
            where = f"roles.{role}.rules[{n}]"
            rules.append(Rule(
                _expand_types(r["types"], groups, where),
                _expand_interactions(r.get("interactions", []), sets, where),
                tuple(r.get("operations", [])),
            ))
        roles[role] = tuple(rules)
        descriptions[role] = spec.get("description", "")
    return Defaults(roles, descriptions, tuple(data.get("explicit_operations", [])))


@lru_cache(maxsize=1)
def defaults() -> Defaults:
    """The shipped defaults (``roles.json``), checked once: unknown types or interactions fail loudly."""
    return load_defaults(json.loads((Path(__file__).parent / "roles.json").read_text()))


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(p == name or fnmatchcase(name, p) for p in patterns)


class RolePolicy:
    """One role's permissions in one tenant: defaults with the tenant's overrides applied."""

    def __init__(self, role: str, rules: Iterable[Rule], overrides: Iterable[Override], explicit_ops: tuple[str, ...]) -> None:
        self.role = role
        self.rules = tuple(rules)
        self.overrides = {(o.resource_type, o.effect): o for o in overrides if o.role == role}
        self.explicit_ops = explicit_ops
        by_type: dict[str, frozenset[str]] = {}
        star_deny = self._ov("*", "deny")
        star_grant = self._ov("*", "grant")
        for t in _ALL_TYPES:
            base: set[str] = set()
            for rule in self.rules:
                if rule.types is None or t in rule.types:
                    base |= rule.interactions
            t_deny, t_grant = self._ov(t, "deny"), self._ov(t, "grant")
            allowed = set()
            for i in INTERACTIONS:
                if i in t_deny.interactions:
                    continue
                if i in t_grant.interactions or (i not in star_deny.interactions and (i in star_grant.interactions or i in base)):
                    allowed.add(i)
            by_type[t] = frozenset(allowed)
        self.by_type = by_type
        self.every_type = {i: all(i in by_type[t] for t in _ALL_TYPES) for i in INTERACTIONS}
        self.readable = frozenset(t for t in _ALL_TYPES if "read" in by_type[t])
        self._ops: dict[tuple[str, str | None], bool | None] = {}
        self._readable_memo: dict[str, frozenset[str]] = {}

    def _ov(self, rtype: str, effect: str) -> Override:
        return self.overrides.get((rtype, effect)) or Override(self.role, rtype, effect, frozenset(), ())

    def may(self, interaction: str, resource_type: str | None) -> bool:
        """``interaction`` (a role word) on ``resource_type``; None: on every type."""
        if resource_type is None:
            return self.every_type.get(interaction, False)
        allowed = self.by_type.get(resource_type)
        return allowed is not None and interaction in allowed

    def operation(self, name: str, resource_type: str | None, read_only: bool) -> bool:
        """``$name`` at system level (``resource_type`` None) or on a type/instance."""
        key = (name, resource_type)
        decided = self._ops.get(key)
        if decided is None and key not in self._ops:
            decided = self._decide_operation(name, resource_type)
            self._ops[key] = decided
        if decided is not None:
            return decided
        # not granted or denied anywhere: a read-only operation on a type rides on read
        return (
            read_only and resource_type is not None and not _matches(name, self.explicit_ops)
            and self.may("read", resource_type)
        )

    def _decide_operation(self, name: str, resource_type: str | None) -> bool | None:
        levels = ([resource_type] if resource_type is not None else []) + ["*"]
        for t in levels:
            if _matches(name, self._ov(t, "deny").operations):
                return False
            if _matches(name, self._ov(t, "grant").operations):
                return True
        for rule in self.rules:
            applies = rule.types is None or (resource_type is not None and resource_type in rule.types)
            if applies and _matches(name, rule.operations):
                return True
        return None

    def matrix(self) -> dict[str, Any]:
        """What the role may do, for ``role show`` and ``$roles``: interactions per type, operations by rule."""
        types = {t: sorted(i, key=INTERACTIONS.index) for t, i in self.by_type.items() if i}
        ops: dict[str, list[str]] = {}
        for rule in self.rules:
            for t in (["*"] if rule.types is None else sorted(rule.types)):
                ops.setdefault(t, []).extend(op for op in rule.operations if op not in ops.get(t, []))
        for (t, effect), o in sorted(self.overrides.items()):
            if effect == "grant":
                ops.setdefault(t, []).extend(op for op in o.operations if op not in ops.get(t, []))
            else:
                ops[t] = [op for op in ops.get(t, []) if op not in o.operations]
        denied_ops = {t: list(o.operations) for (t, e), o in self.overrides.items() if e == "deny" and o.operations}
        out: dict[str, Any] = {"role": self.role, "interactions": types, "operations": {t: v for t, v in ops.items() if v}}
        if denied_ops:
            out["deniedOperations"] = denied_ops
        return out


@dataclass(slots=True)
class Permission:
    """The permission of one request: a role policy ∩ the token's scopes. ``policy`` None: dev mode."""

    role: str
    policy: RolePolicy | None
    scopes: ScopeSet | None = None
    scope_key: str = ""
    _readable: frozenset[str] | None = field(default=None)

    @property
    def unrestricted(self) -> bool:
        return self.policy is None

    def may(self, interaction: str, resource_type: str | None) -> bool:
        """``interaction`` in the fine vocabulary (``history-instance``, ``search-system``…) or a role word."""
        if self.policy is None:
            return True
        if not self.policy.may(role_interaction(interaction), resource_type):
            return False
        return self.scopes is None or self.scopes.allows(letter_of(interaction), resource_type)

    def why_not(self, interaction: str, resource_type: str | None) -> str:
        what = f"{role_interaction(interaction)} {resource_type or 'every resource type'}"
        assert self.policy is not None
        if not self.policy.may(role_interaction(interaction), resource_type):
            return f"{self.role or 'a token without a role'} may not {what}"
        return f"the token's scopes ({self.scopes.describe() if self.scopes else ''}) do not allow {what}"

    def may_operation(self, name: str, resource_type: str | None, *, read_only: bool) -> bool:
        if self.policy is None:
            return True
        if not self.policy.operation(name, resource_type, read_only):
            return False
        return self.scopes is None or self.scopes.allows("r" if read_only else "u", resource_type)

    def why_not_operation(self, name: str, resource_type: str | None, *, read_only: bool) -> str:
        where = f"on {resource_type}" if resource_type else "at system level"
        assert self.policy is not None
        if not self.policy.operation(name, resource_type, read_only):
            return f"{self.role or 'a token without a role'} may not invoke ${name} {where}"
        letter = "read" if read_only else "update"
        return f"the token's scopes ({self.scopes.describe() if self.scopes else ''}) do not allow ${name} {where} (needs {letter})"

    def readable_types(self) -> frozenset[str] | None:
        """The types this request may read (None: every type, dev mode)."""
        if self.policy is None:
            return None
        if self._readable is None:
            memo = self.policy._readable_memo
            found = memo.get(self.scope_key)
            if found is None:
                scopes = self.scopes
                found = frozenset(t for t in self.policy.readable if scopes is None or scopes.allows("r", t))
                if len(memo) < 256:
                    memo[self.scope_key] = found
            self._readable = found
        return self._readable
