"""The project's own conformance resources: StructureDefinitions (extensions and profiles),
CodeSystems and ValueSets under ``https://fhir-server.example.org/fhir/`` — loaded from the packaged
JSON, checked on writes that claim a project profile (``meta.profile``) and by ``$validate?profile=``,
and served read-only in every tenant. See README.md in this folder.

    from fhir_server.profiles import catalog, claimed_profiles, profile_issues
    urls = claimed_profiles(resource)              # the project profiles in meta.profile ([] mostly)
    issues = profile_issues(resource, urls)        # R4 + profile issues (fhir_server.errors.Issue)
"""

from __future__ import annotations

from .catalog import BASE, Catalog, catalog
from .check import claimed_profiles, is_project_profile, profile_issues

__all__ = ["BASE", "Catalog", "catalog", "claimed_profiles", "is_project_profile", "profile_issues"]
