"""MSH-9 → handler. The table is data (mappings/messages/routes.json: ``"ORU^R01": {"handler":
"oru_lab", …}``); ``HANDLERS`` names the code. Adding a message type = a route + (maybe) a handler.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from functools import cache
from importlib import resources
from typing import Any

from hl7_bridge.handlers import adt, orders, oru, radiology, siu
from hl7_bridge.handlers.common import HandlerContext, Work

__all__ = ["HANDLERS", "Route", "find_route", "routes"]

Handler = Callable[[HandlerContext], Awaitable[Work]]

HANDLERS: dict[str, Handler] = {
    "adt": adt.handle,
    "adt_merge": adt.merge,
    "oru_lab": oru.handle,
    "siu": siu.handle,
    "orders": orders.handle,
    "mdm_report": radiology.mdm,
}

Route = dict[str, Any]


@cache
def routes() -> dict[str, Route]:
    text = resources.files("mappings").joinpath("messages/routes.json").read_text(encoding="utf-8")
    table: dict[str, Route] = {k: v for k, v in json.loads(text).items() if not k.startswith("_")}
    for key, route in table.items():
        if route["handler"] not in HANDLERS:
            raise RuntimeError(f"routes.json: {key} names an unknown handler {route['handler']!r}")
    return table


def find_route(code: str, trigger: str) -> tuple[Route | None, str | None]:
    """(route, None) or (None, the table 0357 code: 200 unsupported message type, 201 unsupported event)."""
    table = routes()
    route = table.get(f"{code}^{trigger}")
    if route is not None:
        return route, None
    if any(k.split("^")[0] == code for k in table):
        return None, "201"
    return None, "200"
