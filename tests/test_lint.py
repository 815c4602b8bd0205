"""`msht-cds lint` as a safeguarding lead meets it: edit a copy of a small library the way a lead
would, and check the exact `path:line:col: CODE message` lines that come back.

The library under tests/fixtures/lint/ is a small, stable copy owned by these tests, so the real
pathways/ can grow without breaking them.
"""

from __future__ import annotations

import ast
import re
import shutil
from pathlib import Path
from typing import get_args

import pytest

from msht_cds.errors import LintIssue
from msht_cds.library.loader import load_library
from msht_cds.library.testing import run_cases
from msht_cds.lint import CODES, LintCode, lint_library

from .support import LINT_FIXTURE, copy_lint_fixture, edit

ROOT = Path(__file__).resolve().parents[1]
UNKNOWN_FIELD_WHY = (
    "Check the spelling against the schema; unknown fields are rejected so that a typo never "
    "switches a rule off."
)


@pytest.fixture
def library(tmp_path: Path) -> Path:
    """A private copy of the fixture library (pathways/ beside cards/) to edit."""
    return copy_lint_fixture(tmp_path)


def lint(library: Path) -> list[LintIssue]:
    issues = lint_library(library, library.parent / "cards")
    assert {i.code for i in issues} <= set(CODES), "every issue has a documented code"
    return issues


def lines(library: Path) -> list[str]:
    return [str(i) for i in lint(library)]


# --------------------------------------------------------------------------- the code list


def test_codes_and_docs_list_the_same_codes_in_the_same_order() -> None:
    docs = (ROOT / "docs" / "lint-codes.md").read_text(encoding="utf-8")
    sections = re.findall(r"^## (\S+)$", docs, re.MULTILINE)
    assert sections == list(get_args(LintCode)) == list(CODES)


def test_every_docs_section_says_severity_why_and_how() -> None:
    docs = (ROOT / "docs" / "lint-codes.md").read_text(encoding="utf-8")
    for code, body in re.findall(r"^## (\S+)\n(.*?)(?=^## |\Z)", docs, re.MULTILINE | re.DOTALL):
        severity = CODES[code].severity
        assert body.lstrip().startswith(f"**{severity.capitalize()}.**"), code
        assert "*Why it matters:*" in body, code
        assert "*How to fix:*" in body, code


def test_every_code_the_source_can_emit_is_a_lint_code() -> None:
    """Scan the source for LintIssue(…, code, …) and doc.issue(loc, code, …) literals."""
    found: set[str] = set()
    for path in (ROOT / "src" / "msht_cds").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "id", getattr(node.func, "attr", ""))
            index = {"LintIssue": 3, "issue": 1, "_at_indicator": 2}.get(name)
            if index is None or len(node.args) <= index:
                continue
            arg = node.args[index]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                found.add(arg.value)
    assert found, "the scan found no issue codes"
    assert found <= set(CODES), f"undocumented codes: {sorted(found - set(CODES))}"


# --------------------------------------------------------------------------- clean library


def test_the_fixture_library_is_clean() -> None:
    assert lines(LINT_FIXTURE / "pathways") == []


def test_adding_a_contact_to_a_local_overlay_stays_clean(library: Path) -> None:
    edit(
        library / "local" / "st-elsewhere.yaml",
        "contacts:\n",
        'contacts:\n  named_doctor: {name: Dr Synthetic (named doctor), phone: "0100 000 0003"}\n',
    )
    assert lines(library) == []


# --------------------------------------------------------------------------- schema errors


def test_misspelt_field_is_one_message_at_the_typo(library: Path) -> None:
    edit(library / "indicators" / "sti-in-minor.yaml", "strength: moderate", "strenght: moderate")
    assert lines(library) == [
        "pathways/indicators/sti-in-minor.yaml:9:1: unknown-field `strenght` is not a field "
        f"here (strenght). {UNKNOWN_FIELD_WHY} Write `strength:` instead (it is required)."
    ]


def test_misspelt_optional_field_gets_a_suggestion(library: Path) -> None:
    path = library / "indicators" / "ed-repeat-multi-site.yaml"
    edit(path, "near_when:", "near_whne:")
    line = path.read_text(encoding="utf-8").splitlines().index("near_whne:") + 1
    assert lines(library) == [
        f"pathways/indicators/ed-repeat-multi-site.yaml:{line}:1: unknown-field `near_whne` is "
        f"not a field here (near_whne). {UNKNOWN_FIELD_WHY} Write `near_when:` instead."
    ]


def test_invalid_enum_value_lists_the_allowed_values_with_their_meaning(library: Path) -> None:
    edit(library / "indicators" / "work-signs.yaml", "strength: moderate", "strength: medium")
    assert lines(library) == [
        "pathways/indicators/work-signs.yaml:9:1: invalid-value strength: Input should be "
        "'strong', 'moderate' or 'contextual'. Allowed: `strong` (Alone enough for a high "
        "concern); `moderate` (High concern with a moderate one from another group); "
        "`contextual` (Vulnerability only; raises concern with others, never alone)."
    ]


def test_misspelt_contact_key_suggests_the_right_key(library: Path) -> None:
    edit(library / "local" / "st-elsewhere.yaml", "  mash:", "  mahs:")
    [issue] = lint(library)
    assert (issue.path, issue.line, issue.column, issue.code) == (
        "pathways/local/st-elsewhere.yaml",
        8,
        3,
        "invalid-value",
    )
    assert issue.message.endswith("Write `mash:` instead.")


def test_yaml_syntax_errors_say_what_to_do(library: Path) -> None:
    edit(library / "valuesets" / "sti-conditions.yaml", "title: Sexually", "title: Note: Sexually")
    [line] = lines(library)  # the parser's own words differ between its C and Python versions
    assert line.startswith(
        "pathways/valuesets/sti-conditions.yaml:3:12: yaml-syntax mapping values are not allowed"
    )
    assert line.endswith(". A value contains `: `; put the whole value in quotes.")


def test_all_problems_are_reported_in_one_run(library: Path) -> None:
    edit(library / "indicators" / "sti-in-minor.yaml", "strength: moderate", "strenght: moderate")
    edit(library / "indicators" / "work-signs.yaml", "strength: moderate", "strength: medium")
    edit(library / "indicators" / "sti-under-13.yaml", "codes: sti-conditions", "codes: sti")
    codes = [(Path(i.path).name, i.code) for i in lint(library)]
    assert codes == [
        ("sti-in-minor.yaml", "unknown-field"),
        ("sti-under-13.yaml", "unknown-valueset"),
        ("work-signs.yaml", "invalid-value"),
    ]


# --------------------------------------------------------------------------- meaning


NEW_INDICATOR = """\
# yaml-language-server: $schema=../../schemas/indicator.schema.json
id: MISSED_APPOINTMENTS
title: Repeatedly not brought to appointments
group: B
description: When the child missed 3 appointments in a year, then ask who brings them.
forms: [labour, criminal, sexual, domestic_servitude, financial, forced_marriage]
strength: contextual
sources:
  - {key: S20c, document: "Children who are not brought to appointments"}
benign_explanations:
  - The family moved house and letters went to the old address.
version: 1
evidence:
  missed:
    resource: Appointment
    where:
      - {path: status, equals: noshow}
    within_days: 365
    describe: Not brought to an appointment
fires_when:
  evidence: missed
  at_least: 3
"""


def test_new_indicator_without_tests_is_reported_at_its_id(library: Path) -> None:
    (library / "indicators" / "missed-appointments.yaml").write_text(
        NEW_INDICATOR, encoding="utf-8"
    )
    assert lines(library) == [
        "pathways/indicators/missed-appointments.yaml:2:1: missing-fires-case indicator "
        "MISSED_APPOINTMENTS has no `kind: fires` case, so nothing shows that it can fire. "
        "Add a case to its .test.yaml with `expect: {fires: [MISSED_APPOINTMENTS]}`.",
        "pathways/indicators/missed-appointments.yaml:2:1: missing-quiet-case indicator "
        "MISSED_APPOINTMENTS has no `kind: quiet` look-alike, so nothing shows that it stays "
        "quiet for an innocent record. Add a case with `expect: {quiet: [MISSED_APPOINTMENTS]}`.",
    ]


WORK_CODE_ONLY = """\
# yaml-language-server: $schema=../../schemas/indicator.schema.json
id: WORK_CODE_ONLY
title: Work-related condition coded
group: C
description: When a work-related condition is coded, then consider labour exploitation.
forms: [labour]
strength: moderate
sources:
  - {key: S5, document: "Home Office"}
benign_explanations:
  - A legal job.
version: 1
evidence:
  work_code: {resource: Condition, codes: work-related-condition, describe: Work condition}
  old_enough: {resource: Patient, where: [{path: birthDate, exists: true}], describe: Known age}
fires_when:
  all:
    - {evidence: old_enough}
    - {any: [{evidence: work_code}, {indicator: WORK_SIGNS_IN_CHILD, }]}
"""


@pytest.mark.parametrize(
    ("route", "flagged"),
    [
        ("{indicator: WORK_SIGNS_IN_CHILD, }", False),  # the question is a second route
        ("{not: {age: {under: 5}}}", False),  # a test that needs no code at all
        ("{evidence: work_code}", True),  # the same unverified code twice: no second route
    ],
)
def test_unverified_codes_alone_cannot_make_an_indicator_fire(
    library: Path, route: str, flagged: bool
) -> None:
    text = WORK_CODE_ONLY.replace("{indicator: WORK_SIGNS_IN_CHILD, }", route)
    (library / "indicators" / "work-code-only.yaml").write_text(text, encoding="utf-8")
    found = [i for i in lint(library) if i.code == "unverified-code-alone"]
    if not flagged:
        assert found == []
        return
    assert [str(i) for i in found] == [
        "pathways/indicators/work-code-only.yaml:16:1: unverified-code-alone WORK_CODE_ONLY can "
        "fire only through evidence `work_code` (value set `work-related-condition`), whose "
        "codes are all `verification: unverified`; an unchecked code may mean something else in "
        "the EHR and raise a safeguarding card wrongly. Add another route under "
        "`fires_when: any:` (e.g. a consultation question) or verify the codes."
    ]


def test_a_failing_case_is_a_lint_error_where_test_reports_fail(library: Path) -> None:
    edit(
        library / "indicators" / "sti-in-minor.test.yaml",
        "expect: {fires: [STI_IN_MINOR], concern: none}",
        "expect: {fires: [STI_IN_MINOR], concern: high}",
    )
    assert lines(library) == [
        "pathways/indicators/sti-in-minor.test.yaml:4:5: case-failed case `chlamydia at 15 "
        "fires` fails: expected concern high, got none. The rule does not do what its case "
        "says; fix the rule or the case (`msht-cds test -k` shows it)."
    ]
    failed = [r for r in run_cases(load_library(library)).results if not r.passed]
    assert [(r.file, r.line, r.name) for r in failed] == [
        ("pathways/indicators/sti-in-minor.test.yaml", 4, "chlamydia at 15 fires")
    ]


def test_a_question_that_is_not_in_the_questionnaire(library: Path) -> None:
    edit(library / "indicators" / "work-signs.yaml", "link_id: signs-of-work", "link_id: signs")
    issues = [i for i in lint(library) if i.code != "case-failed"]
    assert [(i.path, i.line, i.code) for i in issues] == [
        ("pathways/indicators/work-signs.yaml", 25, "unknown-question")
    ]
    assert issues[0].message.startswith("`signs` is not an item of https://fhir.msht-cds.org/")


@pytest.fixture
def bundled(tmp_path: Path) -> Path:
    """A private copy of the bundled library (it has the scored screening Questionnaires)."""
    shutil.copytree(ROOT / "cards", tmp_path / "cards")
    return Path(shutil.copytree(ROOT / "pathways", tmp_path / "pathways"))


SCREEN = Path("indicators") / "j-screen-positive.yaml"
SSCST_SCORE = '{questionnaire: "https://fhir.msht-cds.org/Questionnaire/sscst", at_least: 2}'


@pytest.mark.parametrize(
    ("score", "column", "message"),
    [
        (
            '{questionnaire: "https://fhir.msht-cds.org/Questionnaire/sscst-v2", at_least: 2}',
            "questionnaire",
            "`https://fhir.msht-cds.org/Questionnaire/sscst-v2` is not a Questionnaire",
        ),
        (
            '{questionnaire: "https://fhir.msht-cds.org/Questionnaire/sscst", at_least: 7}',
            "at_least",
            "`at_least: 7` can never be reached: https://fhir.msht-cds.org/Questionnaire/sscst "
            "has 6 boolean item(s)",
        ),
    ],
)
def test_a_score_that_could_never_count_stops_the_library(
    bundled: Path, score: str, column: str, message: str
) -> None:
    """A positive screen must never go silent because the Questionnaire is missing or too
    short: the library is refused (the service keeps the last good one)."""
    edit(bundled / SCREEN, SSCST_SCORE, score)
    issues = [i for i in lint(bundled) if i.code != "case-failed"]
    assert [(i.path, i.code, i.severity) for i in issues] == [
        ("pathways/indicators/j-screen-positive.yaml", "unscorable-questionnaire", "error")
    ]
    assert issues[0].message.startswith(message)
    line = (bundled / SCREEN).read_text().splitlines()[issues[0].line - 1]
    assert column in line[issues[0].column - 1 :]


def test_a_versioned_score_questionnaire_is_scored_as_the_questionnaire(bundled: Path) -> None:
    """`|version` is ignored on the rule's side as on the response's, as lint ignores it."""
    versioned = SSCST_SCORE.replace("/sscst", "/sscst|1")
    edit(bundled / SCREEN, SSCST_SCORE, versioned)
    assert lint(bundled) == []
    report = run_cases(load_library(bundled), "SSCST")
    assert report.counted >= 10
    assert all(result.passed for result in report.results)


def test_fires_cases_marked_todo_do_not_count_as_showing_the_rule_fires(bundled: Path) -> None:
    """A case marked not ready shows nothing yet: an indicator whose every `fires` case is a
    TODO has no case in which it fires."""
    path = bundled / "indicators" / "e-tattoo-branding.test.yaml"
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace("kind: fires\n", "kind: fires\n    todo: true\n"))
    missing = [i for i in lint(bundled) if i.code == "missing-fires-case"]
    assert [(i.path, i.severity) for i in missing] == [
        ("pathways/indicators/e-tattoo-branding.yaml", "error")
    ]


def test_a_concern_without_a_card_indicator_is_a_located_error(bundled: Path) -> None:
    """Not a crash at the first medium-or-low call: the library is refused where the entry
    is missing."""
    edit(bundled / "library.yaml", "    low: info\n", "")
    issues = lint(bundled)
    assert [(i.path, i.code) for i in issues] == [("pathways/library.yaml", "invalid-value")]
    assert "card_indicator has no entry for concern low" in issues[0].message


def test_a_summary_that_renders_a_form_label_is_unsafe_wording(bundled: Path) -> None:
    """The template text names nothing, but the rendered summary does ("criminal
    exploitation"): lint reads what every situation renders, not only the template."""
    summary = bundled.parent / "cards" / "assessment.summary.j2"
    edit(
        summary,
        "Safeguarding information for this visit",
        "Safeguarding: possible {{ form_labels | join(' / ') }}",
    )
    unsafe = [i for i in lint(bundled) if i.code == "unsafe-summary-wording"]
    assert [(i.path, i.severity) for i in unsafe] == [("cards/assessment.summary.j2", "error")]
    assert "`exploit…` reaches the summary when" in unsafe[0].message


@pytest.mark.parametrize(
    ("typo", "message"),
    [
        (".exist()", "`exist()` is not a FHIRPath function"),
        (".exists() and %visitdate.exists()", "`%visitdate` is not defined (known: %visitDate)"),
    ],
)
def test_a_fhirpath_that_parses_but_cannot_run_is_an_error(
    bundled: Path, typo: str, message: str
) -> None:
    """It parses, but every evaluation would fail, and the rule would never match."""
    path = bundled / "indicators" / "b-address-instability.yaml"
    edit(path, "period.end.empty()).exists()", f"period.end.empty()){typo}")
    issues = lint(bundled)
    assert [(i.path, i.line, i.code) for i in issues if i.code != "case-failed"] == [
        ("pathways/indicators/b-address-instability.yaml", 36, "fhirpath-syntax")
    ]
    assert message in issues[0].message


def test_a_context_rule_that_suppresses_everyone_fails_the_fires_cases(bundled: Path) -> None:
    """A suppressed indicator does not count, so a `fires` case is not met by it: a context
    rule that switches the indicator off for every child cannot leave its cases green."""
    path = bundled / "indicators" / "e-tattoo-branding.yaml"
    rule = "context:\n  - {when: {age: {under: 25}}, effect: suppress, reason: Everyone.}\n"
    path.write_text(path.read_text(encoding="utf-8") + rule, encoding="utf-8")
    report = run_cases(load_library(bundled), "TATTOO")
    failed = [r for r in report.results if not r.passed and not r.todo]
    assert failed
    assert all(
        "expected TATTOO_BRANDING to fire, it was suppressed by a context rule" in r.failures
        for r in failed
    )


@pytest.mark.parametrize("bad", ["2008-6-2", "2010-02-30", "1 June 2026"])
def test_a_case_date_the_service_cannot_read_is_an_error(bundled: Path, bad: str) -> None:
    """Read as absent, a malformed birth date makes the age unknown (so the child is assessed)
    and the case may pass for the wrong reason."""
    path = bundled / "indicators" / "e-tattoo-branding.test.yaml"
    edit(path, "birthDate: 2008-06-02", f'birthDate: "{bad}"')
    issues = [i for i in lint(bundled) if i.code == "invalid-value"]
    assert [(i.path, i.code) for i in issues] == [
        ("pathways/indicators/e-tattoo-branding.test.yaml", "invalid-value")
    ]
    assert issues[0].message.startswith(f"`{bad}` is not a FHIR date")
    line = path.read_text(encoding="utf-8").splitlines()[issues[0].line - 1]
    assert bad in line


def test_a_case_expects_the_card_its_hook_shows(bundled: Path) -> None:
    """A medium concern gives an information card at the start of a visit, and none at
    discharge (discharge warns only of a high concern without a referral): the same case
    moved to `encounter-discharge` must fail, not pass on the assessment alone."""
    path = bundled / "scenarios" / "forms.test.yaml"
    name = "scenario: sexual early signs - 15-year-old with a second emergency contraception"
    assert all(r.passed for r in run_cases(load_library(bundled), name).results)
    edit(
        path,
        "    today: 2026-04-22\n    hook: encounter-start\n",
        "    today: 2026-04-22\n    hook: encounter-discharge\n",
    )
    [result] = run_cases(load_library(bundled), name).results
    assert result.failures == ["expected card indicator info, got none"]


def test_invalid_json_in_a_questionnaire_is_reported_where_it_is(bundled: Path) -> None:
    path = bundled / "questionnaires" / "sscst.json"
    lines = path.read_text(encoding="utf-8").splitlines()
    broken = next(n for n, text in enumerate(lines) if '"linkId": "sscst-3"' in text)
    lines[broken] = lines[broken].replace('"linkId": "sscst-3"', '"linkId" "sscst-3"')
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    issues = [i for i in lint(bundled) if i.code == "invalid-json"]
    assert [(i.path, i.line) for i in issues] == [
        ("pathways/questionnaires/sscst.json", broken + 1)
    ]
    assert issues[0].column > 1


def test_a_file_saved_with_a_byte_order_mark_is_clean(bundled: Path) -> None:
    """Some Windows editors save UTF-8 with a BOM: the file loads, and its modeline counts."""
    path = bundled / "indicators" / "e-tattoo-branding.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert lint(bundled) == []


def test_a_local_contact_no_step_shows_is_a_warning(library: Path) -> None:
    edit(library / "nations" / "england.yaml", "[mash, out_of_hours]", "mash")
    edit(
        library / "local" / "st-elsewhere.yaml",
        "contacts:\n",
        "contacts:\n  out_of_hours: {name: Duty team}\n",
    )
    [issue] = lint(library)
    assert (issue.path, issue.line, issue.column, issue.code, issue.severity) == (
        "pathways/local/st-elsewhere.yaml",
        7,
        3,
        "unused-local-contact",
        "warning",
    )


# --------------------------------------------------------------------------- templates


def test_summary_that_can_reach_140_characters(library: Path) -> None:
    organisation = (
        "The Royal Synthetic Hospital for Sick Children and Young People of the North and the "
        "Islands NHS Foundation Trust"
    )
    old = "St Elsewhere Children's Hospital NHS Foundation Trust (synthetic)"
    edit(library / "local" / "st-elsewhere.yaml", old, organisation)
    summary = library.parent / "cards" / "assessment.summary.j2"
    summary.write_text(
        "Safeguarding: see the young person alone{% if organisation %} ({{ organisation }})"
        "{% endif %}\n",
        encoding="utf-8",
    )
    [issue] = lint(library)
    size = len(f"Safeguarding: see the young person alone ({organisation})")
    assert size >= 140
    assert (issue.path, issue.line, issue.code) == (
        "cards/assessment.summary.j2",
        1,
        "summary-too-long",
    )
    assert issue.message.startswith(f"the summary reaches {size} characters when nation=england")
    assert f"organisation='{organisation}'" in issue.message


def test_template_that_fails_with_realistic_variables(library: Path) -> None:
    summary = library.parent / "cards" / "assessment.summary.j2"
    summary.write_text("Safeguarding information\n{{ organisation.upper() }}\n", encoding="utf-8")
    [issue] = lint(library)
    assert (issue.path, issue.line, issue.column, issue.code) == (
        "cards/assessment.summary.j2",
        2,
        1,
        "template-render",
    )
    assert "organisation=None" in issue.message
    assert "UndefinedError: 'None' has no attribute 'upper'" in issue.message


def test_template_variable_the_service_does_not_provide(library: Path) -> None:
    summary = library.parent / "cards" / "order.summary.j2"
    summary.write_text("Safeguarding: {{ organization }}\n", encoding="utf-8")
    [issue] = lint(library)
    assert (issue.path, issue.line, issue.code) == (
        "cards/order.summary.j2",
        1,
        "template-variable",
    )


def test_the_assess_when_gate_is_checked_like_an_indicator_rule(library: Path) -> None:
    manifest = library / "library.yaml"
    edit(
        manifest,
        "combination:\n",
        "assess_when:\n  any:\n    - {age: {under: 18}}\n    - {evidence: age_dispute}\n"
        "evidence:\n  age_disputed: {resource: Flag, describe: Age disputed}\n"
        "combination:\n",
    )
    [issue] = lint(library)
    assert (issue.path, issue.line, issue.code) == (
        "pathways/library.yaml",
        6,
        "unknown-evidence",
    )
    assert "(defined: age_disputed)" in issue.message


def test_unknown_template_filter_is_a_lint_error_not_a_crash(library: Path) -> None:
    summary = library.parent / "cards" / "order.summary.j2"
    summary.write_text("Safeguarding\n{{ concern | shout }}\n", encoding="utf-8")
    [issue] = lint(library)
    assert (issue.path, issue.line, issue.code) == ("cards/order.summary.j2", 2, "template-syntax")
    assert issue.message == "No filter named 'shout'."


def test_missing_and_misnamed_templates(library: Path) -> None:
    cards = library.parent / "cards"
    (cards / "discharge.summary.j2").rename(cards / "dischrage.summary.j2")
    assert [(i.path, i.code, i.severity) for i in lint(library)] == [
        ("cards/discharge.summary.j2", "unknown-template", "error"),
        ("cards/dischrage.summary.j2", "unused-template", "warning"),
    ]


# --------------------------------------------------------------------------- files


def test_modelines_and_ignored_files(library: Path) -> None:
    valueset = library / "valuesets" / "sti-conditions.yaml"
    edit(valueset, "valueset.schema.json", "indicator.schema.json")
    overlay = library / "local" / "st-elsewhere.yaml"
    overlay.write_text(overlay.read_text(encoding="utf-8").split("\n", 1)[1], encoding="utf-8")
    shutil.copy(valueset, library / "valuesets" / "extra.yml")
    issues = lint(library)
    assert {i.severity for i in issues} == {"warning"}
    assert [str(i) for i in issues] == [
        "pathways/local/st-elsewhere.yaml:1:1: missing-modeline line 1 should be "
        "`# yaml-language-server: $schema=../../schemas/local.schema.json` so that editors "
        "complete and check this local file as you type.",
        "pathways/valuesets/extra.yml:1:1: ignored-file this file is never read, so nothing in "
        "it takes effect. The library reads library.yaml, indicators/**/*.yaml, "
        "valuesets/*.yaml, nations/*.yaml, local/*.yaml and *.test.yaml: move the file or "
        "rename it to .yaml.",
        "pathways/valuesets/sti-conditions.yaml:1:1: wrong-modeline this is a valueset file but "
        "line 1 is `# yaml-language-server: $schema=../../schemas/indicator.schema.json`; the "
        "editor checks it against the wrong schema. Write "
        "`# yaml-language-server: $schema=../../schemas/valueset.schema.json`.",
    ]
