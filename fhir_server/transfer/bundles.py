"""Turning a Bundle read from a file into resources with server ids and rewritten references."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fhir_server.errors import BadRequest

_ID_OK = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-.")


@dataclass(slots=True)
class ImportItem:
    resource: dict[str, Any]
    method: str  # PUT (known id) | POST (server id) | CREATE_IF (conditional create)
    condition: str | None = None


def _local_id(full_url: str) -> str | None:
    """``urn:uuid:<uuid>`` keeps its uuid as the id; other local fullUrls get none."""
    if full_url.startswith("urn:uuid:"):
        candidate = full_url[9:]
        if 0 < len(candidate) <= 64 and set(candidate) <= _ID_OK:
            return candidate
    return None


def rewrite_references(node: Any, mapping: dict[str, str]) -> None:
    if isinstance(node, dict):
        ref = node.get("reference")
        if isinstance(ref, str) and ref in mapping:
            node["reference"] = mapping[ref]
        for value in node.values():
            rewrite_references(value, mapping)
    elif isinstance(node, list):
        for value in node:
            rewrite_references(value, mapping)


def bundle_items(bundle: dict[str, Any]) -> list[ImportItem]:
    entries = bundle.get("entry") or []
    mapping: dict[str, str] = {}
    items: list[ImportItem] = []
    for n, entry in enumerate(entries):
        resource = entry.get("resource")
        if not isinstance(resource, dict) or "resourceType" not in resource:
            raise BadRequest(f"Bundle.entry[{n}] has no resource", expression=f"Bundle.entry[{n}].resource")
        request = entry.get("request") or {}
        full_url = entry.get("fullUrl") or ""
        local = _local_id(full_url)
        rtype = resource["resourceType"]
        if request.get("method") == "PUT" and "?" not in request.get("url", "") and resource.get("id"):
            items.append(ImportItem(resource, "PUT"))
        elif local is not None:
            resource["id"] = local
            items.append(ImportItem(resource, "PUT", request.get("ifNoneExist")))
            mapping[full_url] = f"{rtype}/{local}"
        elif request.get("ifNoneExist"):
            items.append(ImportItem(resource, "CREATE_IF", request["ifNoneExist"]))
        elif resource.get("id"):
            items.append(ImportItem(resource, "PUT"))
        else:
            items.append(ImportItem(resource, "POST"))
    for item in items:
        rewrite_references(item.resource, mapping)
    return items
