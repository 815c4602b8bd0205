"""Referral pathways: which steps apply, which local contacts are shown, which overlay is used.

Assessments are built directly from the fixed test library's indicators, so each test states
exactly the concern, card indicator and forms it is about.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from pydantic import ValidationError

from msht_cds.library.evaluate import Assessment, IndicatorResult
from msht_cds.library.loader import Library, load_library
from msht_cds.library.model import FORMS
from msht_cds.library.pathway_model import LocalOverlay, NationalPathway
from msht_cds.record import PatientRecord
from msht_cds.referral import ReferralPlan, plan_referral, select_overlay

from .support import ROOT
from .test_cards import build_library_dir  # the same fixed library as the snapshots

NATIONS = ("england", "wales", "scotland", "northern_ireland")
OFCOM_DRAMA = re.compile(r"^(01632 960\d{3}|020 7946 0\d{3})$")


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Library:
    return load_library(build_library_dir(tmp_path_factory.mktemp("referral") / "library"))


def assessment(
    library: Library, *indicator_ids: str, concern: str = "high", card: str = "warning"
) -> Assessment:
    results = [
        IndicatorResult(library.indicators[i].model, True, "strong", []) for i in indicator_ids
    ]
    return Assessment(results, concern, card, library.version)  # type: ignore[arg-type]


def step_ids(plan: ReferralPlan) -> list[str]:
    return [p.step.id for p in plan.steps]


def overlay(library: Library, ident: str) -> LocalOverlay:
    model: LocalOverlay = library.overlays[ident].model
    return model


def record_with_provider(provider: dict[str, Any] | None) -> PatientRecord:
    encounter: dict[str, Any] = {
        "resourceType": "Encounter",
        "id": "visit-1",
        "subject": {"reference": "Patient/child-1"},
    }
    if provider is not None:
        encounter["serviceProvider"] = provider
    resources = [{"resourceType": "Patient", "id": "child-1"}, encounter]
    return PatientRecord.build("child-1", resources, encounter_id="visit-1")


# --------------------------------------------------------------------------- overlay selection


def test_configured_locality_wins(library: Library) -> None:
    record = record_with_provider({"reference": "Organization/example-hospital-a"})
    chosen = select_overlay(library, "example-health-board", record)
    assert chosen is not None
    assert chosen.id == "example-health-board"


@pytest.mark.parametrize(
    "provider",
    [
        {"reference": "Organization/example-hospital-a"},
        {"reference": "https://ehr.example.org/fhir/Organization/example-hospital-a"},
        {
            "identifier": {
                "system": "https://fhir.nhs.uk/Id/ods-organization-code",
                "value": "EXAMPLE-ODS-001",
            }
        },
    ],
)
def test_service_provider_selects_the_overlay(library: Library, provider: dict[str, Any]) -> None:
    chosen = select_overlay(library, None, record_with_provider(provider))
    assert chosen is not None
    assert chosen.id == "example-general-hospital"


def test_unknown_locality_falls_back_to_service_provider(library: Library) -> None:
    record = record_with_provider({"reference": "Organization/example-health-board-1"})
    chosen = select_overlay(library, "no-such-hospital", record)
    assert chosen is not None
    assert chosen.id == "example-health-board"


@pytest.mark.parametrize(
    "provider", [None, {"reference": "Organization/elsewhere-1"}, {"display": "A hospital"}, "x"]
)
def test_no_overlay_without_a_match(library: Library, provider: Any) -> None:
    assert select_overlay(library, None, record_with_provider(provider)) is None
    assert select_overlay(library, None, None) is None


# --------------------------------------------------------------------------- step conditions


def test_concern_condition(library: Library) -> None:
    high = plan_referral(library, "england", None, assessment(library, "WORK_SIGNS_IN_CHILD"))
    medium = plan_referral(
        library,
        "england",
        None,
        assessment(library, "ED_REPEAT_MULTI_SITE", concern="medium", card="info"),
    )
    assert step_ids(high) == [
        "see-alone", "safeguarding-team", "childrens-social-care", "police", "nrm",
        "safety-plan", "advice-line", "document",
    ]  # fmt: skip
    assert step_ids(medium) == ["see-alone", "safeguarding-team", "advice-line", "document"]


def test_critical_card_starts_with_999(library: Library) -> None:
    for nation in NATIONS:
        plan = plan_referral(
            library, nation, None, assessment(library, "DISCLOSURE", card="critical")
        )
        first = plan.steps[0]
        assert first.step.id == "immediate-danger"
        assert [c.phone for c in first.contacts] == ["999"]
        warning = plan_referral(library, nation, None, assessment(library, "DISCLOSURE"))
        assert "immediate-danger" not in step_ids(warning)


def test_form_steps_need_a_form_specific_indicator(library: Library) -> None:
    fm = plan_referral(library, "england", None, assessment(library, "FM_MARRIAGE_PLANNED"))
    generic = plan_referral(library, "england", None, assessment(library, "ADULT_SPEAKS_FOR_CHILD"))
    assert "forced-marriage-unit" in step_ids(fm)
    assert set(fm.form_advice) == {"forced_marriage"}
    assert "HM Government: Forced marriage statutory guidance" in [x.label for x in fm.links]
    assert "forced-marriage-unit" not in step_ids(generic)  # all six forms = none specific
    assert generic.form_advice == {}
    assert "HM Government: Forced marriage statutory guidance" not in [
        x.label for x in generic.links
    ]


def test_fgm_reporting_duty_only_in_england_and_wales(library: Library) -> None:
    fgm = assessment(library, "FGM_CONCERN")
    for nation in ("england", "wales"):
        plan = plan_referral(library, nation, None, fgm)
        step = next(p for p in plan.steps if p.step.id == "fgm-report")
        assert "101" in step.step.action
        assert "mandatory duty" in step.step.action
    for nation in ("scotland", "northern_ireland"):
        plan = plan_referral(library, nation, None, fgm)
        assert "fgm-report" not in step_ids(plan)
        step = next(p for p in plan.steps if p.step.id == "fgm-child-protection")
        assert "mandatory" not in step.step.action
    other = plan_referral(library, "england", None, assessment(library, "WORK_SIGNS_IN_CHILD"))
    assert "fgm-report" not in step_ids(other)


def test_ictg_step_follows_the_local_flag(library: Library) -> None:
    high = assessment(library, "WORK_SIGNS_IN_CHILD")
    flagged = plan_referral(library, "england", overlay(library, "example-general-hospital"), high)
    unflagged = overlay(library, "example-general-hospital").model_copy(update={"flags": []})
    assert "ictg" in step_ids(flagged)
    assert "ictg" not in step_ids(plan_referral(library, "england", unflagged, high))
    assert "ictg" not in step_ids(plan_referral(library, "england", None, high))
    # The full page without an overlay shows it, labelled "ICTG areas only".
    assert "ictg" in step_ids(plan_referral(library, "england", None, None))
    # Wales has a national ICTG service: no flag needed.
    assert "ictg" in step_ids(plan_referral(library, "wales", None, high))


def test_page_plan_lists_every_step(library: Library) -> None:
    for nation in NATIONS:
        pathway: NationalPathway = library.nations[nation].model
        plan = plan_referral(library, nation, None, None)
        assert step_ids(plan) == [s.id for s in pathway.steps]
        assert set(plan.form_advice) == set(pathway.advice.forms)


# --------------------------------------------------------------------------- local contacts


def test_local_contacts_come_first_then_national(library: Library) -> None:
    local = overlay(library, "example-general-hospital")
    plan = plan_referral(library, "england", local, assessment(library, "WORK_SIGNS_IN_CHILD"))
    by_id = {p.step.id: p for p in plan.steps}
    assert [c.name for c in by_id["safeguarding-team"].contacts] == [
        local.contacts["safeguarding_team"].name,
        local.contacts["named_doctor"].name,
        local.contacts["named_nurse"].name,
    ]
    assert [c.phone for c in by_id["childrens-social-care"].contacts] == [
        "020 7946 0001", "020 7946 0002",
    ]  # fmt: skip
    assert plan.team == "Safeguarding Children Team, Example General Hospital"


def test_missing_local_contacts_fall_back_to_national_steps(library: Library) -> None:
    """The Scottish example has no named doctor: the step stays, with what exists."""
    local = overlay(library, "example-health-board")
    high = assessment(library, "WORK_SIGNS_IN_CHILD")
    with_overlay = plan_referral(library, "scotland", local, high)
    without = plan_referral(library, "scotland", None, high)
    assert step_ids(with_overlay) == step_ids(without)
    team = next(p for p in with_overlay.steps if p.step.id == "child-protection-team")
    assert [c.name for c in team.contacts] == ["Child Protection Team, Example Health Board"]
    social = next(p for p in with_overlay.steps if p.step.id == "social-work-police")
    assert [c.phone for c in social.contacts] == ["01632 960102", "01632 960103", "101"]
    empty = local.model_copy(update={"contacts": {}})
    bare = plan_referral(library, "scotland", empty, high)
    assert step_ids(bare) == step_ids(without)
    assert bare.team == "NHS board child protection team"


def test_overlay_nation_wins_over_configured_nation(library: Library) -> None:
    plan = plan_referral(
        library,
        "england",
        overlay(library, "example-health-board"),
        assessment(library, "WORK_SIGNS_IN_CHILD"),
    )
    assert plan.pathway.id == "scotland"


def test_whom_to_call_lists_each_contact_once(library: Library) -> None:
    plan = plan_referral(library, "england", None, assessment(library, "FGM_CONCERN"))
    phones = [c.phone for c in plan.contacts]
    assert phones.count("101") == 1  # police step and FGM step share it
    assert len(phones) == len(set(phones))


@pytest.mark.parametrize("nation", NATIONS)
@pytest.mark.parametrize(
    ("concern", "card"),
    [("high", "critical"), ("high", "warning"), ("medium", "info"), ("low", "info")],
)
def test_never_an_empty_plan(library: Library, nation: str, concern: str, card: str) -> None:
    for ident in ("ADULT_SPEAKS_FOR_CHILD", "STI_IN_MINOR", "FM_MARRIAGE_PLANNED"):
        plan = plan_referral(
            library, nation, None, assessment(library, ident, concern=concern, card=card)
        )
        assert {"see-alone", "document"} <= set(step_ids(plan))
        assert plan.advice


# --------------------------------------------------------------------------- pathway files


def test_all_four_nations_and_both_examples_load(library: Library) -> None:
    assert sorted(library.nations) == sorted(NATIONS)
    assert sorted(library.overlays) == ["example-general-hospital", "example-health-board"]


def test_every_step_cites_a_listed_source(library: Library) -> None:
    for nation in NATIONS:
        pathway: NationalPathway = library.nations[nation].model
        assert pathway.references
        for step in pathway.steps:
            assert step.sources, step.id
            assert set(step.sources) <= set(pathway.references), step.id
        for link in pathway.links:
            assert link.url.startswith("https://")


def test_key_facts_per_nation(library: Library) -> None:
    def action(nation: str, step: str) -> str:
        pathway: NationalPathway = library.nations[nation].model
        return next(s.action for s in pathway.steps if s.id == step)

    assert "Health bodies are not First Responders in England" in action("england", "nrm")
    assert "consent is not needed" in action("england", "nrm")
    assert "Social work completes the NRM referral" in action("scotland", "nrm")
    assert "Inter-agency Referral Discussion (IRD)" in action("scotland", "social-work-police")
    assert "Gateway" in action("northern_ireland", "gateway-psni")
    assert "PSNI" in action("northern_ireland", "gateway-psni")
    assert "Scottish Guardianship Service" in action("scotland", "guardian")
    assert "Independent Guardian Service (Barnardo's NI)" in action("northern_ireland", "guardian")
    assert "covers all of Wales" in action("wales", "ictg")
    for nation in NATIONS:
        pathway: NationalPathway = library.nations[nation].model
        phones = {c.phone for s in pathway.steps for c in s.contacts}
        assert {"08000 121 700", "020 7008 0151"} <= phones
        for step in pathway.steps:
            text = step.action.lower()
            assert "confront" not in text or "do not confront" in text


def test_unverified_routes_are_marked(library: Library) -> None:
    ni: NationalPathway = library.nations["northern_ireland"].model
    for step_id in ("gateway-psni", "nrm"):
        step = next(s for s in ni.steps if s.id == step_id)
        assert step.unverified is not None
        assert step.unverified.startswith("NOT VERIFIED")


def test_example_overlays_use_fictional_numbers(library: Library) -> None:
    for located in library.overlays.values():
        for contact in located.model.contacts.values():
            assert contact.phone is not None
            assert OFCOM_DRAMA.match(contact.phone), contact
            assert contact.email is None or contact.email.endswith("@example.org")


# --------------------------------------------------------------------------- model strictness


def test_overlay_rejects_misspelt_contact_keys_and_flags() -> None:
    base = {"id": "x-hospital", "organisation": "X", "nation": "england"}
    with pytest.raises(ValidationError, match="safeguarding_team"):
        LocalOverlay.model_validate(base | {"contacts": {"safeguarding-team": {"name": "T"}}})
    with pytest.raises(ValidationError, match="ictg_area"):
        LocalOverlay.model_validate(base | {"flags": ["ictg-area"]})


def test_pathway_needs_an_unconditional_step_and_listed_sources() -> None:
    england = (ROOT / "pathways" / "nations" / "england.yaml").read_text()
    assert "references:" in england
    step = {"id": "a", "title": "A", "action": "Do A.", "sources": ["S1"]}
    base: dict[str, Any] = {
        "id": "england", "title": "England", "version": "1",
        "advice": {"general": ["See the young person alone."]},
    }  # fmt: skip
    NationalPathway.model_validate(base | {"steps": [step]})
    with pytest.raises(ValidationError, match="at least one step must apply always"):
        NationalPathway.model_validate(base | {"steps": [step | {"when": {"critical": True}}]})
    with pytest.raises(ValidationError, match="cited but not in `references`: S1"):
        NationalPathway.model_validate(
            base | {"steps": [step], "references": {"S2": {"title": "T", "url": "https://x.org"}}}
        )
    with pytest.raises(ValidationError, match="sources"):
        NationalPathway.model_validate(base | {"steps": [step | {"sources": []}]})


def test_form_advice_for_the_forms_the_brief_names(library: Library) -> None:
    """Criminal (victim, not offender), forced marriage (one chance), sexual (health care)."""
    for nation in NATIONS:
        pathway: NationalPathway = library.nations[nation].model
        assert set(pathway.advice.forms) == {"criminal", "forced_marriage", "sexual"}
        assert set(pathway.advice.forms) <= set(FORMS)


def test_docs_describe_every_step_and_the_unverified_facts(library: Library) -> None:
    docs = (ROOT / "docs" / "pathways.md").read_text()
    for nation in NATIONS:
        pathway: NationalPathway = library.nations[nation].model
        for step in pathway.steps:
            assert f"(`{step.id}`)" in docs, f"docs/pathways.md lacks {nation} step {step.id}"
    flat = " ".join(docs.split())
    assert "## Not verified in a retrieved source" in flat
    assert "general NI arrangement – **not verified in a retrieved source**" in flat
