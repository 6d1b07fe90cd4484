"""What every message handler shares: the context it runs in (message, sender, mapper, the open
database transaction) and the building blocks of a transaction Bundle (entries with deterministic
``urn:uuid`` fullUrls, conditional create/update on business identifiers, Patient matching).

A handler returns a ``Work``: the Bundle entries to run and, per entry, the v2 segment it came
from (so a failing entry is named in ERR-2). It never writes: the processor runs the Bundle through
``fhir_server.services.bundles`` inside the message's one database transaction.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import orjson

from fhir_server.services.conditional import exact_identifier, find_matches, parse_criteria
from fhir_server.services.resources import COND_UPDATE, IF_NONE_EXIST, ResourceService
from fhir_server.storage import repository as repo
from fhir_server.storage.repository import StoredVersion
from hl7_bridge.decode import Message, Segment
from hl7_bridge.mapper import Mapper
from hl7_bridge.senders import Sender
from mappings.functions import MappingError

__all__ = ["HandlerContext", "Refused", "Work", "identifier_query", "token_value", "type_code"]

_SAFE = ":/.-_~\\"
_NS = uuid.UUID("5b3c1d7e-8f0a-4c2b-9d6e-1a2b3c4d5e6f")


class Refused(MappingError):
    """The application refuses the message on purpose (unknown patient under the refuse policy…): AE."""


def token_value(ident: dict[str, Any]) -> str:
    """The identifier's value for a search token, escaped (its own ``\\``, ``|``, ``,``, ``$``) and URL-quoted."""
    value = str(ident.get("value", "")).replace("\\", "\\\\").replace("|", "\\|").replace(",", "\\,").replace("$", "\\$")
    return quote(value, safe=_SAFE)


def identifier_query(ident: dict[str, Any]) -> str:
    """``identifier=system|value`` (search token syntax, the value's own ``|``, ``,``, ``$`` escaped)."""
    system = str(ident.get("system", "")).replace("|", "\\|").replace(",", "\\,")
    return "identifier=" + quote(system, safe=_SAFE) + "|" + token_value(ident)


@dataclass(slots=True)
class Work:
    entries: list[dict[str, Any]] = field(default_factory=list)
    origins: list[tuple[str, int]] = field(default_factory=list)  # (segment, position) per entry
    notes: list[str] = field(default_factory=list)

    def has(self, full_url: str) -> bool:
        return any(e["fullUrl"] == full_url for e in self.entries)

    def add(self, entry: dict[str, Any], seg: Segment | None) -> None:
        self.entries.append(entry)
        self.origins.append((seg.name, seg.index) if seg is not None else ("MSH", 1))


@dataclass(slots=True)
class HandlerContext:
    msg: Message
    sender: Sender
    mapper: Mapper
    conn: Any  # the open transaction
    service: ResourceService  # bound to conn, acting as the sender's agent
    route: dict[str, Any]
    message_id: int
    # (kind, type, criteria) → matches found by ``prefetch`` under their lock, for a later ``find_one``
    _prefetched: dict[tuple[str, str, str], list[StoredVersion]] = field(default_factory=dict)
    _patients: dict[int, tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=dict)

    @property
    def tenant(self) -> str:
        return self.sender.tenant

    def full_url(self, *key: str) -> str:
        """A deterministic fullUrl (the same message always gives the same ones)."""
        return f"urn:uuid:{uuid.uuid5(_NS, '|'.join((str(self.message_id), *key)))}"

    async def lock(self, kind: str, resource_type: str, query: str) -> None:
        """The advisory lock the Bundle service (and REST) takes for this conditional interaction;
        taken early so a read-then-decide (out-of-order results, merges) cannot race."""
        await self.service.lock_in(self.conn, kind, resource_type, query)

    async def find_one(self, resource_type: str, query: str, *, kind: str = COND_UPDATE) -> StoredVersion | None:
        matches = await self.find_all(resource_type, query, kind=kind)
        if len(matches) > 1:
            raise MappingError(f"{resource_type}?{query} matches more than one resource", code="205")
        return matches[0] if matches else None

    async def find_all(self, resource_type: str, query: str, *, kind: str = COND_UPDATE) -> list[StoredVersion]:
        """Up to two matches of ``query``, searched under the advisory lock of (``kind``, criteria)."""
        matches = self._prefetched.pop((kind, resource_type, query), None)
        if matches is None:
            await self.lock(kind, resource_type, query)
            matches = await find_matches(self.conn, self.tenant, resource_type, query, limit=2)
        return matches

    async def prefetch(self, lookups: list[tuple[str, str, str]]) -> None:
        """``find_one``'s locks and searches for several (resource_type, criteria, kind) at once: the
        locks in one statement (key order), then the searches in one statement (exact identifiers;
        others one by one), which sees what a lock holder committed, as ``find_one`` does. Their
        ``find_one`` later answers from here (the handler writes nothing before its Bundle runs)."""
        todo = list(dict.fromkeys((kind, rtype, query) for rtype, query, kind in lookups
                                  if (kind, rtype, query) not in self._prefetched))
        if not todo:
            return
        keys = sorted({self.service.lock_key(kind, rtype, query) for kind, rtype, query in todo})
        await self.conn.execute("SELECT count(pg_advisory_xact_lock(k)) FROM unnest(%s::bigint[]) AS k", (keys,), prepare=True)
        exact = [exact_identifier(rtype, parse_criteria(query)) for _, rtype, query in todo]
        if all(e is not None for e in exact):
            found = await repo.match_tokens(
                self.conn, self.tenant, [(rtype, "identifier", *e) for (_, rtype, _), e in zip(todo, exact, strict=True) if e], 2)
        else:
            found = [await find_matches(self.conn, self.tenant, rtype, query, limit=2) for _, rtype, query in todo]
        for key, matches in zip(todo, found, strict=True):
            self._prefetched[key] = matches

    # -- entries --
    @staticmethod
    def put(resource: dict[str, Any], full_url: str, found: StoredVersion | None, query: str) -> dict[str, Any]:
        """Update the resource found (by id) or create it with a conditional update on ``query``."""
        rtype = resource["resourceType"]
        if found is not None:
            resource["id"] = found.id
            return {"fullUrl": full_url, "resource": resource, "request": {"method": "PUT", "url": f"{rtype}/{found.id}"}}
        resource.pop("id", None)
        return {"fullUrl": full_url, "resource": resource, "request": {"method": "PUT", "url": f"{rtype}?{query}"}}

    @staticmethod
    def new(resource: dict[str, Any], full_url: str) -> dict[str, Any]:
        """A plain create, for a resource ``find_one`` has just NOT found: its lock is held until the
        message commits, so no one else can create it meanwhile and the Bundle need not search again
        (and the create joins the Bundle's one multi-row insert)."""
        resource.pop("id", None)
        return {"fullUrl": full_url, "resource": resource, "request": {"method": "POST", "url": resource["resourceType"]}}

    @staticmethod
    def create_if_none(resource: dict[str, Any], full_url: str, query: str) -> dict[str, Any]:
        return {"fullUrl": full_url, "resource": resource,
                "request": {"method": "POST", "url": resource["resourceType"], "ifNoneExist": query}}

    @staticmethod
    def content(found: StoredVersion) -> dict[str, Any]:
        data: dict[str, Any] = orjson.loads(found.content)
        return data

    # -- Patient (PID) --
    def patient_from_pid(self, pid: Segment) -> tuple[dict[str, Any], dict[str, Any]]:
        """(the mapped Patient, the identifier it is matched by: PID-3's MR-typed repetition, else the first)."""
        done = self._patients.pop(pid.index, None)  # mapped already by ``patient_query`` (a prefetch)
        if done is not None:
            return done
        patient = {"resourceType": "Patient", **self.mapper.segment(pid, "PID_Patient")}
        idents = patient.get("identifier") or []
        if not idents or not idents[0].get("value"):
            raise MappingError("PID-3 (patient identifier list) is required to match the patient", "PID-3", "101")
        key = next((i for i in idents if type_code(i) == "MR" and i.get("value")), idents[0])
        return patient, {"system": key.get("system"), "value": key["value"]}

    def patient_query(self, pid: Segment) -> str:
        """The criteria ``patient_entry`` will match the PID's Patient by (its mapping kept for it)."""
        mapped = self.patient_from_pid(pid)
        self._patients[pid.index] = mapped
        return identifier_query(mapped[1])

    async def patient_entry(self, work: Work, pid: Segment, *, update: bool) -> str:
        """The Patient of the message, as a reference target (its fullUrl). ``update``: the message's
        demographics update the stored Patient (ADT); otherwise a known Patient is only referred to
        (lab results do not rewrite the registration). Unknown patients follow the sender's policy."""
        patient, key = self.patient_from_pid(pid)
        query = identifier_query(key)
        found = await self.find_one("Patient", query, kind=IF_NONE_EXIST)
        url = self.full_url("Patient", query)
        if found is None and self.sender.unknown_patient == "refuse":
            raise Refused(f"unknown patient {key.get('value')} ({key.get('system')}); this sender may not create patients",
                          "PID-3", "204")
        if found is None:
            work.add(self.new(patient, url), pid)  # searched under the If-None-Exist lock just now
        elif update:
            work.add(self.put(merge_resource(self.content(found), patient), url, found, query), pid)
        else:
            return f"Patient/{found.id}"
        return url


def type_code(ident: dict[str, Any]) -> str | None:
    codings = (ident.get("type") or {}).get("coding") or []
    return codings[0].get("code") if codings else None


def merge_resource(existing: dict[str, Any], mapped: dict[str, Any]) -> dict[str, Any]:
    """The stored resource with the message's elements laid over it: elements the message maps
    replace the stored ones; elements it does not carry (links, other senders' data) stay.
    Identifiers are united (the stored ones not sent again are kept)."""
    out = {k: v for k, v in existing.items() if k not in ("meta", "text")}
    for key, value in mapped.items():
        if key == "identifier":
            sent = {(i.get("system"), i.get("value")) for i in value}
            out["identifier"] = value + [i for i in existing.get("identifier", []) if (i.get("system"), i.get("value")) not in sent]
        else:
            out[key] = value
    return out
