"""The pharmacy's write hooks (fhir_server.services.hooks): importing this module registers them.

* ``lock.keep_finalized_locked`` — ``@guard("MedicationRequest")``: finalized items stay locked;
* ``dispensing.reconcile_dispense`` — ``@after_write("MedicationDispense")``: quantities, over-dispense,
  request status and the stock ledger, in the write's transaction.
"""

from __future__ import annotations

from fhir_server.workflows.pharmacy import dispensing, lock

__all__ = ["dispensing", "lock"]
