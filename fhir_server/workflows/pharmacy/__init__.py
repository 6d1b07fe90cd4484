"""Pharmacy workflow: prescriptions (grouped MedicationRequests), ``$finalize`` with completeness and
allergy checks, the lock on finalized items, the printable form, and dispensing with quantity
tracking (R4 medicationrequest.html, medicationdispense.html, detectedissue.html). See README.md."""
