"""``$everything`` on Patient (type and instance) and Encounter (instance):
https://hl7.org/fhir/R4/patient-operation-everything.html,
https://hl7.org/fhir/R4/encounter-operation-everything.html.

Parameters ``_since`` (instant: resources with ``meta.lastUpdated`` ≥ it), ``_type`` (comma list,
repeatable), ``_count`` (page size, capped like search) and the ``_page`` token of the ``next``
link; ``_summary``/``_elements``/``_format``/``_pretty`` are applied to the entries and kept in the
links. ``start``/``end`` (Patient) are not supported: ignored with a warning in the outcome entry.
The answer is a searchset Bundle: the focus and its compartment are ``match`` entries, resources
they reference are ``include`` entries. What is in the record: ``fhir_server.services.everything``.
"""

from __future__ import annotations

from starlette.responses import Response

from fhir_server.api.authorize import readable_types
from fhir_server.api.bundles import page_links, searchset_bundle
from fhir_server.api.deps import access_of, database, tenant_of
from fhir_server.api.operations import OperationCall, operation
from fhir_server.api.paging import parse_count
from fhir_server.api.responses import fhir_response
from fhir_server.definitions.resource_types import RESOURCE_TYPES
from fhir_server.errors import BadRequest, Issue, ResourceNotFound, operation_outcome
from fhir_server.search.paging import PAGE_PARAM, decode_page, encode_page
from fhir_server.search.query_values import split_list
from fhir_server.services.everything import EverythingRequest, everything
from fhir_server.storage.compartment import ORDER
from fhir_server.timeutil import parse_range

_KEPT = ("_summary", "_elements", "_format", "_pretty")
_UNSUPPORTED = ("start", "end")


def _types(call: OperationCall) -> list[str] | None:
    raw = split_list(call.texts("_type"))
    if not raw:
        return None
    unknown = [t for t in raw if t not in RESOURCE_TYPES]
    if unknown:
        raise BadRequest(f"_type: {', '.join(unknown)} is not a FHIR R4 resource type", expression="_type")
    return list(dict.fromkeys(raw))


@operation("everything", levels=("type", "instance"), types=("Patient", "Encounter"), methods=("GET", "POST"))
async def everything_op(call: OperationCall) -> Response:
    request = call.request
    assert call.resource_type is not None
    if call.resource_type == "Encounter" and call.resource_id is None:
        raise ResourceNotFound("$everything is defined on Encounter instances only (Encounter/[id]/$everything)")
    applied: list[tuple[str, str]] = []
    types = _types(call)
    if types is not None:
        applied.append(("_type", ",".join(types)))
    readable = readable_types(request)  # only types the caller's role and scopes may read
    if readable is not None:
        types = [t for t in (types if types is not None else sorted(readable)) if t in readable]
    since = None
    raw_since = call.text("_since")
    if raw_since:
        since = parse_range(raw_since, "_since")[0]
        applied.append(("_since", raw_since))
    count = parse_count(request, call.text("_count"))
    if count is not None:
        applied.append(("_count", str(count)))
    else:
        count = int(request.app.state.settings.default_page_size)
    raw_page = call.text(PAGE_PARAM)
    token = decode_page(raw_page, ORDER) if raw_page else None
    if token is not None and token.backward:
        raise BadRequest("The paging token is not valid for $everything", expression=PAGE_PARAM)
    warnings = [
        Issue("warning", "not-supported", f"$everything parameter '{name}' is not supported and was ignored", name)
        for name in _UNSUPPORTED
        if call.first(name) is not None
    ]
    applied += [(name, value) for name in _KEPT for value in request.query_params.getlist(name)]

    page = await everything(
        database(request),
        tenant_of(request),
        EverythingRequest(call.resource_type, call.resource_id, types, since, count, token),
        access_of(request),
    )
    links = page_links(
        request,
        encode_page(page.next) if page.next else None,
        applied + ([(PAGE_PARAM, raw_page)] if raw_page else []),
        with_first=True,
    )
    outcome = operation_outcome(warnings) if warnings else None
    return fhir_response(request, searchset_bundle(request, page.matches, page.total, links, outcome, page.included))
