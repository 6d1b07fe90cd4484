"""The audit trail: who did what to which resource (and whose patient data), when, with what outcome.

Successful writes record their row in the same statement as the write (``storage.repository``);
reads, searches, history, operations, failures and the OAuth endpoints are recorded by
``AuditTrail`` (``audit.middleware``) through a batching ``AuditSink``. ``audit.chain`` seals the rows
into a per-tenant hash chain off the write path and verifies it; ``audit.resource`` and
``audit.query`` serve them as FHIR AuditEvents (``api.auditevents``). README "Audit trail".
"""
