"""The checks every write passes before it touches the database.

R4 validation for every write (400 on errors); a resource claiming a project profile in
``meta.profile`` (``fhir_server.profiles``) is also checked against it: 422 Unprocessable Entity
(http.html#update: "the proposed resource violated applicable FHIR profiles"), each issue naming
its element. Other claimed profiles are not followed (validation/README.md).
"""

from __future__ import annotations

from typing import Any

from fhir_server.errors import BadRequest, InvalidResource, Issue, UnprocessableEntity


def validation_issues(resource: dict[str, Any]) -> list[Issue]:
    from fhir_server.validation import validate_resource

    return validate_resource(resource)


def validation_issues_for(resource: dict[str, Any], profile: str | None = None) -> list[Issue]:
    """``$validate``: R4, plus ``profile`` (a project profile, or one the R4 validator knows; unknown:
    a ``not-found`` error) and the project profiles ``meta.profile`` claims."""
    from fhir_server.profiles import claimed_profiles, is_project_profile, profile_issues
    from fhir_server.validation import validate_resource

    urls = claimed_profiles(resource) if isinstance(resource, dict) else []
    if profile and profile.split("|")[0] not in urls:
        if is_project_profile(profile) or urls:
            urls.append(profile)
        else:
            return validate_resource(resource, [profile])
    return profile_issues(resource, urls) if urls else validate_resource(resource)


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
    meta = resource.get("meta")
    if meta and isinstance(meta, dict) and meta.get("profile"):  # costs nothing for other writes
        _check_profiles(resource_type, resource)


def _check_profiles(resource_type: str, resource: dict[str, Any]) -> None:
    from fhir_server.profiles import claimed_profiles, profile_issues

    urls = claimed_profiles(resource)
    if not urls:
        return
    # base R4 was validated just before (check_resource): only the profiles' own pass here
    issues = [i for i in profile_issues(resource, urls, base=False) if i.severity in ("error", "fatal")]
    if issues:
        raise UnprocessableEntity(f"{resource_type} does not conform to {', '.join(urls)}", issues=issues)
