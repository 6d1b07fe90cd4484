"""SQL compilation of search parameters (fhir_server.search.compile): shape, binds, errors."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from fhir_server.errors import InvalidSearch
from fhir_server.search.compile import SearchWhere, build_where
from fhir_server.search.query_values import like_escape, split_prefix, split_unescaped, unescape

PLACEHOLDER = re.compile(r"%\((\w+)\)s")


def placeholders(w: SearchWhere) -> set[str]:
    return set(PLACEHOLDER.findall(w.sql))


def check_binds(w: SearchWhere) -> None:
    """Every placeholder but the caller's tenant is bound, and nothing else."""
    used = placeholders(w)
    assert used - {"tenant"} == set(w.binds)
    # no stray percent signs: psycopg would read them as placeholders
    assert "%" not in PLACEHOLDER.sub("", w.sql)


def test_no_params_is_true() -> None:
    """search.html#search: a search without criteria matches every resource of the type."""
    w = build_where("Patient", [])
    assert (w.sql, w.binds, w.warnings) == ("TRUE", {}, [])


def test_token_shapes() -> None:
    """search.html#token: code, system|code, |code, system| and :not."""
    w = build_where("Patient", [("identifier", "http://ids|123")])
    check_binds(w)
    assert w.sql.startswith("EXISTS (SELECT 1 FROM idx_token t WHERE t.tenant_id = %(tenant)s")
    assert "t.resource_type = r.resource_type AND t.resource_id = r.id" in w.sql
    assert set(w.binds.values()) == {"identifier", "http://ids", "123"}
    assert "t.system IS NULL" in build_where("Patient", [("identifier", "|123")]).sql
    w = build_where("Patient", [("identifier", "http://ids|")])
    assert "t.code" not in w.sql and "http://ids" in w.binds.values()
    w = build_where("Patient", [("gender:not", "male")])
    assert w.sql.startswith("NOT EXISTS (SELECT 1 FROM idx_token")


def test_or_and_and() -> None:
    """search.html#combining: commas OR inside one EXISTS, repetition ANDs."""
    w = build_where("Patient", [("gender", "male,female"), ("name", "a"), ("name", "b")])
    check_binds(w)
    assert w.sql.count("EXISTS") == 3
    assert " OR " in w.sql
    assert w.sql.count(" AND EXISTS") == 2


def test_bind_names_unique_and_values_never_inlined() -> None:
    """search.html#escaping + security.html: client values only travel as binds, never in the SQL."""
    evil = "x'); DROP TABLE resource; --"
    w = build_where("Patient", [("name", evil), ("family:exact", evil), ("_id", evil), ("identifier", evil)])
    check_binds(w)
    assert "DROP" not in w.sql
    assert len(w.binds) == len(set(w.binds))
    names = PLACEHOLDER.findall(w.sql)
    assert all(n == "tenant" or n.startswith("p") for n in names)


def test_escaping() -> None:
    """search.html#escaping: \\, \\| \\$ \\\\ are literal."""
    assert split_unescaped(r"a\,b,c", ",") == [r"a\,b", "c"]
    assert unescape(r"a\,b\|c\$d\\e") == "a,b|c$d\\e"
    assert unescape(r"a\nb") == r"a\nb"
    w = build_where("Patient", [("family", r"van\,der")])
    assert "van,der%" in w.binds.values()
    w = build_where("Patient", [("telecom", r"555\|999")])
    assert "555|999" in w.binds.values()


def test_string_modifiers_and_like_escaping() -> None:
    """search.html#string: starts-with on normalised text, :exact, :contains; LIKE wildcards are literal."""
    w = build_where("Patient", [("name", "Mül_%")])
    assert "t.value_norm LIKE" in w.sql and r"mul\_\%%" in w.binds.values()
    w = build_where("Patient", [("name:exact", "Müller")])
    assert "t.value_exact = " in w.sql and "Müller" in w.binds.values()
    w = build_where("Patient", [("name:contains", "ül")])
    assert "%ul%" in w.binds.values()
    assert like_escape("a%b_c\\") == "a\\%b\\_c\\\\"


def test_missing() -> None:
    """search.html#modifiers :missing=true|false."""
    w = build_where("Patient", [("birthdate:missing", "true")])
    assert w.sql.startswith("NOT EXISTS (SELECT 1 FROM idx_date")
    w = build_where("Patient", [("birthdate:missing", "false")])
    assert w.sql.startswith("EXISTS (SELECT 1 FROM idx_date")
    w = build_where("Patient", [("general-practitioner:missing", "false")])
    assert "idx_reference" in w.sql and "idx_token" in w.sql and "general-practitioner:identifier" in w.binds.values()
    with pytest.raises(InvalidSearch, match="birthdate:missing"):
        build_where("Patient", [("birthdate:missing", "maybe")])


def test_date_prefixes_bind_ranges() -> None:
    """search.html#prefix: date values become [low, high] ranges at their precision."""
    w = build_where("Patient", [("birthdate", "ge2024-03")])
    check_binds(w)
    assert datetime(2024, 3, 1, tzinfo=UTC) in w.binds.values()
    assert datetime(2024, 3, 31, 23, 59, 59, 999999, tzinfo=UTC) in w.binds.values()
    for prefix in ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"):
        check_binds(build_where("Patient", [("birthdate", f"{prefix}2024")]))
    # '+' of a timezone arrives as a space after URL decoding
    w = build_where("Observation", [("date", "2024-01-01T10:00:00 02:00")])
    assert datetime(2024, 1, 1, 8, tzinfo=UTC) in w.binds.values()


def test_ap_uses_now() -> None:
    """search.html#prefix ap: 10% of the gap between now and the value."""
    now = datetime(2025, 1, 1, tzinfo=UTC)
    w = build_where("Patient", [("birthdate", "ap2005")], now=now)
    lo, hi = sorted(v for v in w.binds.values() if isinstance(v, datetime))
    assert lo.year == 2003 and hi.year == 2007  # gap 19.5 years -> 1.95 either side


def test_last_updated_and_id_use_resource_row() -> None:
    """search.html#all: _id and _lastUpdated are columns of the resource row."""
    w = build_where("Patient", [("_id", "a,b"), ("_lastUpdated", "gt2024-01-01")])
    check_binds(w)
    assert "r.id = ANY(" in w.sql and ["a", "b"] in w.binds.values()
    assert "r.last_updated >" in w.sql and "idx_date" not in w.sql
    assert "r.id <> ALL(" in build_where("Patient", [("_id:not", "a")]).sql


def test_number_and_quantity() -> None:
    """search.html#number / #quantity: precision ranges, value|system|code, value||code."""
    w = build_where("RiskAssessment", [("probability", "0.35")])
    assert {Decimal("0.345"), Decimal("0.355")} <= set(w.binds.values())
    w = build_where("Observation", [("value-quantity", "gt5.4|http://unitsofmeasure.org|mg")])
    check_binds(w)
    assert "t.system = " in w.sql and "t.code = " in w.sql and Decimal("5.4") in w.binds.values()
    w = build_where("Observation", [("value-quantity", "5.4||mg")])
    assert "(t.code = %(p" in w.sql and "OR t.unit = " in w.sql
    w = build_where("Observation", [("value-quantity", "lt5")])
    assert "'NaN'::numeric" in w.sql


def test_reference_shapes() -> None:
    """search.html#reference: id, Type/id, versioned, absolute URL, :Type, :identifier, base URL."""
    w = build_where("Observation", [("subject", "123")])
    assert "t.target_id = " in w.sql and "t.target_type" not in w.sql
    w = build_where("Observation", [("subject", "Patient/123/_history/2")])
    assert {"Patient", "123", "2"} <= set(w.binds.values()) and "t.target_version" in w.sql
    w = build_where("Observation", [("subject", "http://x.org/fhir/Patient/1")])
    assert "t.url = " in w.sql and "http://x.org/fhir/Patient/1" in w.binds.values()
    w = build_where("Observation", [("subject", "http://me/fhir/Patient/1")], base_url="http://me/fhir")
    assert "t.url" not in w.sql and "t.target_type = " in w.sql
    w = build_where("Observation", [("subject:Patient", "1")])
    assert {"Patient", "1"} <= set(w.binds.values())
    w = build_where("Observation", [("subject:identifier", "http://ids|9")])
    assert "FROM idx_token" in w.sql and "subject:identifier" in w.binds.values()
    w = build_where("QuestionnaireResponse", [("questionnaire", "http://q.org/Questionnaire/q|2.0")])
    assert "t.target_version = " in w.sql and "2.0" in w.binds.values()


def test_uri_modifiers() -> None:
    """search.html#uri: exact, :below, :above."""
    assert "t.value = " in build_where("ValueSet", [("url", "http://a/b")]).sql
    w = build_where("ValueSet", [("url:below", "http://a/b/")])
    assert "http://a/b/%" in w.binds.values()
    w = build_where("ValueSet", [("url:above", "http://a/b/c")])
    assert "starts_with(" in w.sql


def test_warnings_for_unknown_or_unsupported_params() -> None:
    """search.html#errors: unknown parameters are ignored (lenient handling) with a warning."""
    w = build_where("Patient", [("nope", "x"), ("_query", "x"), ("name", "")])
    assert w.sql == "TRUE"
    assert len(w.warnings) == 3
    assert all(i.severity == "warning" for i in w.warnings)
    assert "nope" in w.warnings[0].diagnostics
    w = build_where("Location", [("near", "1|2|3|km")])
    assert w.sql == "TRUE" and w.warnings


@pytest.mark.parametrize(
    ("rtype", "params", "fragment"),
    [
        ("Patient", [("birthdate", "1974-13")], "birthdate"),
        ("Patient", [("birthdate", "xx1974")], "birthdate"),
        ("Patient", [("birthdate", "around1974")], "birthdate"),
        ("Patient", [("name:foo", "x")], "name:foo"),
        ("Patient", [("name:below", "x")], "name:below"),
        ("Patient", [("gender:in", "http://vs")], "gender:in"),
        ("Patient", [("gender:exact", "male")], "gender:exact"),
        ("Patient", [("birthdate:exact", "2024")], "birthdate:exact"),
        ("Patient", [("identifier", "a|b|c")], "identifier"),
        ("Observation", [("value-quantity", "abc")], "value-quantity"),
        ("Observation", [("value-quantity", "1|mg")], "value-quantity"),
        ("RiskAssessment", [("probability", "1,5x")], "probability"),
        ("Observation", [("subject:Medication", "1")], "subject:Medication"),
        ("Observation", [("subject", "Medication/1")], "subject"),
        ("Observation", [("subject", "not/a/ref")], "subject"),
        ("Patient", [("_lastUpdated:missing", "true")], "_lastUpdated"),
        ("Patient", [("_lastUpdated", "yesterday")], "_lastUpdated"),
        ("Patient", [("_id:exact", "1")], "_id"),
    ],
)
def test_invalid_search(rtype: str, params: list[tuple[str, str]], fragment: str) -> None:
    """search.html#errors: bad values, prefixes and modifiers are rejected naming the parameter."""
    with pytest.raises(InvalidSearch) as exc:
        build_where(rtype, params)
    assert fragment in exc.value.diagnostics
    assert exc.value.status == 400


def test_prefix_parsing() -> None:
    """search.html#prefix: two-letter prefixes; other letters are an error."""
    assert split_prefix("ge2024") == ("ge", "2024")
    assert split_prefix("2024") == (None, "2024")
    assert split_prefix("-5") == (None, "-5")
    assert split_prefix("xx5")[0] == "??"


def test_text_on_narrative() -> None:
    """search.html#_text, #_content: full text (websearch_to_tsquery('simple')) on idx_text documents."""
    w = build_where("Patient", [("_text", "Chalmers,Café")])
    assert "FROM idx_text t" in w.sql and "websearch_to_tsquery('simple'" in w.sql
    assert {"_text", "chalmers", "cafe"} <= set(w.binds.values())
    assert build_where("Bundle", [("_text", "x")]).sql == "TRUE"
    assert "idx_text" in build_where("Bundle", [("_content", "x")]).sql
    assert build_where("Patient", [("_content:missing", "true")]).sql.startswith("NOT EXISTS")
    with pytest.raises(InvalidSearch):
        build_where("Patient", [("_text:exact", "x")])
