"""The checks every write passes before it touches the database."""

from __future__ import annotations

from typing import Any

from fhir_server.errors import BadRequest, InvalidResource, Issue


def validation_issues(resource: dict[str, Any]) -> list[Issue]:
    from fhir_server.validation import validate_resource

    return validate_resource(resource)


def check_resource(resource_type: str, resource: Any, *, id_required: bool) -> None:
    """The body must be a ``resource_type`` (http.html#create, #update) and valid R4."""
    if not isinstance(resource, dict):
        raise BadRequest("The request body must be a JSON object holding a FHIR resource")
    body_type = resource.get("resourceType")
    if body_type != resource_type:
        raise BadRequest(
            f"The body is a {body_type!r} resource but the URL is for {resource_type}",
            expression="resourceType",
        )
    if id_required and not resource.get("id"):
        raise BadRequest(f"An update must carry the resource id in {resource_type}.id", expression=f"{resource_type}.id")
    issues = validation_issues(resource)
    if any(i.severity in ("error", "fatal") for i in issues):
        raise InvalidResource(f"{resource_type} failed validation against FHIR R4", issues=issues)
