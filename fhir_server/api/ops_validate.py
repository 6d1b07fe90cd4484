"""``$validate`` on a type or an instance (https://hl7.org/fhir/R4/resource-operation-validate.html).

* ``POST [type]/$validate``, ``POST [type]/[id]/$validate``: the resource as the body, or a
  ``Parameters`` body with ``resource``, ``mode`` and ``profile`` (``mode``/``profile`` may also be
  in the query string).
* ``GET [type]/[id]/$validate`` (or a POST without a resource at instance level): the stored
  resource is validated (404 unknown, 410 deleted).

Always 200 with an OperationOutcome when validation could be done: the validator's issues (each
naming its element in ``expression``), or one ``information`` "All OK" issue. 400 when it could
not: a body that is not JSON or not an object, a ``resource`` parameter that is not a resource,
an unknown ``mode``, ``mode=delete`` without an instance, nothing to validate.

What each mode checks (the spec leaves business rules to the server):

* no mode: R4 validation (+ ``profile``, and the project profiles ``meta.profile`` claims:
  ``fhir_server.profiles``).
* ``create``: the same; an ``id`` in the resource gives an ``information`` issue (create ignores it).
* ``update``: the same, and the resource must carry an ``id`` (``required``), equal to the URL's id
  at instance level (``invalid``). Update may create (http.html#upsert): existence is not required.
* ``delete``: instance level only; the instance must exist and not be deleted (404 / 410 like a
  read). This server has no referential-integrity rules on delete, so that is all; the body is
  not read.

Nothing is written; the audit middleware records the call as an ``operation``.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

from fhir_server.api.deps import service
from fhir_server.api.operations import OperationCall, operation
from fhir_server.api.responses import fhir_response
from fhir_server.errors import BadRequest, Issue, operation_outcome
from fhir_server.services.validate import validation_issues_for
from fhir_server.validation import has_errors

MODES = ("create", "update", "delete")


def _resource_from_body(call: OperationCall) -> dict[str, Any] | None:
    body = call.body
    if body is None:
        return None
    if not isinstance(body, dict):
        raise BadRequest("The body must be a FHIR resource or a Parameters resource (a JSON object)")
    is_parameters = body.get("resourceType") == "Parameters"
    if is_parameters and (call.resource_type != "Parameters" or call.first("resource") is not None):
        if call.first("resource") is None:
            return None
        resource = call.resource("resource")
        if resource is None:
            raise BadRequest(
                "The 'resource' parameter must hold a resource", expression="Parameters.parameter.where(name='resource')"
            )
        return resource
    return body


@operation("validate", levels=("type", "instance"), methods=("GET", "POST"))
async def validate_op(call: OperationCall) -> Response:
    request = call.request
    rtype = call.resource_type
    assert rtype is not None
    mode = call.text("mode")
    if mode is not None and mode not in MODES:
        raise BadRequest(f"mode must be one of {', '.join(MODES)}, not '{mode}'", expression="mode")
    profile = call.text("profile")
    issues: list[Issue] = []

    if mode == "delete":
        if call.resource_id is None:
            raise BadRequest("mode=delete validates an existing instance: use [type]/[id]/$validate", expression="mode")
        await service(request).read(rtype, call.resource_id)
        ok = Issue("information", "informational", f"All OK: {rtype}/{call.resource_id} can be deleted")
        return fhir_response(request, operation_outcome([ok]))

    resource = _resource_from_body(call) if request.method == "POST" else None
    if resource is None:
        if call.resource_id is None:
            raise BadRequest(f"Nothing to validate: POST the {rtype} (or a Parameters with 'resource')")
        stored = await service(request).read(rtype, call.resource_id)
        resource = orjson.loads(stored.content or "{}")

    body_type = resource.get("resourceType")
    if body_type != rtype:
        issues.append(Issue("error", "invalid", f"The resource is a {body_type!r}, but $validate was invoked on {rtype}", "resourceType"))
    if mode == "update":
        if not resource.get("id"):
            issues.append(Issue("error", "required", "An update needs the resource id", f"{rtype}.id"))
        elif call.resource_id is not None and resource.get("id") != call.resource_id:
            issues.append(Issue(
                "error", "invalid",
                f"Resource id '{resource.get('id')}' does not match the id '{call.resource_id}' in the URL", f"{rtype}.id",
            ))
    elif mode == "create" and resource.get("id"):
        issues.append(Issue("information", "informational", "A create ignores the resource id; the server assigns one", f"{rtype}.id"))

    issues += validation_issues_for(resource, profile)
    if not has_errors(issues):
        warned = any(i.severity == "warning" for i in issues)
        issues.append(Issue("information", "informational", "All OK" + (" (with warnings)" if warned else "")))
    return fhir_response(request, operation_outcome(issues))
