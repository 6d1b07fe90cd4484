"""Assembling Bundles (https://hl7.org/fhir/R4/bundle.html) around stored JSON without re-parsing it."""

from __future__ import annotations

import base64
import uuid
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

import orjson
from starlette.requests import Request

from fhir_server.api.responses import base_url, resource_body, wants_pretty
from fhir_server.errors import BadRequest
from fhir_server.storage.repository import StoredVersion
from fhir_server.timeutil import format_instant, now

PAGE_PARAM = "_page"


def encode_cursor(values: tuple[Any, ...]) -> str:
    raw = orjson.dumps([v.isoformat() if isinstance(v, datetime) else v for v in values])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(token: str, shape: tuple[type, ...]) -> tuple[Any, ...]:
    try:
        raw = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        if len(raw) != len(shape):
            raise ValueError
        return tuple(datetime.fromisoformat(v) if t is datetime else t(v) for v, t in zip(raw, shape, strict=True))
    except (ValueError, TypeError, orjson.JSONDecodeError):
        raise BadRequest("The paging token is not valid", expression=PAGE_PARAM) from None


def page_links(
    request: Request,
    next_token: str | None,
    params: list[tuple[str, str]] | None = None,
    previous_token: str | None = None,
    with_first: bool = False,
) -> list[dict[str, str]]:
    """``self`` (``params``: what was applied; default: the request's query), ``first``, ``next``,
    ``previous`` (http.html#paging). Links carry the paging token in ``_page``."""
    path = base_url(request) + request.url.path.removeprefix("/fhir")
    if params is None:
        params = [(k, v) for k, v in request.query_params.multi_items()]
    links = [{"relation": "self", "url": path + ("?" + urlencode(params) if params else "")}]
    rest = [(k, v) for k, v in params if k != PAGE_PARAM]
    if with_first:
        links.append({"relation": "first", "url": path + ("?" + urlencode(rest) if rest else "")})
    if previous_token:
        links.append({"relation": "previous", "url": path + "?" + urlencode([*rest, (PAGE_PARAM, previous_token)])})
    if next_token:
        links.append({"relation": "next", "url": path + "?" + urlencode([*rest, (PAGE_PARAM, next_token)])})
    return links


def _history_request(v: StoredVersion) -> tuple[dict[str, str], str]:
    if v.method == "POST":
        return {"method": "POST", "url": v.resource_type}, "201 Created"
    if v.method == "DELETE":
        return {"method": "DELETE", "url": f"{v.resource_type}/{v.id}"}, "204 No Content"
    status = "201 Created" if v.version_id == 1 else "200 OK"
    return {"method": v.method, "url": f"{v.resource_type}/{v.id}"}, status


def bundle_bytes(request: Request, header: dict[str, Any], entries: list[tuple[dict[str, Any], bytes | None]]) -> bytes:
    """Serialise a Bundle whose entry resources are spliced in as stored JSON bytes."""
    bundle = {"resourceType": "Bundle", "id": str(uuid.uuid4()), "meta": {"lastUpdated": format_instant(now())}, **header}
    if wants_pretty(request):
        # pretty printing re-parses the stored JSON; the default path does not
        bundle["entry"] = [
            {**e, "resource": orjson.loads(r)} if r is not None else e for e, r in entries
        ] if entries else []
        if not bundle["entry"]:
            del bundle["entry"]
        return orjson.dumps(bundle, option=orjson.OPT_INDENT_2)
    head = orjson.dumps(bundle)
    if not entries:
        return head
    parts = []
    for entry, resource in entries:
        e = orjson.dumps(entry)
        if resource is not None:
            # {"fullUrl":...}  ->  {"fullUrl":...,"resource":<stored json>}
            e = e[:-1] + b',"resource":' + resource + b"}"
        parts.append(e)
    return head[:-1] + b',"entry":[' + b",".join(parts) + b"]}"


def history_bundle(request: Request, versions: list[StoredVersion], next_token: str | None) -> bytes:
    base = base_url(request)
    entries = []
    for v in versions:
        req, status = _history_request(v)
        entry: dict[str, Any] = {
            "fullUrl": f"{base}/{v.resource_type}/{v.id}",
            "request": req,
            "response": {"status": status, "etag": f'W/"{v.version_id}"', "lastModified": format_instant(v.last_updated)},
        }
        entries.append((entry, None if v.deleted else resource_body(request, v)))
    return bundle_bytes(request, {"type": "history", "link": page_links(request, next_token)}, entries)


def searchset_bundle(
    request: Request,
    versions: list[StoredVersion],
    total: int | None,
    links: list[dict[str, str]],
    outcome: dict[str, Any] | None,
    included: list[StoredVersion] | None = None,
) -> bytes:
    """A searchset (search.html#return): matches, then included resources (``search.mode =
    include``), then the OperationOutcome of warnings (``outcome``)."""
    base = base_url(request)
    header: dict[str, Any] = {"type": "searchset"}
    if total is not None:
        header["total"] = total
    header["link"] = links
    entries: list[tuple[dict[str, Any], bytes | None]] = [
        ({"fullUrl": f"{base}/{v.resource_type}/{v.id}", "search": {"mode": mode}}, resource_body(request, v))
        for group, mode in ((versions, "match"), (included or [], "include"))
        for v in group
    ]
    if outcome is not None:
        entries.append(({"search": {"mode": "outcome"}}, orjson.dumps(outcome)))
    return bundle_bytes(request, header, entries)
