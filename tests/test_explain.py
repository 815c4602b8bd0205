"""`explain`: what fired with its evidence, what was suppressed, de-duplicated or nearly fired,
and the card, for a test case or a saved request, agreeing with `test` and the service."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from msht_cds.explain import (
    card_markdown,
    explain_case,
    explain_request,
    explanation_dict,
    explanation_text,
    find_case,
    preview_page,
    read_cases,
    render_markdown,
)
from msht_cds.library.loader import load_library
from msht_cds.library.model import Case
from msht_cds.library.testing import check_case
from msht_cds.prefetch import template_key
from msht_cds.service import CallSettings, Knowledge, load_knowledge

FIXTURE = Path(__file__).parent / "fixtures" / "lint"
SCENARIO = "chlamydia at 12 with an adult speaking for her"


@pytest.fixture(scope="module")
def knowledge() -> Knowledge:
    return load_knowledge(FIXTURE / "pathways", FIXTURE / "cards")


CASES, PROBLEMS = read_cases(FIXTURE / "pathways")


def case_named(name: str) -> tuple[str, Case]:
    found = find_case(CASES, name)
    return found.origin, found.case


def explained(knowledge: Knowledge, name: str, locality: str | None = None) -> dict[str, Any]:
    origin, case = case_named(name)
    return explanation_dict(
        explain_case(knowledge, origin, case, CallSettings("england", locality))
    )


def test_scenario_lists_fired_deduplicated_and_near(knowledge: Knowledge) -> None:
    data = explained(knowledge, SCENARIO)
    assert data["scenario"] == {
        "name": SCENARIO,
        "origin": "pathways/scenarios/combined.test.yaml:3",
        "hook": "encounter-start",
        "today": "2026-06-01",
    }
    assert [(f["id"], f["strength"]) for f in data["fired"]] == [
        ("ADULT_SPEAKS_FOR_CHILD", "strong"),
        ("STI_UNDER_13", "strong"),
    ]
    assert data["fired"][1]["evidence"] == [
        {
            "description": "Sexually transmitted infection recorded (2026-05-20)",
            "reference": "Condition/c1",
        }
    ]
    assert data["deduplicated"] == [
        {
            "id": "STI_IN_MINOR",
            "title": "Sexually transmitted infection in a child",
            "by": "STI_UNDER_13",
        }
    ]
    assert [n["id"] for n in data["near"]] == ["ED_REPEAT_MULTI_SITE"]
    assert data["suppressed"] == []
    assert (data["concern"], data["card_indicator"]) == ("high", "warning")
    assert data["card"]["summary"] == (
        "Safeguarding: consider seeing the young person alone and referring today"
    )


def test_suppressed_indicator_shows_the_context_rule_reason(knowledge: Knowledge) -> None:
    data = explained(knowledge, "chlamydia in an infant is suppressed")
    assert data["suppressed"] == [
        {
            "id": "STI_UNDER_13",
            "title": "Sexually transmitted infection under 13",
            "reason": "In an infant, perinatal transmission is the usual explanation.",
            "keep_info": False,
        }
    ]
    assert [f["id"] for f in data["fired"]] == ["STI_IN_MINOR"]
    assert data["card"] is None
    assert data["no_card_because"].startswith("what fired does not reach a concern level")


def test_escalation_and_downgrade_are_explained(knowledge: Knowledge) -> None:
    escalated = explained(knowledge, "two infections at 15 escalate")["fired"][0]
    assert (escalated["written_strength"], escalated["strength"]) == ("moderate", "strong")
    assert escalated["escalated_because"] == ["More than one infection has been recorded."]
    downgraded = explained(knowledge, "parent present are downgraded")["fired"][0]
    assert downgraded["strength"] == "contextual"
    assert downgraded["downgraded_because"] == (
        "Every attendance has a recorded medical reason and a parent was present."
    )


def test_explain_agrees_with_the_test_runner_for_every_case(knowledge: Knowledge) -> None:
    library = load_library(FIXTURE / "pathways")
    assert PROBLEMS == []
    assert len(CASES) == 16
    for ref in CASES:
        case = ref.case
        expl = explain_case(knowledge, ref.origin, case, CallSettings("england"))
        assert check_case(library, case) == [], case.name
        fired = {r.indicator.id for r in expl.assessment.results if r.fired}
        assert set(case.expect.fires) <= fired, case.name
        if case.expect.concern is not None:
            assert (expl.assessment.concern or "none") == case.expect.concern, case.name


def test_text_output(knowledge: Knowledge) -> None:
    origin, case = case_named(SCENARIO)
    text = explanation_text(
        explain_case(knowledge, origin, case, CallSettings("england", "st-elsewhere"))
    )
    assert text.splitlines()[:3] == [
        f"Scenario  {SCENARIO}",
        "From      pathways/scenarios/combined.test.yaml:3 · hook encounter-start"
        " · visit 2026-06-01",
        "Library   msht-rcpch-uk 2026.11.0 · nation england · locality st-elsewhere",
    ]
    assert "  STI_UNDER_13  [strong]  Sexually transmitted infection under 13" in text
    assert "    - Sexually transmitted infection recorded (2026-05-20)  (Condition/c1)" in text
    assert (
        "  STI_IN_MINOR  Sexually transmitted infection in a child  counted under STI_UNDER_13"
        in text
    )
    assert "  ED_REPEAT_MULTI_SITE  Repeated emergency attendances, several hospitals" in text
    assert text.splitlines()[-2:] == [
        "Concern   high · card warning",
        'Card      "Safeguarding: consider seeing the young person alone and referring today"',
    ]


def test_find_case_needs_one_match() -> None:
    assert find_case(CASES, "chlamydia at 12 fires").case.name == "chlamydia at 12 fires"
    assert find_case(CASES, "INFANT").case.name == "chlamydia in an infant is suppressed"
    with pytest.raises(LookupError, match=r"no single case named 'chlamydia' \(6 match\)"):
        find_case(CASES, "chlamydia")


def request_for(knowledge: Knowledge, case: Case) -> dict[str, Any]:
    """The CDS Hooks request an EHR would send for this case, with complete prefetch."""
    by_type: dict[str, list[dict[str, Any]]] = {}
    for resource in case.resources:
        by_type.setdefault(resource["resourceType"], []).append(resource)
    prefetch: dict[str, Any] = {}
    for key in knowledge.plan.templates(case.hook):
        if key == "patient":
            prefetch[key] = by_type["Patient"][0]
        elif key == "encounter":
            prefetch[key] = next(r for r in by_type["Encounter"] if r["id"] == case.encounter)
        else:
            kind = next(t for t in knowledge.plan.resource_types if template_key(t) == key)
            entries = [{"resource": r} for r in by_type.get(kind, [])]
            prefetch[key] = {"resourceType": "Bundle", "type": "searchset", "entry": entries}
    return {
        "hook": case.hook,
        "hookInstance": str(uuid.uuid4()),
        "context": {
            "userId": "Practitioner/example",
            "patientId": "child",
            "encounterId": case.encounter,
        },
        "prefetch": prefetch,
    }


def test_a_saved_request_gives_the_same_answer_as_the_case(knowledge: Knowledge) -> None:
    origin, case = case_named(SCENARIO)
    from_case = explain_case(knowledge, origin, case, CallSettings("england"))
    body = request_for(knowledge, case)
    from_request = explain_request(
        knowledge, body, "request.json", CallSettings("england"), case.today
    )
    a, b = explanation_dict(from_case), explanation_dict(from_request)
    for key in ("fired", "suppressed", "deduplicated", "near", "concern", "card_indicator"):
        assert a[key] == b[key], key
    assert from_request.card is not None
    assert from_case.card is not None
    assert from_request.card.summary == from_case.card.summary
    assert b["scenario"]["origin"] == "request.json"


def test_card_markdown_reads_like_the_card(knowledge: Knowledge) -> None:
    origin, case = case_named(SCENARIO)
    card = explain_case(knowledge, origin, case, CallSettings("england", "st-elsewhere")).card
    assert card is not None
    markdown = card_markdown(card)
    assert markdown.startswith(
        "## Safeguarding: consider seeing the young person alone and referring today\n\n"
        "*Indicator: warning · msht-cds safeguarding library 2026.11.0*\n"
    )
    assert "St Elsewhere Children's Hospital NHS Foundation Trust (synthetic)" in markdown
    assert "### Suggestions" in markdown
    assert "(recommended)" in markdown
    assert (
        "- [Full referral pathway: England](http://127.0.0.1:8000/pathways/england?locality=st-elsewhere)"
        in markdown
    )


def test_markdown_is_rendered_without_raw_html_or_script_links() -> None:
    html = str(render_markdown("**bold** <script>alert(1)</script>\n\n[x](javascript:alert(1))"))
    assert "<strong>bold</strong>" in html
    assert "<script>" not in html
    assert "&lt;script&gt;" in html
    assert 'href="javascript:' not in html
    table = str(render_markdown("| a | b |\n|---|---|\n| 1 | 2 |"))
    assert "<table>" in table


def test_preview_page_shows_card_and_explanation(knowledge: Knowledge) -> None:
    origin, case = case_named(SCENARIO)
    html = preview_page(explain_case(knowledge, origin, case, CallSettings("england")))
    assert 'class="card warning"' in html
    assert "<strong>Possible indicators of exploitation</strong>" in html
    assert "counted under <code>STI_UNDER_13</code>" in html
    assert "<form" not in html
