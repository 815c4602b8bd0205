"""Screening tools: thresholds, shipped Questionnaires, and the published accuracy figures.

The 2×2 tables are the reconstructions of the domain brief §2.1 (back-calculated from the
abstracts; the sources do not print them). Each published figure is checked at the precision it
was published with: `_pct(x, 1)` is x as a percentage rounded to one decimal place, etc.
"""

from __future__ import annotations

import json
import math
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import pytest

from msht_cds.library.evaluate import scored_items, screening_score
from msht_cds.screening import (
    QYIT,
    SSCST,
    TOOLS,
    AccuracyTable,
    ScreeningTool,
    is_positive,
    score,
    tool_for,
)

QUESTIONNAIRES = Path(__file__).resolve().parents[1] / "pathways" / "questionnaires"


def _round(value: float, places: int) -> Decimal:
    """Round half up, as papers do (Python's round() is banker's rounding on floats)."""
    quantum = Decimal(1).scaleb(-places)
    return Decimal(repr(value)).quantize(quantum, rounding=ROUND_HALF_UP)


def _pct(proportion: float, places: int) -> Decimal:
    return _round(proportion * 100, places)


def _response(tool: ScreeningTool, yes: int, *, total: int | None = None) -> dict[str, Any]:
    """A completed response answering the first `yes` items yes and the rest no."""
    items = list(tool.items)[: total if total is not None else len(tool.items)]
    return {
        "resourceType": "QuestionnaireResponse",
        "questionnaire": tool.url,
        "status": "completed",
        "item": [
            {"linkId": link_id, "answer": [{"valueBoolean": i < yes}]}
            for i, link_id in enumerate(items)
        ],
    }


# --------------------------------------------------------------------------- published figures


PUBLISHED: dict[str, tuple[AccuracyTable, int, dict[str, str]]] = {
    # [S12] 25 sex-trafficking cases vs 83 comparison patients; whole percent.
    "SSCST derivation, Greenbaum 2018 PEC [S12]": (
        AccuracyTable(tp=23, fn=2, fp=22, tn=61),
        108,
        {"sensitivity": "92", "specificity": "73", "ppv": "51", "npv": "97"},
    ),
    # [S13] PPV and NPV are not in the abstract; derived by the brief.
    "SSCST multisite, Greenbaum 2018 JAH [S13]": (
        AccuracyTable(tp=76, fn=14, fp=306, tn=414),
        810,
        {
            "sensitivity": "84.44",
            "specificity": "57.50",
            "lr_positive": "1.99",
            "prevalence": "11.1",
            "ppv": "19.9",
            "npv": "96.7",
        },
    ),
    # [S14] prevalence 26/212.
    "SSCST tablet, Hurst 2021 [S14]": (
        AccuracyTable(tp=22, fn=4, fp=87, tn=99),
        212,
        {
            "sensitivity": "84.6",
            "specificity": "53.2",
            "ppv": "20.2",
            "npv": "96.1",
            "prevalence": "12.3",
        },
    ),
    # [S15a] The Covenant House NJ page quotes 87.1 % / 76.7 % [S15b]; the 2x2 gives the
    # paper's figures. PPV and NPV are not in the abstract; derived by the brief.
    "QYIT, Chisolm-Straker 2019 [S15a]": (
        AccuracyTable(tp=26, fn=4, fp=73, tn=237),
        340,
        {
            "sensitivity": "86.7",
            "specificity": "76.5",
            "prevalence": "8.8",
            "ppv": "26.3",
            "npv": "98.3",
        },
    ),
}
"""Study → (reconstructed 2x2, n, published figures). A figure is checked at the precision it
was published with (the decimal places written here); all but LR+ are percentages."""


@pytest.mark.parametrize("study", list(PUBLISHED))
def test_the_reconstructed_table_reproduces_the_published_figures(study: str) -> None:
    table, n, figures = PUBLISHED[study]
    assert table.n == n
    for measure, published in figures.items():
        value = getattr(table, measure)
        places = -Decimal(published).as_tuple().exponent
        got = _round(value, places) if measure == "lr_positive" else _pct(value, places)
        assert got == Decimal(published), f"{study}: {measure} {got}, published {published}"


# --------------------------------------------------------------------------- accuracy maths


def test_accuracy_table_definitions() -> None:
    table = AccuracyTable(tp=8, fn=2, fp=10, tn=80)
    assert table.sensitivity == pytest.approx(0.8)
    assert table.specificity == pytest.approx(80 / 90)
    assert table.ppv == pytest.approx(8 / 18)
    assert table.npv == pytest.approx(80 / 82)
    assert table.lr_positive == pytest.approx(0.8 / (10 / 90))
    assert table.prevalence == pytest.approx(0.1)


def test_accuracy_table_edge_cases() -> None:
    perfect = AccuracyTable(tp=5, fn=0, fp=0, tn=5)
    assert perfect.lr_positive == math.inf
    with pytest.raises(ZeroDivisionError):
        _ = AccuracyTable(tp=0, fn=0, fp=3, tn=3).sensitivity
    with pytest.raises(ValueError, match="tp"):
        AccuracyTable(tp=-1, fn=0, fp=0, tn=0)
    with pytest.raises(ValueError, match="fn"):
        AccuracyTable(tp=1, fn=1.5, fp=0, tn=0)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- thresholds


def test_tools_as_published() -> None:
    assert SSCST.items == ("sscst-1", "sscst-2", "sscst-3", "sscst-4", "sscst-5", "sscst-6")
    assert SSCST.threshold == 2
    assert QYIT.items == ("qyit-1", "qyit-2", "qyit-3", "qyit-4")
    assert QYIT.threshold == 1
    assert set(TOOLS) == {
        "https://fhir.msht-cds.org/Questionnaire/sscst",
        "https://fhir.msht-cds.org/Questionnaire/qyit",
    }


@pytest.mark.parametrize(("yes", "positive"), [(0, False), (1, False), (2, True), (6, True)])
def test_sscst_threshold(yes: int, positive: bool) -> None:
    response = _response(SSCST, yes)
    assert score(response) == yes
    assert is_positive(response) is positive


@pytest.mark.parametrize(("yes", "positive"), [(0, False), (1, True), (4, True)])
def test_qyit_threshold(yes: int, positive: bool) -> None:
    response = _response(QYIT, yes)
    assert score(response) == yes
    assert is_positive(response) is positive


def test_score_counts_only_this_tools_items_once() -> None:
    response = _response(SSCST, 1)
    response["item"] += [
        {"linkId": "qyit-1", "answer": [{"valueBoolean": True}]},  # another tool's item
        {"linkId": "note", "answer": [{"valueString": "yes"}]},  # not a boolean yes
        {"linkId": "sscst-1", "answer": [{"valueBoolean": True}]},  # repeated item
    ]
    assert score(response) == 1
    assert not is_positive(response)


def test_score_reads_nested_groups_and_versioned_canonicals() -> None:
    response = {
        "resourceType": "QuestionnaireResponse",
        "questionnaire": f"{SSCST.url}|1",
        "status": "completed",
        "item": [
            {
                "linkId": "group",
                "item": [
                    {"linkId": "sscst-2", "answer": [{"valueBoolean": True}]},
                    {"linkId": "sscst-5", "answer": [{"valueBoolean": True}]},
                ],
            }
        ],
    }
    assert score(response) == 2
    assert is_positive(response)


def test_unanswered_response_scores_zero() -> None:
    response = {"resourceType": "QuestionnaireResponse", "questionnaire": QYIT.url}
    assert score(response) == 0
    assert not is_positive(response)


def test_unknown_questionnaire_is_refused() -> None:
    with pytest.raises(ValueError, match="not a scored screening tool"):
        tool_for({"questionnaire": "https://example.org/Questionnaire/other"})
    with pytest.raises(ValueError, match="no `questionnaire`"):
        score({"resourceType": "QuestionnaireResponse"})


def test_tool_definition_is_checked() -> None:
    with pytest.raises(ValueError, match="threshold"):
        ScreeningTool(url="u", name="t", items=("a",), threshold=2)
    with pytest.raises(ValueError, match="unique"):
        ScreeningTool(url="u", name="t", items=("a", "a"), threshold=1)


# --------------------------------------------------------------------------- shipped JSON


def _questionnaire(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((QUESTIONNAIRES / f"{name}.json").read_text("utf-8"))
    return data


@pytest.mark.parametrize(("name", "tool"), [("sscst", SSCST), ("qyit", QYIT)])
def test_shipped_questionnaire_matches_tool(name: str, tool: ScreeningTool) -> None:
    data = _questionnaire(name)
    assert data["resourceType"] == "Questionnaire"
    assert data["url"] == tool.url
    items = data["item"]
    assert tuple(item["linkId"] for item in items) == tool.items
    assert all(item["type"] == "boolean" for item in items)
    assert all(not item.get("item") for item in items)


def test_qyit_questionnaire_states_its_caveats() -> None:
    data = _questionnaire("qyit")
    text = f"{data['description']} {data['purpose']}".lower()
    assert "unverified" in text
    assert "18-22" in text
    assert "off-label" in text


def test_sscst_questionnaire_states_threshold_and_paraphrase() -> None:
    data = _questionnaire("sscst")
    text = data["description"].lower()
    assert "2 or more" in text
    assert "paraphrase" in text


@pytest.mark.parametrize(("name", "tool"), [("sscst", SSCST), ("qyit", QYIT)])
def test_the_service_scores_as_the_tool_does(name: str, tool: ScreeningTool) -> None:
    """The served rule (`score:` reads the scored items from the shipped Questionnaire) and
    this typed statement of it agree, item for item, on every pattern of answers, laid out
    flat, in a group and under another item's answer, with repeated items and items of no tool
    added."""
    items = scored_items(_questionnaire(name))
    assert items == frozenset(tool.items)
    for pattern in range(2 ** len(tool.items)):
        flat = _response(tool, 0)
        for i, item in enumerate(flat["item"]):
            item["answer"] = [{"valueBoolean": bool(pattern >> i & 1)}]
        flat["item"] += [
            {"linkId": tool.items[-1], "answer": [{"valueBoolean": True}]},
            {"linkId": "consent-given", "answer": [{"valueBoolean": True}]},
        ]
        first, *rest = flat["item"]
        grouped = dict(flat, item=[{"linkId": "group", "item": flat["item"]}])
        under_answer = dict(flat, item=[dict(first, answer=[dict(first["answer"][0], item=rest)])])
        for response in (flat, grouped, under_answer):
            assert screening_score(response, items) == score(response), (pattern, response)
