"""Load `pathways/` into a validated, compiled `Library`, collecting every problem at once.

A library that has any error is never returned: the caller keeps serving the last good one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from ..errors import LibraryLoadError, LintIssue
from .evaluate import CodeSet, CompiledIndicator, Compiler, Predicate, scored_items
from .fhirpath import FhirPathSyntaxError, check_names, check_syntax
from .model import (
    CaseFile,
    Condition,
    Evidence,
    Indicator,
    LibraryManifest,
    ScoreTest,
    ValueSet,
)
from .pathway_model import LocalOverlay, NationalPathway
from .yamlfile import MODELINE_PREFIX, YamlDocument, read_yaml

M = TypeVar("M", bound=BaseModel)


@dataclass
class Located:
    """A model with the document it came from, so later checks can point at lines."""

    doc: YamlDocument
    model: Any


@dataclass
class Library:
    root: Path
    manifest: LibraryManifest
    revision: str
    valuesets: dict[str, Located]
    indicators: dict[str, Located]
    case_files: list[Located]
    nations: dict[str, Located]
    overlays: dict[str, Located]
    questionnaires: dict[str, dict[str, Any]]
    compiled: list[CompiledIndicator]
    assess_gate: Predicate | None = None
    warnings: list[LintIssue] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.manifest.id

    @property
    def version(self) -> str:
        return self.manifest.version


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root.parent))
    except ValueError:
        return str(path)


def _validation_issues(doc: YamlDocument, error: ValidationError) -> list[LintIssue]:
    issues = []
    for err in error.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        where = ".".join(str(p) for p in loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            issues.append(
                doc.issue(
                    loc,
                    "unknown-field",
                    f"`{loc[-1]}` is not a field here ({where}). Check the spelling against the "
                    "schema; unknown fields are rejected so that a typo never switches a rule off.",
                )
            )
        elif err["type"] == "missing":
            issues.append(
                doc.issue(loc[:-1], "missing-field", f"`{where}` is required but missing.")
            )
        else:
            issues.append(doc.issue(loc, "invalid-value", f"{where}: {err['msg']}."))
    return issues


def parse_model(doc: YamlDocument, model: type[M]) -> tuple[M | None, list[LintIssue]]:
    try:
        return model.model_validate(doc.data), []
    except ValidationError as exc:
        return None, _validation_issues(doc, exc)


def _conditions(cond: Condition | None) -> list[Condition]:
    if cond is None:
        return []
    found = [cond]
    for child in (cond.all or []) + (cond.any or []) + ([cond.not_] if cond.not_ else []):
        found.extend(_conditions(child))
    return found


def indicator_conditions(ind: Indicator) -> list[tuple[tuple[str | int, ...], Condition]]:
    """Every condition node of an indicator with the loc of its top-level rule."""
    tops: list[tuple[tuple[str | int, ...], Condition | None]] = [
        (("fires_when",), ind.fires_when),
        (("near_when",), ind.near_when),
    ]
    tops += [(("escalate", i, "when"), e.when) for i, e in enumerate(ind.escalate)]
    tops += [(("context", i, "when"), c.when) for i, c in enumerate(ind.context)]
    return [(loc, c) for loc, top in tops for c in _conditions(top)]


class _Loader:
    def __init__(self, root: Path, include_cases: bool) -> None:
        self.root = root
        self.include_cases = include_cases
        self.issues: list[LintIssue] = []
        self.warnings: list[LintIssue] = []
        self.digest = hashlib.sha256()
        self.scored: dict[str, frozenset[str]] = {}
        """The items each Questionnaire scores, by URL (read before the evidence is checked)."""

    def documents(self, pattern: str, *, exclude_tests: bool = False) -> list[YamlDocument]:
        docs = []
        for path in sorted(self.root.glob(pattern)):
            if exclude_tests and path.name.endswith(".test.yaml"):
                continue
            display = _relative(path, self.root)
            doc, problems = read_yaml(path, display)
            self.issues.extend(problems)
            if doc is None:
                continue
            if not path.name.endswith(".test.yaml"):  # the revision is what is served
                self.digest.update(display.encode() + b"\0" + doc.text.encode())
            if not doc.text.removeprefix("\ufeff").startswith(MODELINE_PREFIX):  # a BOM is fine
                self.warnings.append(
                    LintIssue(
                        display,
                        1,
                        1,
                        "missing-modeline",
                        f"line 1 should be `{MODELINE_PREFIX}<schema>` so editors can "
                        "complete and check this file; run `msht-cds schema` for the paths.",
                        "warning",
                    )
                )
            docs.append(doc)
        return docs

    def models(self, pattern: str, model: type[M], **kw: bool) -> list[Located]:
        found = []
        for doc in self.documents(pattern, **kw):
            parsed, problems = parse_model(doc, model)
            self.issues.extend(problems)
            if parsed is not None:
                found.append(Located(doc, parsed))
        return found

    def by_id(
        self, items: list[Located], key: Callable[[Any], str], what: str
    ) -> dict[str, Located]:
        table: dict[str, Located] = {}
        for item in items:
            ident = key(item.model)
            if ident in table:
                first = table[ident].doc
                self.issues.append(
                    item.doc.issue(
                        ("id",),
                        "duplicate-id",
                        f"{what} id `{ident}` is already used in {first.display_path}; "
                        "ids must be unique and stable - choose a new one.",
                    )
                )
                continue
            table[ident] = item
        return table

    def load(self) -> Library:
        manifests = self.models("library.yaml", LibraryManifest)
        if not (self.root / "library.yaml").exists():
            self.issues.append(
                LintIssue(
                    _relative(self.root / "library.yaml", self.root),
                    1,
                    1,
                    "missing-file",
                    "the library needs library.yaml (id, version, combination rules)",
                )
            )
        valuesets = self.by_id(
            self.models("valuesets/*.yaml", ValueSet), lambda m: m.id, "value set"
        )
        indicators = self.by_id(
            self.models("indicators/**/*.yaml", Indicator, exclude_tests=True),
            lambda m: m.id,
            "indicator",
        )
        case_files = self.models("**/*.test.yaml", CaseFile) if self.include_cases else []
        nations = self.by_id(
            self.models("nations/*.yaml", NationalPathway), lambda m: m.id, "nation"
        )
        overlays = self.by_id(
            self.models("local/*.yaml", LocalOverlay), lambda m: m.id, "local overlay"
        )
        questionnaires = self._questionnaires()
        self.scored = {url: scored_items(q) for url, q in questionnaires.items()}
        for located in indicators.values():
            self._check_references(located, valuesets, indicators)
        for located in case_files:
            self._check_cases(located, indicators)
        self._check_overlays(overlays, nations)
        for located in manifests:
            for name, spec in located.model.evidence.items():
                self._check_evidence(located.doc, name, spec, valuesets)
            gate_conditions = _conditions(located.model.assess_when)
            self._check_conditions(
                located.doc,
                located.model.evidence,
                [(("assess_when",), c) for c in gate_conditions],
                indicators,
            )
        compiled: list[CompiledIndicator] = []
        gate: Predicate | None = None
        if not self.issues:
            compiler = self._compiler(valuesets)
            compiled = self._compile(compiler, indicators)
            manifest = manifests[0].model if manifests else None
            if manifest is not None and manifest.assess_when is not None:
                gate = compiler.condition(manifest.assess_when, manifest.evidence)
        if self.issues or not manifests:
            raise LibraryLoadError(sorted(self.issues, key=lambda i: (i.path, i.line, i.column)))
        return Library(
            root=self.root,
            manifest=manifests[0].model,
            revision=self.digest.hexdigest()[:12],
            valuesets=valuesets,
            indicators=indicators,
            case_files=case_files,
            nations=nations,
            overlays=overlays,
            questionnaires=questionnaires,
            compiled=compiled,
            assess_gate=gate,
            warnings=self.warnings,
        )

    def _questionnaires(self) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        for path in sorted(self.root.glob("questionnaires/*.json")):
            display = _relative(path, self.root)
            try:
                text = path.read_text(encoding="utf-8")
                data = json.loads(text)
            except (OSError, ValueError) as exc:
                # A JSON error knows where it is; a file that cannot be read or decoded does not.
                line = exc.lineno if isinstance(exc, json.JSONDecodeError) else 1
                column = exc.colno if isinstance(exc, json.JSONDecodeError) else 1
                self.issues.append(LintIssue(display, line, column, "invalid-json", str(exc)))
                continue
            self.digest.update(display.encode() + b"\0" + text.encode())
            if (
                not isinstance(data, dict)
                or data.get("resourceType") != "Questionnaire"
                or not data.get("url")
            ):
                self.issues.append(
                    LintIssue(
                        display,
                        1,
                        1,
                        "invalid-value",
                        "a questionnaire file must be a FHIR Questionnaire with a `url`",
                    )
                )
                continue
            found[str(data["url"])] = data
        return found

    def _check_references(
        self, located: Located, valuesets: dict[str, Located], indicators: dict[str, Located]
    ) -> None:
        ind: Indicator = located.model
        for name, spec in ind.evidence.items():
            self._check_evidence(located.doc, name, spec, valuesets)
        self._check_conditions(located.doc, ind.evidence, indicator_conditions(ind), indicators)

    def _check_conditions(
        self,
        doc: YamlDocument,
        evidence: dict[str, Evidence],
        conditions: list[tuple[tuple[str | int, ...], Condition]],
        indicators: dict[str, Located],
    ) -> None:
        """The names a condition uses exist, and its FHIRPath parses (indicators and the
        library's `assess_when` alike)."""
        for loc, cond in conditions:
            if cond.evidence is not None and cond.evidence not in evidence:
                known = ", ".join(sorted(evidence)) or "none defined"
                self.issues.append(
                    doc.issue(
                        loc,
                        "unknown-evidence",
                        f"`evidence: {cond.evidence}` names no selector under `evidence:` "
                        f"(defined: {known}).",
                    )
                )
            if cond.indicator is not None and cond.indicator not in indicators:
                self.issues.append(
                    doc.issue(
                        loc,
                        "unknown-indicator",
                        f"`indicator: {cond.indicator}` is not an indicator id in this library.",
                    )
                )
            if cond.fhirpath is not None:
                self._check_fhirpath(doc, loc, cond.fhirpath, "Patient")

    def _check_evidence(
        self, doc: YamlDocument, name: str, spec: Evidence, valuesets: dict[str, Located]
    ) -> None:
        loc: tuple[str | int, ...] = ("evidence", name)
        if spec.codes is not None and spec.codes not in valuesets:
            self.issues.append(
                doc.issue(
                    (*loc, "codes"),
                    "unknown-valueset",
                    f"value set `{spec.codes}` does not exist; add valuesets/{spec.codes}.yaml or "
                    f"use one of: {', '.join(sorted(valuesets))}.",
                )
            )
        if spec.fhirpath is not None:
            self._check_fhirpath(doc, (*loc, "fhirpath"), spec.fhirpath, spec.resource)
        if spec.score is not None:
            self._check_score(doc, (*loc, "score"), spec.score)

    def _check_score(self, doc: YamlDocument, loc: tuple[str | int, ...], score: ScoreTest) -> None:
        """A score is counted over the boolean items of a shipped Questionnaire: without it, or
        with fewer items than the threshold, the evidence could never count."""
        url = score.questionnaire.split("|", 1)[0]
        items = self.scored.get(url)
        if items is None:
            known = ", ".join(sorted(self.scored)) or "none"
            message = (
                f"`{score.questionnaire}` is not a Questionnaire in questionnaires/ (known: "
                f"{known}); a score is counted over its boolean items, so add the Questionnaire "
                "JSON or copy its `url` exactly."
            )
            self.issues.append(
                doc.issue((*loc, "questionnaire"), "unscorable-questionnaire", message)
            )
        elif score.at_least > len(items):
            message = (
                f"`at_least: {score.at_least}` can never be reached: {url} has "
                f"{len(items)} boolean item(s) to score ({', '.join(sorted(items)) or 'none'}); "
                "give its scored items `type: boolean`, or lower the threshold."
            )
            issue = doc.issue((*loc, "at_least"), "unscorable-questionnaire", message)
            self.issues.append(issue)

    def _check_fhirpath(
        self, doc: YamlDocument, loc: tuple[str | int, ...], expr: str, resource_type: str
    ) -> None:
        try:
            check_syntax(expr)
            check_names(expr, resource_type)
        except FhirPathSyntaxError as exc:
            self.issues.append(
                doc.issue(
                    loc,
                    "fhirpath-syntax",
                    f"FHIRPath `{expr}` cannot work ({exc}); fix the expression or use a "
                    "declarative test (codes, where, within_days).",
                )
            )

    def _check_cases(self, located: Located, indicators: dict[str, Located]) -> None:
        casefile: CaseFile = located.model
        if casefile.indicator is not None and casefile.indicator not in indicators:
            self.issues.append(
                located.doc.issue(
                    ("indicator",),
                    "unknown-indicator",
                    f"these cases test `{casefile.indicator}`, which is not in the library.",
                )
            )
        for i, case in enumerate(casefile.cases):
            for key in ("fires", "quiet"):
                for j, ident in enumerate(getattr(case.expect, key)):
                    if ident not in indicators:
                        self.issues.append(
                            located.doc.issue(
                                ("cases", i, "expect", key, j),
                                "unknown-indicator",
                                f"case `{case.name}` expects `{ident}`, not in the library",
                            )
                        )

    def _check_overlays(self, overlays: dict[str, Located], nations: dict[str, Located]) -> None:
        for located in overlays.values():
            nation = located.model.nation
            if nation not in nations:
                self.issues.append(
                    located.doc.issue(
                        ("nation",),
                        "unknown-nation",
                        f"nation `{nation}` has no pathway file; use one of: "
                        f"{', '.join(sorted(nations))}.",
                    )
                )

    def _compiler(self, valuesets: dict[str, Located]) -> Compiler:
        return Compiler(
            {
                ident: CodeSet(
                    exact=frozenset(
                        (c.system, c.code) for c in loc.model.codes if c.match == "exact"
                    ),
                    prefixes=tuple(
                        (c.system, c.code) for c in loc.model.codes if c.match == "prefix"
                    ),
                )
                for ident, loc in valuesets.items()
            },
            self.scored,
        )

    def _compile(
        self, compiler: Compiler, indicators: dict[str, Located]
    ) -> list[CompiledIndicator]:
        active = {k: v for k, v in indicators.items() if v.model.status == "active"}
        order = self._dependency_order(active)
        compiled = []
        for ident in order:
            ind: Indicator = active[ident].model
            compiled.append(
                CompiledIndicator(
                    indicator=ind,
                    fires=compiler.condition(ind.fires_when, ind.evidence),
                    escalations=[
                        (e.to, compiler.condition(e.when, ind.evidence), e.reason)
                        for e in ind.escalate
                    ],
                    context=[(c, compiler.condition(c.when, ind.evidence)) for c in ind.context],
                    near=compiler.condition(ind.near_when, ind.evidence) if ind.near_when else None,
                )
            )
        return compiled

    def _dependency_order(self, active: dict[str, Located]) -> list[str]:
        """Indicators that refer to others are evaluated after them; cycles are errors."""
        deps = {
            ident: {c.indicator for _, c in indicator_conditions(loc.model) if c.indicator}
            for ident, loc in active.items()
        }
        order: list[str] = []
        state: dict[str, int] = {}

        def visit(ident: str, trail: list[str]) -> None:
            if state.get(ident) == 2:
                return
            if state.get(ident) == 1:
                cycle = " → ".join([*trail, ident])
                self.issues.append(
                    active[ident].doc.issue(
                        ("fires_when",),
                        "indicator-cycle",
                        f"indicators refer to each other in a loop ({cycle}); break the loop.",
                    )
                )
                return
            state[ident] = 1
            for dep in sorted(deps[ident]):
                if dep in active:
                    visit(dep, [*trail, ident])
                else:
                    self.issues.append(
                        active[ident].doc.issue(
                            ("fires_when",),
                            "unknown-indicator",
                            f"refers to `{dep}`, which is not an active indicator.",
                        )
                    )
            state[ident] = 2
            order.append(ident)

        for ident in sorted(active):
            visit(ident, [])
        if self.issues:
            raise LibraryLoadError(self.issues)
        return order


def load_library(root: Path, *, include_cases: bool = True) -> Library:
    """Load and compile; raises LibraryLoadError listing every problem found.

    The service leaves out the test cases (`include_cases=False`): they are for lint and
    `msht-cds test`, and are most of the library's bytes."""
    if not root.is_dir():
        raise LibraryLoadError(
            [LintIssue(str(root), 1, 1, "missing-file", "the library folder does not exist")]
        )
    return _Loader(root, include_cases).load()
