"""SMART on FHIR resource scopes, v1 and v2 (https://hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html).

A scope string (space-separated) becomes a ``ScopeSet``: for each resource type the permission
letters granted, per launch context (``patient``, ``user``, ``system``).

* v2: ``patient/Observation.rs``, ``user/*.cruds``, ``system/Patient.r`` — letters ``c`` create,
  ``r`` read (read, vread, instance history), ``u`` update (update, patch), ``d`` delete, ``s``
  search (type and system search, type and system history), each at most once, in that order.
* v1: ``.read`` = ``rs``, ``.write`` = ``cud``, ``.*`` = ``cruds`` (the SMART 2 equivalences).
* Granular v2 scopes (``patient/Observation.rs?category=…laboratory``) are parsed and kept in
  ``ScopeSet.granular``, but grant nothing: the server does not yet confine results to the query,
  and granting the whole type would be wider than the scope. An app holding them gets 403.
* Anything else (``openid``, ``fhirUser``, ``launch/patient``, ``offline_access``, malformed
  resource scopes) grants no resource access and is ignored.

A ``patient/`` scope also confines the request to the launch patient's compartment; that SQL
restriction is ``fhir_server.auth.visibility``'s business (``Principal.patient``). Here only the
interaction is decided; ``ScopeSet.only_patient_context`` tells whether an access is granted
through ``patient/`` scopes alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

__all__ = ["LETTERS", "Scope", "ScopeSet", "letter_of", "parse_scopes"]

LETTERS = "cruds"
CONTEXTS = ("patient", "user", "system")
_V1 = {"read": "rs", "write": "cud", "*": "cruds"}
_SCOPE = re.compile(r"(patient|user|system)/(\*|[A-Z][A-Za-z]+)\.([a-z*]+)(\?.*)?")

# the SMART letter each interaction needs (history of one instance is a read; wider history is a search)
_LETTER = {
    "read": "r", "vread": "r", "history-instance": "r",
    "search": "s", "search-type": "s", "search-system": "s", "history-type": "s", "history-system": "s",
    "create": "c", "update": "u", "patch": "u", "delete": "d",
}


def letter_of(interaction: str) -> str:
    """The SMART v2 permission letter an interaction needs (``read`` → ``r``, ``patch`` → ``u``…)."""
    return _LETTER[interaction]


@dataclass(frozen=True, slots=True)
class Scope:
    context: str  # patient | user | system
    resource_type: str  # an R4 type or "*"
    letters: frozenset[str]
    query: str | None = None  # v2 granular: the query after "?"
    text: str = ""


def _letters(perm: str) -> str | None:
    if perm in _V1:
        return _V1[perm]
    # v2: a non-empty subsequence of "cruds" (each letter once, in order)
    pos = -1
    for ch in perm:
        at = LETTERS.find(ch)
        if at <= pos:
            return None
        pos = at
    return perm or None


def parse_scope(text: str) -> Scope | None:
    """One resource scope, or None when ``text`` is not one (``openid``, ``launch``…, malformed)."""
    m = _SCOPE.fullmatch(text)
    if m is None:
        return None
    letters = _letters(m[3])
    if letters is None:
        return None
    query = m[4][1:] if m[4] else None
    return Scope(m[1], m[2], frozenset(letters), query or None, text)


@dataclass(slots=True)
class ScopeSet:
    scopes: tuple[Scope, ...]
    granular: tuple[Scope, ...] = ()
    _memo: dict[str, dict[str, frozenset[str]]] = field(default_factory=dict)

    def letters(self, resource_type: str) -> dict[str, frozenset[str]]:
        """``{context: letters}`` granted on ``resource_type`` (``"*"``: what holds for every type)."""
        found = self._memo.get(resource_type)
        if found is None:
            acc: dict[str, set[str]] = {}
            for s in self.scopes:
                if s.resource_type == "*" or s.resource_type == resource_type:
                    acc.setdefault(s.context, set()).update(s.letters)
            found = {ctx: frozenset(v) for ctx, v in acc.items()}
            self._memo[resource_type] = found
        return found

    def allows(self, letter: str, resource_type: str | None) -> bool:
        """Whether any scope grants ``letter`` on ``resource_type`` (None: on every type, ``*``)."""
        return any(letter in v for v in self.letters(resource_type or "*").values())

    def only_patient_context(self, letter: str, resource_type: str) -> bool:
        """True when ``letter`` on the type is granted only by ``patient/`` scopes (compartment-confined)."""
        granted = [ctx for ctx, v in self.letters(resource_type).items() if letter in v]
        return bool(granted) and granted == ["patient"]

    def describe(self) -> str:
        return " ".join(s.text for s in self.scopes + self.granular) or "(no resource scopes)"


@lru_cache(maxsize=1024)
def parse_scopes(scope: str) -> ScopeSet:
    """The resource scopes of a token's ``scope`` claim (cached: tokens repeat their scope string)."""
    plain: list[Scope] = []
    granular: list[Scope] = []
    for text in scope.split():
        parsed = parse_scope(text)
        if parsed is None:
            continue
        (granular if parsed.query else plain).append(parsed)
    return ScopeSet(tuple(plain), tuple(granular))
