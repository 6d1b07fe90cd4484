"""The packaged terminology: ValueSet expansion and is-a hierarchies (terminology/)."""

from __future__ import annotations

import gzip
import json
from functools import partial
from pathlib import Path
from typing import Any

import pytest

import terminology
from fhir_server.errors import InvalidSearch
from fhir_server.search.compile import build_where
from terminology import NotExpandable, StoredTerminology, Terminology, UnknownHierarchy, UnknownValueSet
from terminology.model import codesystem_from_resource, compact_codesystem, valueset_from_resource
from tests.conftest import ROOT, SHARED_DATA

OBS_CAT = "http://terminology.hl7.org/CodeSystem/observation-category"
CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
ROLE_CODE = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"
LOINC = "http://loinc.org"


def _vs(url: str, *include: dict[str, Any], exclude: tuple[dict[str, Any], ...] = (), **extra: Any) -> dict[str, Any]:
    compose: dict[str, Any] = {"include": list(include)}
    if exclude:
        compose["exclude"] = list(exclude)
    return {"resourceType": "ValueSet", "url": url, "status": "active", "compose": compose, **extra}


def _cs(url: str, concepts: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "CodeSystem",
        "url": url,
        "status": "active",
        "content": "complete",
        "concept": concepts,
        **extra,
    }


TREE = _cs(
    "http://example.org/cs/tree",
    [
        {
            "code": "animal",
            "concept": [
                {"code": "mammal", "concept": [{"code": "dog"}, {"code": "cat"}]},
                {"code": "bird", "concept": [{"code": "owl"}]},
            ],
        },
        {"code": "plant"},
    ],
)


def _local(*resources: dict[str, Any]) -> Terminology:
    cs = [codesystem_from_resource(r) for r in resources if r["resourceType"] == "CodeSystem"]
    vs = [valueset_from_resource(r) for r in resources if r["resourceType"] == "ValueSet"]
    return Terminology(cs, vs)


# -- packaged R4 definitions -------------------------------------------------------------------
def test_whole_system_include_expands_observation_category() -> None:
    """valueset.html#expansion: compose.include of a whole code system = all its codes
    (ValueSet/observation-category includes http://terminology.hl7.org/CodeSystem/observation-category)."""
    codes = terminology.expand("http://hl7.org/fhir/ValueSet/observation-category")
    assert codes == {
        (OBS_CAT, c)
        for c in (
            "social-history",
            "vital-signs",
            "imaging",
            "laboratory",
            "procedure",
            "survey",
            "exam",
            "therapy",
            "activity",
        )
    }


def test_version_is_part_of_the_canonical() -> None:
    """search.html#token :in takes a canonical URL, which may carry |version (references.html#canonical)."""
    url = "http://hl7.org/fhir/ValueSet/administrative-gender"
    assert terminology.expand(url, "4.0.1") == terminology.expand(url)
    assert terminology.expand(url, "3.0.2") is None


def test_is_a_filter_with_exclude() -> None:
    """valueset.html#compose: filter is-a on a hierarchical v3 code system, minus an excluded concept
    (v3-ActEncounterCode = is-a _ActEncounterCode, _ActEncounterCode itself excluded)."""
    codes = terminology.expand("http://terminology.hl7.org/ValueSet/v3-ActEncounterCode")
    assert codes is not None and (ACT_CODE, "AMB") in codes and (ACT_CODE, "IMP") in codes
    assert (ACT_CODE, "_ActEncounterCode") not in codes
    assert {s for s, _ in codes} == {ACT_CODE}


def test_nested_concepts_are_an_is_a_hierarchy() -> None:
    """codesystem.html (CodeSystem.concept.concept, hierarchyMeaning is-a): condition-clinical has
    recurrence and relapse under active."""
    assert terminology.descendants(CLINICAL, "active") == {"active", "recurrence", "relapse"}
    assert terminology.ancestors(CLINICAL, "relapse") == {"relapse", "active"}
    assert terminology.descendants(CLINICAL, "resolved") == {"resolved"}


def test_v3_second_parents_from_the_child_property() -> None:
    """The v3 code systems give a concept's further parents with the ``child`` concept property:
    MTH (mother) is a PRN (parent), which is a FAMMEMB (family member)."""
    assert {"MTH", "PRN", "FAMMEMB"} <= terminology.ancestors(ROLE_CODE, "MTH")  # type: ignore[operator]
    below = terminology.descendants(ROLE_CODE, "PRN")
    assert below is not None and {"PRN", "MTH", "FTH", "STPMTH"} <= below and "SIS" not in below


def test_value_set_needing_loinc_or_snomed_is_not_expandable() -> None:
    """LOINC and SNOMED CT are not shipped (LOINC terms of use; SNOMED CT is content not-present)."""
    with pytest.raises(NotExpandable, match="http://loinc.org"):
        terminology.packaged().expand("http://hl7.org/fhir/ValueSet/observation-codes")
    with pytest.raises(NotExpandable, match="http://snomed.info/sct"):
        terminology.packaged().expand("http://hl7.org/fhir/ValueSet/condition-code")
    assert terminology.expand("http://hl7.org/fhir/ValueSet/observation-codes") is None
    with pytest.raises(UnknownHierarchy, match="loinc"):
        terminology.packaged().descendants(LOINC, "8480-6")


def test_stored_expansion_is_used_as_is() -> None:
    """valueset.html#expansion: ValueSet/example-expansion lists LOINC codes in its expansion, so it is
    usable although its compose (a LOINC filter) is not."""
    codes = terminology.expand("http://hl7.org/fhir/ValueSet/example-expansion")
    assert codes is not None and (LOINC, "14647-2") in codes


def test_unknown_value_set() -> None:
    with pytest.raises(UnknownValueSet):
        terminology.packaged().expand("http://example.org/fhir/ValueSet/nothing-here")


# -- compose features on small value sets ---------------------------------------------------------
def test_listed_concepts_need_no_code_system() -> None:
    """valueset.html#compose: include.concept enumerates codes, so LOINC codes can be listed without LOINC."""
    t = _local(_vs("http://example.org/vs/bp", {"system": LOINC, "concept": [{"code": "8480-6"}, {"code": "8462-4"}]}))
    assert t.expand("http://example.org/vs/bp") == {(LOINC, "8480-6"), (LOINC, "8462-4")}


@pytest.mark.parametrize(
    ("op", "value", "codes"),
    [
        ("is-a", "mammal", {"mammal", "dog", "cat"}),
        ("descendent-of", "mammal", {"dog", "cat"}),
        ("is-not-a", "animal", {"plant"}),
        ("generalizes", "owl", {"owl", "bird", "animal"}),
        ("=", "cat", {"cat"}),
        ("in", "cat,owl", {"cat", "owl"}),
    ],
)
def test_concept_filters(op: str, value: str, codes: set[str]) -> None:
    """valueset.html#compose / codesystem.html#filters: filter on the concept property."""
    t = _local(
        TREE,
        _vs(
            "http://example.org/vs/f",
            {"system": TREE["url"], "filter": [{"property": "concept", "op": op, "value": value}]},
        ),
    )
    assert t.expand("http://example.org/vs/f") == {(TREE["url"], c) for c in codes}


def test_several_filters_and_together() -> None:
    """valueset.html#compose: "If multiple filters are specified, they SHALL all be true"."""
    t = _local(
        TREE,
        _vs(
            "http://example.org/vs/f",
            {
                "system": TREE["url"],
                "filter": [
                    {"property": "concept", "op": "is-a", "value": "animal"},
                    {"property": "concept", "op": "is-not-a", "value": "mammal"},
                ],
            },
        ),
    )
    assert {c for _, c in t.expand("http://example.org/vs/f")} == {"animal", "bird", "owl"}


def test_value_set_imports_union_and_intersect() -> None:
    """valueset.html#compose: include.valueSet imports; with a system as well, the intersection."""
    url = TREE["url"]
    t = _local(
        TREE,
        _vs(
            "http://example.org/vs/mammals",
            {"system": url, "filter": [{"property": "concept", "op": "is-a", "value": "mammal"}]},
        ),
        _vs("http://example.org/vs/pets", {"system": url, "concept": [{"code": "dog"}, {"code": "owl"}]}),
        _vs(
            "http://example.org/vs/union",
            {"valueSet": ["http://example.org/vs/mammals"]},
            {"valueSet": ["http://example.org/vs/pets"]},
        ),
        _vs(
            "http://example.org/vs/both", {"valueSet": ["http://example.org/vs/mammals", "http://example.org/vs/pets"]}
        ),
        _vs("http://example.org/vs/self", {"valueSet": ["http://example.org/vs/self"]}),
    )
    assert {c for _, c in t.expand("http://example.org/vs/union")} == {"mammal", "dog", "cat", "owl"}
    assert {c for _, c in t.expand("http://example.org/vs/both")} == {"dog"}
    with pytest.raises(NotExpandable, match="itself"):
        t.expand("http://example.org/vs/self")


def test_unsupported_filter_and_partial_code_system_are_not_expandable() -> None:
    frag = _cs("http://example.org/cs/frag", [{"code": "a"}], content="fragment")
    t = _local(
        TREE,
        frag,
        _vs(
            "http://example.org/vs/regex",
            {"system": TREE["url"], "filter": [{"property": "concept", "op": "regex", "value": "d.*"}]},
        ),
        _vs("http://example.org/vs/frag", {"system": frag["url"]}),
    )
    with pytest.raises(NotExpandable, match="regex"):
        t.expand("http://example.org/vs/regex")
    with pytest.raises(NotExpandable, match="fragment"):
        t.expand("http://example.org/vs/frag")


def test_paged_expansion_is_not_taken_as_whole() -> None:
    """valueset.html#expansion: an expansion with total > its contains is a page, not the value set."""
    vs = {
        "resourceType": "ValueSet",
        "url": "http://example.org/vs/p",
        "expansion": {"total": 10, "contains": [{"system": LOINC, "code": "1-8"}]},
    }
    with pytest.raises(NotExpandable):
        _local(vs).expand("http://example.org/vs/p")


def test_parent_and_child_properties_add_links() -> None:
    """codesystem.html#defined-props: parent / child concept properties."""
    cs = _cs(
        "http://example.org/cs/poly",
        [
            {"code": "a", "concept": [{"code": "c"}]},
            {"code": "b", "property": [{"code": "child", "valueCode": "c"}]},
            {"code": "d", "property": [{"code": "parent", "valueCode": "c"}]},
        ],
    )
    data = codesystem_from_resource(cs)
    assert data.ancestors("d") == {"d", "c", "a", "b"}
    assert data.descendants("b") == {"b", "c", "d"}
    assert compact_codesystem(cs)["codes"] == ["a", "c", "b", "d"]


# -- stored resources through the fetch callback -----------------------------------------------------
class _Store:
    """An in-memory stand-in for one tenant's stored conformance resources (the real one is SQL,
    tested over HTTP in tests/integration/test_search_terminology.py)."""

    def __init__(self, *resources: dict[str, Any]) -> None:
        self.resources = list(resources)
        self.calls: list[tuple[str, str | None, str | None]] = []

    async def fetch(self, resource_type: str, *, url: str | None = None, id: str | None = None) -> list[dict]:
        self.calls.append((resource_type, url, id))
        return [
            r
            for r in self.resources
            if r["resourceType"] == resource_type
            and ((url is not None and r.get("url") == url) or (id is not None and r.get("id") == id))
        ]


async def test_stored_value_set_over_stored_code_system_is_fetched_on_demand() -> None:
    """search.html#token :in with a stored ValueSet whose compose uses a stored CodeSystem."""
    store = _Store(
        {**TREE, "id": "cs1"},
        {
            **_vs(
                "http://example.org/vs/m",
                {"system": TREE["url"], "filter": [{"property": "concept", "op": "is-a", "value": "mammal"}]},
            ),
            "id": "vs1",
        },
    )
    view = terminology.stored(store.fetch)
    assert await view.run(lambda terminology: terminology.expand_reference("ValueSet/vs1")) == {
        (TREE["url"], c) for c in ("mammal", "dog", "cat")
    }
    assert store.calls == [("ValueSet", None, "vs1"), ("CodeSystem", TREE["url"], None)]
    # by canonical URL, and :below on the stored code system
    assert (TREE["url"], "cat") in await view.run(lambda terminology: terminology.expand("http://example.org/vs/m"))
    assert await view.run(lambda terminology: terminology.descendants(TREE["url"], "bird")) == {"bird", "owl"}


async def test_packaged_definitions_are_not_fetched_and_win() -> None:
    """The R4 value sets cannot be redefined by a tenant: no lookup for packaged URLs."""
    url = "http://hl7.org/fhir/ValueSet/administrative-gender"
    store = _Store(_vs(url, {"system": "http://example.org/cs/x", "concept": [{"code": "x"}]}))
    view = terminology.stored(store.fetch)
    codes = await view.run(lambda terminology: terminology.expand(url))
    assert ("http://hl7.org/fhir/administrative-gender", "male") in codes and store.calls == []


async def test_missing_stored_resources_end_in_not_expandable() -> None:
    store = _Store(_vs("http://example.org/vs/loinc-all", {"system": LOINC}))
    view = terminology.stored(store.fetch)
    with pytest.raises(NotExpandable, match="loinc"):
        await view.run(lambda terminology: terminology.expand("http://example.org/vs/loinc-all"))
    with pytest.raises(UnknownValueSet):
        await view.run(lambda terminology: terminology.expand_reference("ValueSet/nope"))


async def test_fetches_are_bounded() -> None:
    """A chain of imports longer than the fetch budget ends as not expandable, not in a loop."""
    chain = [_vs(f"http://example.org/vs/{i}", {"valueSet": [f"http://example.org/vs/{i + 1}"]}) for i in range(50)]
    store = _Store(*chain)
    view = StoredTerminology(store.fetch, terminology.packaged(), max_fetches=5)
    with pytest.raises(NotExpandable):
        await view.run(lambda terminology: terminology.expand("http://example.org/vs/0"))
    assert len(store.calls) == 5


# -- the search compiler ---------------------------------------------------------------------------
def test_in_compiles_to_bound_arrays() -> None:
    """search.html#token :in: every code is a bind, none is spliced into the SQL text."""
    where = build_where("Observation", [("category:in", "http://hl7.org/fhir/ValueSet/observation-category")])
    assert "vital-signs" not in where.sql and "= ANY(" in where.sql
    assert [
        "activity",
        "exam",
        "imaging",
        "laboratory",
        "procedure",
        "social-history",
        "survey",
        "therapy",
        "vital-signs",
    ] in where.binds.values()
    not_in = build_where("Observation", [("category:not-in", "http://hl7.org/fhir/ValueSet/observation-category")])
    assert not_in.sql.startswith("NOT EXISTS")


def test_compile_errors_name_the_parameter_and_value_set() -> None:
    """search.html#token: "where terminology allows; otherwise" an OperationOutcome naming what failed."""
    with pytest.raises(InvalidSearch) as e:
        build_where("Observation", [("code:in", "http://hl7.org/fhir/ValueSet/observation-codes")])
    issue = e.value.issues[0]
    assert issue.code == "not-supported" and "code:in" in issue.diagnostics
    assert "http://hl7.org/fhir/ValueSet/observation-codes" in issue.diagnostics
    with pytest.raises(InvalidSearch, match="hierarchy"):
        build_where("Observation", [("code:below", f"{LOINC}|8480-6")])
    with pytest.raises(InvalidSearch, match="system\\|code"):
        build_where("Encounter", [("class:below", "AMB")])


async def test_compile_with_stored_view() -> None:
    store = _Store(
        {
            **_vs(
                "http://example.org/vs/g",
                {"system": "http://hl7.org/fhir/administrative-gender", "concept": [{"code": "female"}]},
            ),
            "id": "g1",
        }
    )
    view = terminology.stored(store.fetch)
    where = await view.run(partial(build_where, "Patient", [("gender:in", "ValueSet/g1")]))
    assert ["female"] in where.binds.values()


# -- the packaged data file -------------------------------------------------------------------------
@pytest.mark.skipif(not (SHARED_DATA / "fhir-r4").exists(), reason="shared reference data not available")
def test_packaged_data_is_what_the_build_tool_makes(tmp_path: Path) -> None:
    """terminology/data/terminology.json.gz is reproducible from tools/build_terminology.py."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_terminology", ROOT / "tools" / "build_terminology.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    out = tmp_path / "t.json.gz"
    stats = module.build(SHARED_DATA / "fhir-r4", out)
    assert out.read_bytes() == terminology.DATA_FILE.read_bytes()
    assert stats["codesystems"] > 1000 and stats["valuesets"] > 1300
    with gzip.open(out, "rt") as fh:
        assert json.load(fh)["fhirVersion"] == "4.0.1"


def test_project_definitions_are_loaded_and_win(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """terminology/codesystems/*.json (and valuesets/): the project's own definitions, loaded with
    the packaged data and preferred over an R4 definition with the same URL."""
    (tmp_path / "ours.json").write_text(json.dumps(TREE))
    override = _cs(CLINICAL, [{"code": "active"}])
    (tmp_path / "bundle.json").write_text(
        json.dumps({"resourceType": "Bundle", "type": "collection", "entry": [{"resource": override}]})
    )
    monkeypatch.setattr(terminology, "LOCAL_DIRS", (tmp_path,))
    t = terminology.packaged.__wrapped__()  # type: ignore[attr-defined]
    assert t.descendants(TREE["url"], "mammal") == {"mammal", "dog", "cat"}
    assert t.codesystem(CLINICAL).codes == {"active"}  # type: ignore[union-attr]
    assert t.expand("http://hl7.org/fhir/ValueSet/administrative-gender")  # the R4 data is still there
