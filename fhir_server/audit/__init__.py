"""The audit trail: who did what to which resource, when, with what outcome (AuditEvent, IHE BALP-like).

Successful writes record their row in the same statement as the write (``storage.repository``);
reads, searches, history and every failure are recorded by ``AuditTrail`` (``audit.middleware``)
through a batching ``AuditSink``.
"""
