"""search.html#combining: repeated (AND) criteria on one date parameter. For a single-valued element
(one index row per resource) the compiler tests them in one EXISTS; for a repeating or choice element
it keeps one EXISTS per criterion (each may match a different value)."""

from __future__ import annotations

from fhir_server.search.cardinality import single_valued
from fhir_server.search.compile import build_where
from fhir_server.search.registry import get_registry


def expression(resource_type: str, code: str) -> str | None:
    sp = get_registry().get(resource_type, code)
    assert sp is not None
    return sp.expression


def test_single_valued_elements() -> None:
    assert single_valued("Patient", expression("Patient", "birthdate"))
    assert single_valued("Appointment", expression("Appointment", "date"))
    assert single_valued("Encounter", expression("Encounter", "date"))  # Encounter.period: one Period


def test_repeating_and_choice_elements_are_not_single_valued() -> None:
    assert not single_valued("Patient", expression("Patient", "death-date"))  # deceased[x] choice
    assert not single_valued("Observation", expression("Observation", "date"))  # effective[x]
    assert not single_valued("Condition", expression("Condition", "onset-date"))
    assert not single_valued("Patient", None)


def test_birthdate_range_is_one_exists() -> None:
    where = build_where("Patient", [("birthdate", "ge1990-01-01"), ("birthdate", "lt1990-02-01")])
    assert where.sql.count("EXISTS") == 1


def test_repeating_date_keeps_one_exists_per_criterion() -> None:
    where = build_where("Observation", [("date", "ge2020-01-01"), ("date", "lt2020-02-01")])
    assert where.sql.count("EXISTS") == 2


def test_or_values_and_modifiers_are_not_merged() -> None:
    assert build_where("Patient", [("birthdate", "ge1990,1991"), ("birthdate", "lt1992")]).sql.count("EXISTS") == 2
    assert build_where("Patient", [("birthdate:missing", "false"), ("birthdate", "lt1992")]).sql.count("EXISTS") == 2
