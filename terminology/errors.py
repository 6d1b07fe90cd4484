"""Why a value set cannot be expanded or a hierarchy walked. Plain exceptions: callers (the search
compiler) turn them into their own errors; ``issue_code`` is the OperationOutcome IssueType to use."""

from __future__ import annotations


class TerminologyError(Exception):
    issue_code = "not-supported"


class NotExpandable(TerminologyError):
    """A value set needs something this server does not have (LOINC, SNOMED CT, an unsupported
    filter) or is not known at all."""


class UnknownValueSet(NotExpandable):
    issue_code = "not-found"


class UnknownHierarchy(TerminologyError):
    """``:below`` / ``:above`` on a code system whose hierarchy is not known here."""


class UnknownCode(TerminologyError):
    issue_code = "code-invalid"


class Unresolved(Exception):  # a signal, not an error: deliberately not a TerminologyError
    """A lookup hit a canonical URL (or ``ValueSet/id``) that a tenant may have stored and that has
    not been fetched yet; ``StoredTerminology.run`` fetches it and calls again."""

    def __init__(self, resource_type: str, *, url: str | None = None, id: str | None = None) -> None:
        super().__init__(f"{resource_type} {url or id} not loaded yet")
        self.resource_type, self.url, self.id = resource_type, url, id
