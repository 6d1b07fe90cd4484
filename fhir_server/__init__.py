"""FHIR R4 (4.0.1) server on PostgreSQL JSONB with an HL7 v2 bridge."""

__version__ = "0.1.0"
FHIR_VERSION = "4.0.1"
