"""Run the cases that sit beside the rules (`*.test.yaml`), the way `opa test` does."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any

from ..record import PatientRecord
from .assess import assess, card_is_due
from .loader import Library, Located
from .model import Case


@dataclass
class CaseResult:
    file: str
    line: int
    name: str
    kind: str
    passed: bool
    todo: bool
    failures: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "row": self.line,
            "col": 1,
            "name": self.name,
            "kind": self.kind,
            "result": "TODO" if self.todo else ("PASS" if self.passed else "FAIL"),
            "failures": self.failures,
        }


@dataclass
class TestReport:
    results: list[CaseResult]
    unexercised: list[str]
    missing_fires: list[str]
    missing_quiet: list[str]

    @property
    def passed(self) -> int:
        return sum(1 for r in self.results if r.passed and not r.todo)

    @property
    def counted(self) -> int:
        return sum(1 for r in self.results if not r.todo)

    @property
    def ok(self) -> bool:
        return self.passed == self.counted and not self.missing_fires and not self.missing_quiet


def record_for_case(case: Case) -> PatientRecord:
    patients = [r for r in case.resources if r.get("resourceType") == "Patient"]
    patient_id = str(patients[0].get("id")) if patients else "unknown"
    return PatientRecord.build(
        patient_id, case.resources, encounter_id=case.encounter, draft_orders=case.draft_orders
    )


def check_case(library: Library, case: Case) -> list[str]:
    """Everything the case expected that did not happen (empty = pass)."""
    record = record_for_case(case)
    assessment = assess(library, record, case.today)
    # Fired and not suppressed by a context rule: a rule switched off by a context rule that
    # matches everyone must not leave its cases green. A suppression is tested with `quiet`.
    live = {r.indicator.id for r in assessment.results if r.fired and not r.suppressed}
    failures = []
    for ident in case.expect.fires:
        if ident not in live:
            suppressed = ident in assessment.fired_ids
            failures.append(
                f"expected {ident} to fire, it was suppressed by a context rule"
                if suppressed
                else f"expected {ident} to fire, it did not"
            )
    for ident in case.expect.quiet:
        if ident in live:
            failures.append(f"expected {ident} to stay quiet, it fired")
    if case.expect.concern is not None:
        concern = assessment.concern or "none"
        if concern != case.expect.concern:
            failures.append(f"expected concern {case.expect.concern}, got {concern}")
    if case.expect.card_indicator is not None:
        # As the case's hook shows it: a discharge card only for a high concern, an order card
        # only for evidence that is a draft order.
        shown = card_is_due(case.hook, assessment, record)
        card = (assessment.card_indicator if shown else None) or "none"
        if card != case.expect.card_indicator:
            failures.append(f"expected card indicator {case.expect.card_indicator}, got {card}")
    return failures


def run_cases(library: Library, name_filter: str | None = None) -> TestReport:
    results: list[CaseResult] = []
    exercised_fires: set[str] = set()
    exercised_quiet: set[str] = set()
    for located, index, case in _cases(library):
        if not case.todo:  # a case marked not ready shows nothing about the rule yet
            exercised_fires.update(case.expect.fires)
            exercised_quiet.update(case.expect.quiet)
        if name_filter and not _matches(name_filter, case.name):
            continue
        line, _ = located.doc.position(("cases", index, "name"))
        failures = check_case(library, case)
        results.append(
            CaseResult(
                located.doc.display_path,
                line,
                case.name,
                case.kind,
                not failures,
                case.todo,
                failures,
            )
        )
    active = [c.indicator.id for c in library.compiled]
    return TestReport(
        results=results,
        unexercised=sorted(i for i in active if i not in exercised_fires | exercised_quiet),
        missing_fires=sorted(i for i in active if i not in exercised_fires),
        missing_quiet=sorted(i for i in active if i not in exercised_quiet),
    )


def _cases(library: Library) -> list[tuple[Located, int, Case]]:
    return [
        (located, i, case)
        for located in library.case_files
        for i, case in enumerate(located.model.cases)
    ]


def _matches(pattern: str, name: str) -> bool:
    if any(ch in pattern for ch in "*?["):
        return fnmatch.fnmatch(name, pattern)
    return pattern.lower() in name.lower()
