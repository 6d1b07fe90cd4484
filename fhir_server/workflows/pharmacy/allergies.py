"""Drug-allergy screening at finalize (R4 allergyintolerance.html, detectedissue.html).

An active AllergyIntolerance of the patient (clinicalStatus active or absent; verificationStatus not
refuted nor entered-in-error) matches an item when its ``code`` (or a reaction ``substance``) shares a
``system|code`` with the medication, or a text/display equals, or contains as whole words, one of
the medication's texts (a simple match; no drug-class knowledge). Each match is a DetectedIssue
(code v3-ActCode ``ALGY`` "Allergy Alert", severity high, implicating the request and the allergy),
identified by ``prescription-detected-issue|<request id>:<allergy id>`` so a retry finds it again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from fhir_server.services.resources import ResourceService
from fhir_server.timeutil import format_instant, now
from fhir_server.workflows.pharmacy.codes import CS_DETECTED_ISSUE_ID, V3_ACT_CODE
from fhir_server.workflows.pharmacy.prescription import Coding, concept_terms, medication_terms, referring

__all__ = ["AllergyMatch", "detected_issue", "find_allergy_matches"]

_INACTIVE_CLINICAL = {"inactive", "resolved"}
_UNVERIFIED = {"refuted", "entered-in-error"}


@dataclass(frozen=True, slots=True)
class AllergyMatch:
    item: dict[str, Any]
    allergy_id: str
    allergy_name: str
    medication_name: str

    @property
    def key(self) -> str:
        return f"{self.item['id']}:{self.allergy_id}"


def _code(cc: Any) -> str | None:
    for c in (cc or {}).get("coding") or []:
        if c.get("code"):
            return str(c["code"])
    return None


def _active(allergy: dict[str, Any]) -> bool:
    return _code(allergy.get("clinicalStatus")) not in _INACTIVE_CLINICAL and _code(allergy.get("verificationStatus")) not in _UNVERIFIED


def _terms(allergy: dict[str, Any]) -> tuple[set[Coding], set[str], str]:
    concepts = [allergy.get("code") or {}] + [r.get("substance") or {} for r in allergy.get("reaction") or []]
    codings, texts = concept_terms(concepts)
    name = (allergy.get("code") or {}).get("text") or next(iter(sorted(texts)), None) or "an allergen"
    return codings, texts, str(name)


def _words_in(needle: str, haystack: str) -> bool:
    return bool(needle) and re.search(rf"(?<!\w){re.escape(needle)}(?!\w)", haystack) is not None


def _texts_match(a: set[str], b: set[str]) -> bool:
    return any(x == y or _words_in(x, y) or _words_in(y, x) for x in a for y in b if x and y)


async def find_allergy_matches(
    conn: Any, service: ResourceService, patient_id: str, items: list[dict[str, Any]]
) -> list[AllergyMatch]:
    found = await referring(conn, service, "AllergyIntolerance", "patient", "Patient", patient_id, 500)
    allergies = [(a.id, orjson.loads(a.content or "{}")) for a in found]
    allergies = [(aid, a) for aid, a in allergies if _active(a)]
    if not allergies:
        return []
    out: list[AllergyMatch] = []
    for item in items:
        m_codes, m_texts, m_name = await medication_terms(conn, service, item)
        for aid, allergy in allergies:
            a_codes, a_texts, a_name = _terms(allergy)
            if (m_codes & a_codes) or _texts_match(m_texts, a_texts):
                out.append(AllergyMatch(item, aid, a_name, m_name))
    return out


def detected_issue(match: AllergyMatch, patient_ref: str, *, override: str | None, author: str | None) -> dict[str, Any]:
    """The DetectedIssue of one match: preliminary while unresolved, final with a mitigation when the
    prescriber overrode it (``override-reason``)."""
    when = format_instant(now())
    issue: dict[str, Any] = {
        "resourceType": "DetectedIssue",
        "identifier": [{"system": CS_DETECTED_ISSUE_ID, "value": match.key}],
        "status": "final" if override else "preliminary",
        "code": {"coding": [{"system": V3_ACT_CODE, "code": "ALGY", "display": "Allergy Alert"}],
                 "text": "Drug-allergy interaction"},
        "severity": "high",
        "patient": {"reference": patient_ref},
        "identifiedDateTime": when,
        "implicated": [{"reference": f"MedicationRequest/{match.item['id']}"},
                       {"reference": f"AllergyIntolerance/{match.allergy_id}"}],
        "detail": f"The patient has a recorded allergy to {match.allergy_name}; prescribed: {match.medication_name}",
    }
    if override:
        mitigation: dict[str, Any] = {"action": {"text": f"Prescriber override: {override}"}, "date": when}
        if author and "/" in author:
            mitigation["author"] = {"reference": author}
        issue["mitigation"] = [mitigation]
    return issue
