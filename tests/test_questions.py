"""`question:` tests: which recorded answers match, for each kind of expected answer."""

from __future__ import annotations

from typing import Any

import pytest

from msht_cds.library.evaluate import question_matches
from msht_cds.library.model import QuestionTest

FORM = "https://fhir.msht-cds.org/Questionnaire/consultation-observations"


def response(answer: dict[str, Any], *, questionnaire: str = FORM) -> dict[str, Any]:
    return {
        "resourceType": "QuestionnaireResponse",
        "questionnaire": questionnaire,
        "status": "completed",
        "item": [{"linkId": "group", "item": [{"linkId": "q", "answer": [answer]}]}],
    }


@pytest.mark.parametrize(
    ("expected", "recorded", "matches"),
    [
        (True, {"valueBoolean": True}, True),
        (True, {"valueBoolean": False}, False),
        (False, {"valueBoolean": False}, True),  # a recorded "no" (was never matched)
        (False, {"valueBoolean": True}, False),
        (False, {"valueString": "false"}, False),
        ("yes", {"valueString": "yes"}, True),
        ("yes", {"valueBoolean": True}, False),
        ("LA33-6", {"valueCoding": {"system": "http://loinc.org", "code": "LA33-6"}}, True),
        ("LA33-6", {"valueCoding": {"system": "http://loinc.org", "code": "LA32-8"}}, False),
    ],
)
def test_an_answer_matches_what_the_rule_expects(
    expected: bool | str, recorded: dict[str, Any], matches: bool
) -> None:
    question = QuestionTest(questionnaire=FORM, link_id="q", answer=expected)
    assert question_matches(response(recorded), question) is matches


def test_only_a_completed_response_to_the_named_questionnaire_counts() -> None:
    question = QuestionTest(questionnaire=FORM, link_id="q")
    assert question_matches(response({"valueBoolean": True}, questionnaire=f"{FORM}|2"), question)
    other = response({"valueBoolean": True}, questionnaire="https://example.org/Questionnaire/x")
    assert not question_matches(other, question)
    unfinished = response({"valueBoolean": True}) | {"status": "in-progress"}
    assert not question_matches(unfinished, question)
