"""``$meta`` (system, type, instance), ``$meta-add`` and ``$meta-delete`` (instance):
https://hl7.org/fhir/R4/resource-operation-meta.html, resource-operation-meta-add.html,
resource-operation-meta-delete.html.

In and out as ``Parameters``: ``meta`` (valueMeta) in, ``return`` (valueMeta) out. ``$meta`` on an
instance answers the stored ``meta`` of its current version; at type or system level the union of
the tags, security labels and profiles in use on live resources (from the index rows, so codings
come without ``display``). Deleted → 410, unknown → 404. ``$meta-add``/``$meta-delete`` write no new
version (``fhir_server.services.meta``) and are audited as an update of that version.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from fhir_server.api.deps import access_of, actor_of, database, service, tenant_of
from fhir_server.api.operations import OperationCall, operation
from fhir_server.api.responses import fhir_response
from fhir_server.errors import BadRequest
from fhir_server.services.meta import change_meta, check_meta, meta_of, meta_summary

_META_PARAM = "Parameters.parameter.where(name='meta')"


def _parameters(meta: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Parameters", "parameter": [{"name": "return", "valueMeta": meta}]}


@operation("meta", levels=("system", "type", "instance"), methods=("GET", "POST"))
async def meta_op(call: OperationCall) -> Response:
    request = call.request
    if call.resource_id is not None:
        assert call.resource_type is not None
        current = await service(request).read(call.resource_type, call.resource_id)
        return fhir_response(request, _parameters(meta_of(current.content)))
    meta = await meta_summary(database(request), tenant_of(request), call.resource_type, access_of(request))
    return fhir_response(request, _parameters(meta))


async def _change(call: OperationCall, *, add: bool) -> Response:
    request = call.request
    assert call.resource_type is not None and call.resource_id is not None
    given = call.first("meta")
    if not isinstance(given, dict) or "valueMeta" not in given:
        raise BadRequest(f"${call.name} needs a Parameters body with a 'meta' parameter (valueMeta)", expression=_META_PARAM)
    change = check_meta(given["valueMeta"], _META_PARAM + ".valueMeta")
    meta, written = await change_meta(
        database(request), tenant_of(request), actor_of(request), call.resource_type, call.resource_id, change, add=add,
        access=access_of(request),
    )
    if written:
        # the write recorded its own audit row (an update of the current version)
        request.scope.setdefault("state", {})["audited"] = True
    return fhir_response(request, _parameters(meta))


@operation("meta-add", levels=("instance",), methods=("POST",), affects_state=True)
async def meta_add_op(call: OperationCall) -> Response:
    return await _change(call, add=True)


@operation("meta-delete", levels=("instance",), methods=("POST",), affects_state=True)
async def meta_delete_op(call: OperationCall) -> Response:
    return await _change(call, add=False)
