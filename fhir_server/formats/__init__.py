"""Wire formats other than JSON (https://hl7.org/fhir/R4/formats.html)."""
