"""The pharmacy workflow's canonical URLs and codes (project namespace, R4 extensibility.html).

Extensions and code systems are defined as FHIR JSON in
``fhir_server/definitions/project/structuredefinitions/prescription-*.json`` and
``terminology/codesystems/prescription-*.json``; these constants are their URLs.
"""

from __future__ import annotations

BASE = "https://fhir-server.example.org/fhir"

# meta.tag that marks a finalized (locked) prescription item (README "Finalized")
WORKFLOW_SYSTEM = f"{BASE}/CodeSystem/workflow"
FINALIZED = "finalized"

# the prescription number (MedicationRequest.groupIdentifier.system, when the client has none of its own)
PRESCRIPTION_NUMBER_SYSTEM = f"{BASE}/prescription-number"

# extensions (StructureDefinition/prescription-*)
EXT_AYUSH_TIMING = f"{BASE}/StructureDefinition/prescription-ayush-timing"  # on Timing.repeat
EXT_ANUPANA = f"{BASE}/StructureDefinition/prescription-anupana"  # on Dosage
EXT_HOMEOPATHIC = f"{BASE}/StructureDefinition/prescription-homeopathic-administration"  # on Dosage
EXT_DISPENSE_OVERRIDE = f"{BASE}/StructureDefinition/prescription-dispense-override"  # on MedicationDispense

# code systems
CS_AYUSH_TIMING = f"{BASE}/CodeSystem/prescription-ayush-timing"
CS_HOMEOPATHIC_METHOD = f"{BASE}/CodeSystem/prescription-homeopathic-method"
CS_PRESCRIBER_ROLE = f"{BASE}/CodeSystem/prescription-prescriber-role"
CS_DETECTED_ISSUE_ID = f"{BASE}/prescription-detected-issue"

V3_ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
PRACTITIONER_ROLE = "http://terminology.hl7.org/CodeSystem/practitioner-role"
SNOMED = "http://snomed.info/sct"
SUBSTITUTION_TYPE = "http://terminology.hl7.org/CodeSystem/v3-substanceAdminSubstitution"
SUBSTITUTION_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"

# PractitionerRole.code values that carry the right to prescribe (README "Prescribing right")
PRESCRIBER_CODES: frozenset[tuple[str, str]] = frozenset({
    (PRACTITIONER_ROLE, "doctor"),
    (SNOMED, "158965000"),  # medical practitioner
    (SNOMED, "309343006"),  # physician
    (CS_PRESCRIBER_ROLE, "prescriber"),
})

# R4 EventTiming (Timing.repeat.when) in words, for the printable form
EVENT_TIMING_WORDS: dict[str, str] = {
    "MORN": "in the morning", "MORN.early": "early in the morning", "MORN.late": "late in the morning",
    "NOON": "at noon", "AFT": "in the afternoon", "AFT.early": "early in the afternoon",
    "AFT.late": "late in the afternoon", "EVE": "in the evening", "EVE.early": "early in the evening",
    "EVE.late": "late in the evening", "NIGHT": "at night", "PHS": "after sleep", "HS": "at bedtime",
    "WAKE": "on waking", "C": "with food", "CM": "with breakfast", "CD": "with lunch", "CV": "with dinner",
    "AC": "before food", "ACM": "before breakfast", "ACD": "before lunch", "ACV": "before dinner",
    "PC": "after food", "PCM": "after breakfast", "PCD": "after lunch", "PCV": "after dinner",
}

# project AYUSH timings (CodeSystem prescription-ayush-timing) in words
AYUSH_TIMING_WORDS: dict[str, str] = {
    "brahma-muhurta": "before sunrise (brahma muhurta)",
    "abhakta": "on an empty stomach (abhakta)",
    "madhya-bhakta": "in the middle of the meal (madhya bhakta)",
    "sama-bhakta": "mixed with food (sama bhakta)",
    "samudga": "before and after food (samudga)",
    "muhurmuhu": "repeatedly through the day (muhurmuhu)",
    "sagrasa": "with the first morsel (sagrasa)",
    "grasantara": "between morsels (grasantara)",
}

# MedicationRequest statuses a finalized item may move to (README "Locked")
CLOSING_STATUSES = frozenset({"stopped", "cancelled", "entered-in-error", "completed"})
