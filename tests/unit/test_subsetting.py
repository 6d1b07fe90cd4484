"""_summary and _elements (https://hl7.org/fhir/R4/search.html#summary, #elements)."""

from __future__ import annotations

import pytest

from fhir_server.api.subsetting import select_elements, summarize
from fhir_server.errors import BadRequest

OBS = {
    "resourceType": "Observation", "id": "o1", "meta": {"versionId": "1"},
    "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>"},
    "status": "final", "code": {"text": "Hb"}, "valueQuantity": {"value": 13.2}, "note": [{"text": "n"}],
}


def _tagged(r: dict) -> bool:
    return any(t["code"] == "SUBSETTED" for t in r["meta"]["tag"])


def test_summary_true_keeps_summary_elements_including_choice_types() -> None:
    out = summarize(OBS, "true")
    assert "valueQuantity" in out and "status" in out and "code" in out
    assert "note" not in out and "text" not in out and _tagged(out)


def test_summary_text_keeps_text_and_mandatory() -> None:
    out = summarize(OBS, "text")
    assert "text" in out and "status" in out and "code" in out and "valueQuantity" not in out


def test_summary_data_drops_text_only() -> None:
    out = summarize(OBS, "data")
    assert "text" not in out and "note" in out


def test_summary_false_is_unchanged_and_bad_mode_400() -> None:
    assert summarize(OBS, "false") is OBS
    with pytest.raises(BadRequest):
        summarize(OBS, "maybe")


def test_elements_keeps_asked_and_mandatory_elements() -> None:
    out = select_elements(OBS, "value,Observation.note")
    assert set(out) == {"resourceType", "id", "meta", "status", "code", "valueQuantity", "note"}
    assert _tagged(out)
