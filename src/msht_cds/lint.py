"""Lint the library and the card templates in one pass: every problem, with file and line.

A safeguarding lead runs `msht-cds lint pathways/` before every reload. It must say everything
that is wrong at once (not one error per run), point at `path:line:col`, and say what to write
instead, because the person reading it edits YAML, not Python. The service's loader finds the
schema problems; this module adds the checks that need the whole library: templates rendered
with worst-case variables, every test case run, codes that must not be relied on alone.

Every code is listed once in `LintCode` with its severity and one line of description, and
docs/lint-codes.md has one section per code (a test keeps the two lists identical).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, get_args

from .errors import LibraryLoadError, LintIssue
from .library.loader import Library, load_library
from .library.model import Condition, Indicator
from .library.testing import check_case, run_cases
from .lint_files import check_files, with_hints
from .lint_templates import check_templates
from .record import elements, parse_date
from .service import Knowledge, load_knowledge

Severity = Literal["error", "warning"]
LintCode = Literal[
    "yaml-syntax", "invalid-json", "missing-file", "unknown-field", "missing-field",
    "invalid-value", "duplicate-id", "unknown-valueset", "unknown-evidence", "unknown-indicator",
    "unknown-nation", "indicator-cycle", "fhirpath-syntax", "unknown-questionnaire",
    "unknown-question", "unscorable-questionnaire", "unverified-code-alone", "missing-fires-case",
    "missing-quiet-case", "case-failed", "unknown-template", "template-syntax", "template-variable",
    "template-render", "summary-too-long", "unsafe-summary-wording", "unused-template",
    "unused-local-contact", "missing-modeline", "wrong-modeline", "ignored-file",
]  # fmt: skip


@dataclass(frozen=True)
class CodeInfo:
    """What a code means in one line, and whether it stops the library (error) or not."""

    severity: Severity
    description: str


# fmt: off
E: Final = "error"  # shorthands that keep the table below one line per code
W: Final = "warning"
CODES: dict[LintCode, CodeInfo] = {
    "yaml-syntax": CodeInfo(E, "The file is not valid YAML (or repeats a key)."),
    "invalid-json": CodeInfo(E, "A questionnaire file is not valid JSON."),
    "missing-file": CodeInfo(E, "A file or folder the library needs does not exist."),
    "unknown-field": CodeInfo(E, "A field name the schema does not know, usually a typo."),
    "missing-field": CodeInfo(E, "A required field is missing."),
    "invalid-value": CodeInfo(E, "A value has the wrong type or is not an allowed value."),
    "duplicate-id": CodeInfo(E, "Two files use the same id."),
    "unknown-valueset": CodeInfo(E, "`codes:` names a value set that does not exist."),
    "unknown-evidence": CodeInfo(E, "A test names an evidence selector the indicator lacks."),
    "unknown-indicator": CodeInfo(E, "An indicator id that is not in the library."),
    "unknown-nation": CodeInfo(E, "A local overlay names a nation without a pathway file."),
    "indicator-cycle": CodeInfo(E, "Indicators refer to each other in a loop."),
    "fhirpath-syntax": CodeInfo(E, "A FHIRPath expression does not parse, or cannot run."),
    "unknown-questionnaire": CodeInfo(W, "A question names a Questionnaire the library lacks."),
    "unknown-question": CodeInfo(E, "A question's link_id is not an item of its Questionnaire."),
    "unscorable-questionnaire": CodeInfo(E, "A score's Questionnaire is missing or too short."),
    "unverified-code-alone": CodeInfo(E, "An indicator can fire only on unverified codes."),
    "missing-fires-case": CodeInfo(E, "An indicator has no case in which it fires."),
    "missing-quiet-case": CodeInfo(E, "An indicator has no look-alike case where it is quiet."),
    "case-failed": CodeInfo(E, "A test case does not pass (as `msht-cds test` reports)."),
    "unknown-template": CodeInfo(E, "A card template the service needs is missing."),
    "template-syntax": CodeInfo(E, "A card template is not valid Jinja."),
    "template-variable": CodeInfo(E, "A card template uses a variable the service lacks."),
    "template-render": CodeInfo(E, "A card template fails with realistic variables."),
    "summary-too-long": CodeInfo(E, "A card summary can reach 140 characters or more."),
    "unsafe-summary-wording": CodeInfo(E, "A summary names exploitation; an adult may see it."),
    "unused-template": CodeInfo(W, "A file in cards/ that the service never uses."),
    "unused-local-contact": CodeInfo(W, "A local contact that no pathway step shows."),
    "missing-modeline": CodeInfo(W, "Line 1 lacks the `# yaml-language-server` modeline."),
    "wrong-modeline": CodeInfo(W, "The modeline points at the wrong schema file."),
    "ignored-file": CodeInfo(W, "A YAML file the library does not read (folder or .yml)."),
}
# fmt: on
assert set(CODES) == set(get_args(LintCode)), "every LintCode needs a CodeInfo"


def lint_library(library_dir: Path, cards_dir: Path) -> list[LintIssue]:
    """Every problem in the library and its card templates, sorted by file and line."""
    issues: list[LintIssue] = []
    library: Library | None = None
    try:
        library = load_library(library_dir)
        issues.extend(library.warnings)
    except LibraryLoadError as exc:
        issues.extend(exc.issues)
    issues = with_hints([i for i in issues if i.code != "missing-modeline"], library_dir)
    if library_dir.is_dir():
        issues.extend(check_files(library_dir))
    issues.extend(check_templates(cards_dir, library, library_dir))
    if library is not None:
        issues.extend(check_cases(library))
        issues.extend(check_unverified(library))
        issues.extend(check_questions(library))
        issues.extend(check_overlays(library))
    unique = {(i.path, i.line, i.column, i.code, i.message): _typed(i) for i in issues}
    return sorted(unique.values(), key=lambda i: (i.path, i.line, i.column, i.code))


NOT_FOR_SERVING: frozenset[LintCode] = frozenset({"missing-fires-case", "missing-quiet-case"})
"""Errors about cases that are absent: a deployment may ship the library without its tests.
Cases that are shipped must pass (`case-failed` still stops it)."""


def load_linted_knowledge(library_dir: Path, cards_dir: Path) -> Knowledge:
    """What start-up and every reload serve: the library and templates, only when lint finds no
    error (meaning checks and shipped cases included, not only the schema). Raises
    LibraryLoadError with every error otherwise, so the last good library keeps serving."""
    errors = [
        issue
        for issue in lint_library(library_dir, cards_dir)
        if issue.severity == "error" and issue.code not in NOT_FOR_SERVING
    ]
    if errors:
        raise LibraryLoadError(errors)
    return load_knowledge(library_dir, cards_dir)


def _typed(issue: LintIssue) -> LintIssue:
    info = CODES.get(issue.code)  # type: ignore[call-overload]
    return dataclasses.replace(issue, severity=info.severity) if info else issue


# --------------------------------------------------------------------------- meaning


def check_cases(library: Library) -> list[LintIssue]:
    """Each indicator has a fires and a quiet case, and every case passes (as in `test`)."""
    issues = []
    report = run_cases(library, name_filter="\0never")
    for ident in report.missing_fires:
        issues.append(
            _at_indicator(
                library,
                ident,
                "missing-fires-case",
                f"indicator {ident} has no `kind: fires` case, so nothing shows that it can fire. "
                "Add a case to its .test.yaml with `expect: {fires: [" + ident + "]}`.",
            )
        )
    for ident in report.missing_quiet:
        issues.append(
            _at_indicator(
                library,
                ident,
                "missing-quiet-case",
                f"indicator {ident} has no `kind: quiet` look-alike, so nothing shows that it "
                "stays quiet for an innocent record. Add a case with "
                "`expect: {quiet: [" + ident + "]}`.",
            )
        )
    for located in library.case_files:
        for index, case in enumerate(located.model.cases):
            for r, resource in enumerate(case.resources):
                for path, value in _malformed_dates(resource):
                    issues.append(
                        located.doc.issue(
                            ("cases", index, "resources", r, *path),
                            "invalid-value",
                            f"`{value}` is not a FHIR date or date-time (YYYY, YYYY-MM, "
                            "YYYY-MM-DD, or YYYY-MM-DDThh:mm:ss with a zone); the service reads "
                            "it as absent, so the case would not test what it says.",
                        )
                    )
            if case.todo:
                continue
            try:
                failures = check_case(library, case)
            except Exception as exc:  # a crash is a failure the lead must see, not a traceback
                failures = [f"evaluation raised {type(exc).__name__}: {exc}"]
            if failures:
                issues.append(
                    located.doc.issue(
                        ("cases", index, "name"),
                        "case-failed",
                        f"case `{case.name}` fails: {'; '.join(failures)}. The rule does not "
                        "do what its case says; fix the rule or the case "
                        "(`msht-cds test -k` shows it).",
                    )
                )
    return issues


_DATE_KEYS = frozenset(
    {
        "birthDate", "deceasedDateTime", "start", "end", "authored", "authoredOn", "issued",
        "recordedDate", "onsetDateTime", "abatementDateTime", "effectiveDateTime",
        "performedDateTime", "occurrenceDateTime", "whenHandedOver", "dateAsserted", "created",
    }
)  # fmt: skip
_FHIR_DATE = re.compile(
    r"^\d{4}(-\d{2}(-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})?)?)?)?$"
)


def _malformed_dates(resource: dict[str, Any]) -> Iterator[tuple[Any, str]]:
    """(path, text) of every date element in a case resource that FHIR would not accept."""
    for path, value in elements(resource):
        if path[-1] in _DATE_KEYS and isinstance(value, str | dt.date):
            text = value.isoformat() if isinstance(value, dt.date) else value
            if not _FHIR_DATE.match(text) or parse_date(text) is None:
                yield path, text


def _at_indicator(library: Library, ident: str, code: str, message: str) -> LintIssue:
    return library.indicators[ident].doc.issue(("id",), code, message)


def check_unverified(library: Library) -> list[LintIssue]:
    """An indicator must not fire only on codes nobody has verified (brief §1.1 ✘ codes)."""
    unverified = {
        ident
        for ident, located in library.valuesets.items()
        if all(code.verification == "unverified" for code in located.model.codes)
    }
    issues = []
    for ident, located in sorted(library.indicators.items()):
        routes = _unverified_routes(
            located.model.fires_when, located.model, library, unverified, frozenset({ident})
        )
        if routes:
            issues.append(
                located.doc.issue(
                    ("fires_when",),
                    "unverified-code-alone",
                    f"{ident} can fire only through {', '.join(sorted(set(routes)))}, whose codes "
                    "are all `verification: unverified`; an unchecked code may mean something else "
                    "in the EHR and raise a safeguarding card wrongly. Add another route under "
                    "`fires_when: any:` (e.g. a consultation question) or verify the codes.",
                )
            )
    return issues


def _unverified_routes(
    cond: Condition, ind: Indicator, library: Library, unverified: set[str], trail: frozenset[str]
) -> list[str] | None:
    """The unverified value sets every way of satisfying `cond` needs, or None if some
    way needs none (a negation, an age test or a question is such a way)."""
    if cond.evidence is not None:
        spec = ind.evidence.get(cond.evidence)
        if spec is not None and spec.codes in unverified:
            return [f"evidence `{cond.evidence}` (value set `{spec.codes}`)"]
        return None
    if cond.all is not None:
        for child in cond.all:
            found = _unverified_routes(child, ind, library, unverified, trail)
            if found:
                return found
        return None
    if cond.any:
        routes: list[str] = []
        for child in cond.any:
            found = _unverified_routes(child, ind, library, unverified, trail)
            if not found:
                return None
            routes.extend(found)
        return routes
    other = library.indicators.get(cond.indicator or "")
    if other is None or other.model.id in trail:
        return None
    return _unverified_routes(
        other.model.fires_when, other.model, library, unverified, trail | {other.model.id}
    )


def check_questions(library: Library) -> list[LintIssue]:
    """A question on a Questionnaire the library lacks, or a link_id it does not have, is a
    rule that can never fire."""
    issues = []
    for located in library.indicators.values():
        for name, spec in located.model.evidence.items():
            # A `score:` is checked when the library loads (unscorable-questionnaire).
            for key, test in (("question", spec.question),):
                if test is None:
                    continue
                loc: tuple[str | int, ...] = ("evidence", name, key)
                questionnaire = library.questionnaires.get(test.questionnaire.split("|")[0])
                if questionnaire is None:
                    known = ", ".join(sorted(library.questionnaires)) or "none"
                    issues.append(
                        located.doc.issue(
                            (*loc, "questionnaire"),
                            "unknown-questionnaire",
                            f"`{test.questionnaire}` is not a Questionnaire in questionnaires/ "
                            f"(known: {known}); check the URL or add the Questionnaire JSON.",
                        )
                    )
                    continue
                link_id = getattr(test, "link_id", None)
                if link_id is not None and link_id not in _link_ids(questionnaire):
                    issues.append(
                        located.doc.issue(
                            (*loc, "link_id"),
                            "unknown-question",
                            f"`{link_id}` is not an item of {test.questionnaire}, so this evidence "
                            "never matches; copy the item's linkId from the Questionnaire.",
                        )
                    )
    return issues


def _link_ids(node: Any) -> set[str]:
    found: set[str] = set()
    for item in node.get("item") or () if isinstance(node, dict) else ():
        if isinstance(item, dict):
            found.add(str(item.get("linkId")))
            found |= _link_ids(item)
    return found


def check_overlays(library: Library) -> list[LintIssue]:
    """A local contact under a key no step uses is never shown: usually a misspelt key."""
    issues = []
    for located in library.overlays.values():
        nation = library.nations.get(located.model.nation)
        if nation is None:
            continue
        used = sorted({key for step in nation.model.steps for key in step.local_contact_keys})
        for key in located.model.contacts:
            if key not in used:
                close = difflib.get_close_matches(key, used, n=1)
                hint = f"Did you mean `{close[0]}`? " if close else ""
                issues.append(
                    located.doc.issue(
                        ("contacts", key),
                        "unused-local-contact",
                        f"contact `{key}` is never shown: no {located.model.nation} step has "
                        f"`local_contact: {key}`. {hint}Keys the steps use: {', '.join(used)}.",
                    )
                )
    return issues
