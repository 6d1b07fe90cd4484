"""The stock seam: where a dispense draws inventory down (for the later inventory issue).

``StockLedger.draw`` is called by the dispense reconciliation (``dispensing.py``) inside the SAME
database transaction as the MedicationDispense write, once per change of a dispense's counted
quantity: a dispense becoming ``completed`` draws its quantity; one leaving ``completed`` (cancelled,
entered-in-error) or lowering its quantity draws the negative difference (a return to stock). An
implementation writes on ``conn`` (e.g. an inventory table or SupplyDelivery/InventoryItem
resources) and raises a ``fhir_server.errors.FhirError`` (e.g. ``UnprocessableEntity`` "out of
stock", expression ``MedicationDispense.quantity``) to refuse the dispense: everything rolls back.

The default ledger does nothing. Install another with ``set_stock_ledger(ledger)`` (e.g. from a
hook module listed in ``fhir_server.services.hooks.HOOK_MODULES``, so every process has it).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Protocol

__all__ = ["NoStockLedger", "StockLedger", "set_stock_ledger", "stock_ledger"]


class StockLedger(Protocol):
    async def draw(
        self, conn: Any, tenant: str, medication: dict[str, Any], quantity: dict[str, Any], location: str | None,
    ) -> None:
        """Take ``quantity`` (a FHIR Quantity; a negative ``value`` puts stock back) of ``medication``
        (the dispense's ``{"medicationReference": …}`` or ``{"medicationCodeableConcept": …}``) from
        ``location`` (``Location/id`` of ``MedicationDispense.location``, or None)."""
        ...


class NoStockLedger:
    """No inventory yet: records nothing, refuses nothing."""

    async def draw(
        self, conn: Any, tenant: str, medication: dict[str, Any], quantity: dict[str, Any], location: str | None,
    ) -> None:
        return None


_ledger: StockLedger = NoStockLedger()


def stock_ledger() -> StockLedger:
    return _ledger


def set_stock_ledger(ledger: StockLedger) -> None:
    global _ledger
    _ledger = ledger


def signed(quantity: dict[str, Any], value: Decimal) -> dict[str, Any]:
    """``quantity`` with ``value`` replaced (a delta)."""
    out = {k: v for k, v in quantity.items() if k != "value"}
    out["value"] = float(value) if value != value.to_integral_value() else int(value)
    return out
