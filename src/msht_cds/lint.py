"""Lint the library and the card templates in one pass: every problem, with file and line."""

from __future__ import annotations

from pathlib import Path

from .cards import CardTemplates
from .errors import LibraryLoadError, LintIssue
from .library.loader import load_library
from .library.testing import run_cases


def lint_library(library_dir: Path, cards_dir: Path) -> list[LintIssue]:
    issues: list[LintIssue] = []
    library = None
    try:
        library = load_library(library_dir)
        issues.extend(library.warnings)
    except LibraryLoadError as exc:
        issues.extend(exc.issues)
    try:
        CardTemplates.load(cards_dir)
    except LibraryLoadError as exc:
        issues.extend(exc.issues)
    if library is not None:
        report = run_cases(library, name_filter="\0never")
        for ident in report.missing_fires:
            issues.append(_indicator_issue(library, ident, "missing-fires-case",
                f"indicator {ident} has no `kind: fires` case; add one to its .test.yaml"))
        for ident in report.missing_quiet:
            issues.append(_indicator_issue(library, ident, "missing-quiet-case",
                f"indicator {ident} has no `kind: quiet` look-alike; add one to its .test.yaml"))
    return sorted(issues, key=lambda i: (i.path, i.line, i.column, i.code))


def _indicator_issue(library: object, ident: str, code: str, message: str) -> LintIssue:
    located = library.indicators[ident]  # type: ignore[attr-defined]
    return located.doc.issue(("id",), code, message)  # type: ignore[no-any-return]
