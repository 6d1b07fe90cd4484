"""Hospital workflows built on FHIR resources (one package per workflow)."""
