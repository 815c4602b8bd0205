"""The per-call code and text indexes only narrow which resources a selector visits: with them
off (every candidate tested one by one), every assessment is the same, fact for fact."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from msht_cds.library.assess import assess
from msht_cds.library.evaluate import Assessment, CompiledSelector, Evaluation
from msht_cds.library.loader import Library, load_library
from msht_cds.library.testing import record_for_case
from msht_cds.record import PatientRecord

from .support import ROOT
from .synthea import child_today, synthea_files

TODAY = dt.date(2026, 11, 29)


@pytest.fixture(scope="module")
def library() -> Library:
    return load_library(ROOT / "pathways")


def summary(assessment: Assessment) -> list[Any]:
    return [
        assessment.concern,
        assessment.card_indicator,
        [
            (
                r.indicator.id,
                r.fired,
                r.near,
                r.deduplicated_by,
                r.context_rule.reason if r.context_rule else None,
                r.strength,
                [(f.reference, f.description, f.date, f.key) for f in r.evidence],
            )
            for r in assessment.results
        ],
    ]


def one_by_one(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_index(self: CompiledSelector, ev: Evaluation, *args: object) -> None:
        return None

    monkeypatch.setattr(CompiledSelector, "_coded_candidates", no_index)
    monkeypatch.setattr(CompiledSelector, "_text_candidates", no_index)


def records(library: Library) -> list[tuple[str, PatientRecord, dt.date]]:
    cases = [
        (case.name, record_for_case(case), case.today)
        for located in library.case_files
        for case in located.model.cases
    ]
    sweep = []
    for path in synthea_files()[::3]:
        patient_id, resources = child_today(path, TODAY)
        sweep.append((path.name, PatientRecord.build(patient_id, resources), TODAY))
    return cases + sweep


def test_indexes_change_nothing(library: Library, monkeypatch: pytest.MonkeyPatch) -> None:
    found = records(library)
    assert len(found) > 300
    indexed = [summary(assess(library, record, today, explain=True)) for _, record, today in found]
    one_by_one(monkeypatch)
    for (name, record, today), expected in zip(found, indexed, strict=True):
        assert summary(assess(library, record, today, explain=True)) == expected, name


def test_the_text_index_is_used_and_drops_with_the_call(library: Library) -> None:
    """Emergency contraception is matched by text; the memo of searched texts belongs to the
    call, so no clinical text outlives it."""
    case = next(
        c
        for located in library.case_files
        for c in located.model.cases
        if "emergency-contraception" in located.doc.display_path and c.kind == "fires"
    )
    record = record_for_case(case)
    ev = Evaluation(record=record, visit_date=record.visit_date(case.today))
    for compiled in library.compiled:
        ev.fired[compiled.indicator.id] = compiled.evaluate(ev, False)
    assert ev.text_indexes
    assert ev.text_matches
    assert any(found for found in ev.text_matches.values())
    fresh = Evaluation(record=record, visit_date=ev.visit_date)
    assert not fresh.text_matches
    assert not fresh.text_indexes
