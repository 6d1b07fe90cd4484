"""FHIR errors and the OperationOutcome they become.

One family, one mapping: services raise a ``FhirError``; ``fhir_server.api.errors``
turns it into an OperationOutcome with the right HTTP status
(https://hl7.org/fhir/R4/operationoutcome.html, https://hl7.org/fhir/R4/http.html).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass(frozen=True, slots=True)
class Issue:
    """One OperationOutcome.issue. ``expression`` is a FHIRPath to the element at fault."""

    severity: str  # fatal | error | warning | information
    code: str  # IssueType, e.g. structure, required, value, invariant, code-invalid, not-found
    diagnostics: str
    expression: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"severity": self.severity, "code": self.code, "diagnostics": self.diagnostics}
        if self.expression:
            out["expression"] = [self.expression]
        return out


def operation_outcome(issues: list[Issue], request_id: str | None = None) -> dict[str, Any]:
    outcome: dict[str, Any] = {"resourceType": "OperationOutcome", "issue": [i.to_json() for i in issues]}
    if request_id:
        # the request id lets an operator find the server log line for this answer
        outcome["id"] = request_id
    return outcome


class FhirError(Exception):
    status: ClassVar[int] = 500
    code: ClassVar[str] = "exception"

    def __init__(
        self,
        diagnostics: str,
        *,
        expression: str | None = None,
        issues: list[Issue] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(diagnostics)
        self.diagnostics = diagnostics
        self.issues = issues or [Issue("error", self.code, diagnostics, expression)]
        self.headers = headers or {}


class BadRequest(FhirError):
    status, code = 400, "invalid"


class InvalidResource(FhirError):
    """The resource fails R4 validation; ``issues`` name each element at fault."""

    status, code = 400, "invalid"


class InvalidSearch(FhirError):
    status, code = 400, "invalid"


class Unauthorized(FhirError):
    status, code = 401, "login"


class Forbidden(FhirError):
    status, code = 403, "forbidden"


class ResourceNotFound(FhirError):
    status, code = 404, "not-found"


class MethodNotAllowed(FhirError):
    status, code = 405, "not-supported"


class NotAcceptable(FhirError):
    status, code = 406, "not-supported"


class VersionConflict(FhirError):
    status, code = 409, "conflict"


class ResourceGone(FhirError):
    status, code = 410, "deleted"


class PreconditionFailed(FhirError):
    status, code = 412, "conflict"


class PayloadTooLarge(FhirError):
    status, code = 413, "too-costly"


class UnsupportedMediaType(FhirError):
    status, code = 415, "not-supported"


class UnprocessableEntity(FhirError):
    status, code = 422, "processing"


class NotImplementedInteraction(FhirError):
    status, code = 501, "not-supported"
