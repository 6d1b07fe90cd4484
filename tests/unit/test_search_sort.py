"""_sort keys and keyset conditions (https://hl7.org/fhir/R4/search.html#sort, http.html#paging)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from fhir_server.errors import BadRequest
from fhir_server.search.paging import PageToken, SortKey, after_condition, decode_page, encode_page, order_by
from fhir_server.search.sort import build_sort


def _binder() -> tuple[dict[str, object], object]:
    binds: dict[str, object] = {}

    def bind(v: object) -> str:
        binds[f"b{len(binds)}"] = v
        return f"%(b{len(binds) - 1})s"

    return binds, bind


def test_sort_keys_bind_the_parameter_code_and_scope_the_tenant() -> None:
    """search.html#sort: one correlated subquery per key, min for ascending, max for descending."""
    binds, bind = _binder()
    spec = build_sort(["Patient"], ["-birthdate,family", "shoe-size"], bind)  # type: ignore[arg-type]
    assert spec.applied == ["-birthdate", "family"] and len(spec.warnings) == 1
    assert list(binds.values()) == ["birthdate", "family"]
    date_key, family_key, id_key = spec.keys
    assert "max(t.high)" in date_key.sql and date_key.desc and "%(tenant)s" in date_key.sql
    assert "min(t.value_norm)" in family_key.sql and not family_key.desc
    assert id_key.sql == "r.id" and not id_key.desc


def test_default_order_and_system_tiebreak() -> None:
    """search.html#sort: without _sort, last_updated desc then id; several types add resource_type."""
    _, bind = _binder()
    assert [k.sql for k in build_sort(["Patient"], [], bind).keys] == ["r.last_updated", "r.id"]  # type: ignore[arg-type]
    keys = build_sort(["Patient", "Group"], ["_id"], bind).keys  # type: ignore[arg-type]
    assert [k.sql for k in keys] == ["r.id", "r.resource_type"]
    assert build_sort([], ["family"], bind).warnings  # type: ignore[arg-type]


def test_after_condition_is_null_aware_in_both_directions() -> None:
    """http.html#paging: resume strictly after the boundary row, NULLs last going forward."""
    keys = [SortKey("x", False, "text"), SortKey("r.id", False, "text", nullable=False)]
    binds, bind = _binder()
    fwd = after_condition(keys, ["a", "b"], ("v", "id1"), False, bind)  # type: ignore[arg-type]
    assert fwd == "(((a > %(b0)s::text OR a IS NULL)) OR (a = %(b0)s::text AND b > %(b1)s::text))"
    assert binds == {"b0": "v", "b1": "id1"}
    _, bind = _binder()
    assert after_condition(keys, ["a", "b"], (None, "id1"), False, bind) == "((a IS NULL AND b > %(b0)s::text))"  # type: ignore[arg-type]
    _, bind = _binder()
    back = after_condition(keys, ["a", "b"], (None, "id1"), True, bind)  # type: ignore[arg-type]
    assert back == "((a IS NOT NULL) OR (a IS NULL AND b < %(b0)s::text))"
    assert order_by(keys, ["a", "b"], True) == "a DESC NULLS FIRST, b DESC"
    default = [SortKey("t", True, "timestamptz", False), SortKey("i", True, "text", False)]
    _, bind = _binder()
    assert after_condition(default, ["t", "i"], (1, 2), False, bind) == "(t, i) < (%(b0)s::timestamptz, %(b1)s::text)"  # type: ignore[arg-type]


def test_page_token_round_trip_and_shape_check() -> None:
    keys = [SortKey("d", True, "timestamptz"), SortKey("n", False, "numeric"), SortKey("r.id", False, "text", False)]
    tok = PageToken(True, (datetime(2024, 1, 2, tzinfo=UTC), Decimal("1.50"), "abc"))
    assert decode_page(encode_page(tok), keys) == tok
    assert decode_page(encode_page(PageToken(False, (None, None, "x"))), keys).values == (None, None, "x")
    with pytest.raises(BadRequest):
        decode_page(encode_page(tok), keys[1:])
    with pytest.raises(BadRequest):
        decode_page(encode_page(PageToken(False, ("x", Decimal(1), "x"))), keys)
    with pytest.raises(BadRequest):
        decode_page(encode_page(PageToken(False, (None, None, None))), keys)
    with pytest.raises(BadRequest):
        decode_page("!!", keys)
