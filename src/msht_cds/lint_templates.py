"""Card templates checked the way production uses them: rendered with worst-case variables.

A template can parse and name only known variables and still fail on a real record: a
filter applied to `None` when no local overlay is configured, or a summary that fits for one
form of exploitation and runs past 140 characters when all six are named. The CDS Hooks
spec requires a summary under 140 characters (Inferno fails 140 or more), and `Card` rejects
it, so a long summary means no card at all. Lint therefore renders every template for every
nation and locality, concern level, card indicator and form combination the service can
produce, with the longest organisation name in the overlays, and reports the worst case.
"""

from __future__ import annotations

import datetime as dt
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from jinja2 import FileSystemLoader
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .cards import (
    CARD_KINDS,
    FORM_LABELS,
    UNSAFE_SUMMARY_WORDS,
    CardTemplates,
    template_environment,
    template_variables,
)
from .errors import LibraryLoadError, LintIssue
from .library.evaluate import Assessment, Fact, IndicatorResult
from .library.loader import Library
from .library.model import FORMS, STRENGTH_RANK, Concern, Form
from .referral import plan_referral

PARTS = ("summary.j2", "detail.md.j2")
SUMMARY_LIMIT = 140
EARLIER = "A clinician recorded 'already referred' on 2026-01-31."
EXAMPLE_DATE = dt.date(2026, 1, 31)


def check_templates(cards_dir: Path, library: Library | None, library_dir: Path) -> list[LintIssue]:
    """The service's own load-time checks, then (if the library loaded) rendering."""

    def shown(path: Path) -> str:
        try:
            return str(path.resolve().relative_to(library_dir.resolve().parent))
        except ValueError:
            return str(path)

    if not cards_dir.is_dir():
        message = "the card templates folder does not exist; pass it with --cards."
        return [LintIssue(shown(cards_dir), 1, 1, "missing-file", message)]
    try:
        CardTemplates.load(cards_dir)
        found: list[LintIssue] = []
    except LibraryLoadError as exc:
        found = exc.issues
    except (OSError, UnicodeError) as exc:  # e.g. a template saved in another encoding
        unreadable = [p for p in sorted(cards_dir.glob("*.j2")) if not _readable(p)] or [cards_dir]
        message = f"cannot be read ({exc}); save it as UTF-8 text."
        return [LintIssue(shown(p), 1, 1, "template-syntax", message) for p in unreadable]
    issues = [_reshown(issue, shown(Path(issue.path))) for issue in found]
    broken = {Path(issue.path).name for issue in found}
    names = [f"{kind}.{part}" for kind in CARD_KINDS for part in PARTS]
    for path in sorted(cards_dir.glob("*.j2")):
        if path.name not in names and not path.name.startswith("_"):
            issues.append(
                LintIssue(
                    shown(path),
                    1,
                    1,
                    "unused-template",
                    f"the service never uses {path.name}; it reads {', '.join(names)} and partials "
                    "named `_<name>.md.j2`. Rename it if it was meant to be one of them.",
                )
            )
    usable = [n for n in names if n not in broken and (cards_dir / n).is_file()]
    if library is not None and usable and not any(b.startswith("_") for b in broken):
        issues.extend(_render_checks(template_environment(cards_dir), library, usable, shown))
    return issues


def _readable(path: Path) -> bool:
    try:
        path.read_text(encoding="utf-8")
    except (OSError, UnicodeError):
        return False
    return True


def _reshown(issue: LintIssue, path: str) -> LintIssue:
    """Same path style as the library's issues; a missing template says how to start one."""
    message = issue.message
    if issue.code == "unknown-template":
        message += "; the service needs it to build that kind of card. Copy another template."
    return LintIssue(path, issue.line, issue.column, issue.code, message, issue.severity)


def _render_checks(
    env: ImmutableSandboxedEnvironment, library: Library, names: list[str], shown: Any
) -> list[LintIssue]:
    issues: list[LintIssue] = []
    failed: set[str] = set()
    unsafe: set[str] = set()
    longest: dict[str, tuple[int, str, str]] = {}
    root = Path(str(env.loader.searchpath[0])) if isinstance(env.loader, FileSystemLoader) else None
    for variables, situation in worst_cases(library):
        for name in names:
            if name in failed:
                continue
            try:
                text = env.get_template(name).render(**variables).strip()
            except Exception as exc:  # any failure here is a card that fails in production
                failed.add(name)
                where, line = _failing_frame(exc, root, name)
                issues.append(
                    LintIssue(
                        shown(where),
                        line,
                        1,
                        "template-render",
                        f"{name} fails when {situation}: {type(exc).__name__}: {exc}. In "
                        "production this card would not be shown; guard optional values with "
                        "`{% if x is defined and x %}` or `| default('')`.",
                    )
                )
                continue
            if name.endswith(".summary.j2"):
                text = text.replace("\n", " ")
                if len(text) > longest.get(name, (-1, "", ""))[0]:
                    longest[name] = (len(text), situation, text)
                found = UNSAFE_SUMMARY_WORDS.search(text)
                if found and name not in unsafe:
                    unsafe.add(name)
                    issues.append(
                        LintIssue(
                            shown((root or Path()) / name),
                            1,
                            1,
                            "unsafe-summary-wording",
                            f'`{found.group(0)}…` reaches the summary when {situation}: "{text}". '
                            "An accompanying adult may see the screen: keep variables that "
                            "name exploitation (such as form_labels) out of the summary.",
                        )
                    )
    for name, (size, situation, text) in sorted(longest.items()):
        if size >= SUMMARY_LIMIT:
            issues.append(
                LintIssue(
                    shown((root or Path()) / name),
                    1,
                    1,
                    "summary-too-long",
                    f'the summary reaches {size} characters when {situation}: "{text}". CDS Hooks '
                    f"requires fewer than {SUMMARY_LIMIT}, and a longer summary means no card is "
                    "shown; shorten the wording and move detail to the .detail.md.j2 template.",
                )
            )
    return issues


def _failing_frame(exc: BaseException, root: Path | None, name: str) -> tuple[Path, int]:
    """Jinja rewrites tracebacks so template frames carry the template file and its own line;
    the deepest one is where to look (it may be an included partial)."""
    where, line = (root or Path()) / name, 1
    for frame in traceback.extract_tb(exc.__traceback__):
        path = Path(frame.filename)
        if root is not None and path.suffix == ".j2" and path.parent.resolve() == root.resolve():
            where, line = path, frame.lineno or 1
    return where, line


def worst_cases(library: Library) -> Iterator[tuple[dict[str, Any], str]]:
    """Template variables for every situation the service can render, with a description."""
    overlays = [located.model for located in library.overlays.values()]
    longest_org = max((o.organisation for o in overlays), key=len, default=None)
    levels = library.manifest.combination.card_indicator
    concerns: tuple[Concern, ...] = ("high", "medium", "low")
    form_sets: list[tuple[str, list[Form]]] = [("all forms", list(FORMS)), ("no form", [])]
    form_sets += [(f"form {f}", [f]) for f in FORMS]
    for nation in sorted(library.nations):
        for overlay in [None, *(o for o in overlays if o.nation == nation)]:
            page = f"https://cds.example.org/pathways/{nation}"
            page += f"?locality={overlay.id}" if overlay else ""
            for concern in concerns:
                cards = [levels.get(concern, "info")] + (["critical"] if concern != "low" else [])
                for card in dict.fromkeys(cards):
                    assessment = synthetic_assessment(library, concern, card)
                    plan = plan_referral(library, nation, overlay, assessment)
                    for earlier in (None, EARLIER):
                        base = template_variables(assessment, plan, library, page, earlier)
                        for label, forms in form_sets:
                            for org in dict.fromkeys([base["organisation"], longest_org]):
                                where = (
                                    f"nation={nation}, locality={overlay.id if overlay else '-'}"
                                    f", concern={concern}, card indicator={card}, {label}, "
                                    f"organisation={org!r}"
                                    + (", after an earlier 'already referred'" if earlier else "")
                                )
                                yield (
                                    base
                                    | {
                                        "forms": list(forms),
                                        "form_labels": [FORM_LABELS[f] for f in forms],
                                        "organisation": org,
                                    },
                                    where,
                                )


def synthetic_assessment(library: Library, concern: Concern, card: str) -> Assessment:
    """Every active indicator fired at its strongest, with one fact per evidence selector,
    plus a suppressed copy for each `suppress` context rule."""
    results: list[IndicatorResult] = []
    for compiled in library.compiled:
        ind = compiled.indicator
        facts = [
            Fact(
                f"{spec.resource}/example-{n}",
                f"{spec.describe} ({EXAMPLE_DATE.isoformat()})",
                EXAMPLE_DATE,
                f"{ind.id}#{name}",
            )
            for n, (name, spec) in enumerate(ind.evidence.items())
        ]
        strengths = [ind.strength, *(e.to for e in ind.escalate)]
        strength = max(strengths, key=lambda s: STRENGTH_RANK[s])
        reasons = [e.reason for e in ind.escalate]
        results.append(IndicatorResult(ind, True, strength, facts, reasons))
        for rule in ind.context:
            if rule.effect == "suppress":
                results.append(IndicatorResult(ind, True, ind.strength, facts, context_rule=rule))
    return Assessment(results, concern, card, library.version)
