"""HL7 v2 outbound (issue 6 "Outbound"): ServiceRequest → ORM^O01 / OML^O21 over MLLP through a durable
outbox. ``destinations`` (per-tenant configuration), ``hook`` (enqueue in the write's transaction),
``encode`` (the v2 message), ``outbox`` (SQL), ``dispatcher`` (the sender), ``cli``. See
hl7_bridge/README.md "Outbound".
"""
