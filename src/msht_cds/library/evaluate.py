"""Compile indicators into predicates once, then evaluate them over one indexed record.

Evidence selectors shared by several indicators are compiled and evaluated once per request;
nothing here walks the record more than once per selector.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..record import (
    PatientRecord,
    Resource,
    age_in_years,
    array,
    codings,
    concept_readers,
    path_reader,
    reference_key,
    relative_reference,
)
from .fhirpath import CompiledPath, compile_strict, truthy
from .model import (
    FORMS,
    STRENGTH_RANK,
    Combination,
    Concern,
    Condition,
    ContextRule,
    Count,
    Evidence,
    FieldTest,
    Form,
    Indicator,
    QuestionTest,
    Strength,
)


@dataclass(frozen=True)
class Fact:
    """One thing seen in the record; `key` makes the same fact count once across indicators."""

    reference: str
    description: str
    date: dt.date | None
    key: str


CodeIndex = dict[tuple[str, str], list[int]]


@dataclass
class Evaluation:
    """Per-request state: the record, the visit date and what has been computed so far."""

    record: PatientRecord
    visit_date: dt.date
    latest: dt.date = dt.date.max
    """The last day whose data counts (later data is a future booking or a wrong date): the
    day of the call plus one, since a timestamp is read on its own local date, which can be a
    day ahead of the service's UTC date. Not the visit date: data recorded during a stay of
    several days counts at discharge."""
    selector_results: dict[str, list[Fact]] = field(default_factory=dict)
    fired: dict[str, IndicatorResult] = field(default_factory=dict)
    code_indexes: dict[tuple[str, bool, str | None], CodeIndex] = field(default_factory=dict)
    text_matches: dict[tuple[str, str], bool] = field(default_factory=dict)
    text_indexes: dict[tuple[str, bool, tuple[str, ...]], dict[str, list[int]]] = field(
        default_factory=dict
    )

    variables: dict[str, Any] = field(init=False)
    """FHIRPath environment: `%visitDate` is the visit date (use `.toDate()`)."""

    def __post_init__(self) -> None:
        self.variables = {"visitDate": self.visit_date.isoformat()}


Predicate = Callable[[Evaluation], tuple[bool, list[Fact]]]


@dataclass
class IndicatorResult:
    indicator: Indicator
    fired: bool
    strength: Strength
    evidence: list[Fact]
    escalated_because: list[str] = field(default_factory=list)
    context_rule: ContextRule | None = None
    near: bool = False
    deduplicated_by: str | None = None

    @property
    def suppressed(self) -> bool:
        return self.context_rule is not None and self.context_rule.effect == "suppress"


@dataclass
class Assessment:
    """What the library concluded for one record; the card contract is built from this."""

    results: list[IndicatorResult]
    concern: Concern | None
    card_indicator: str | None
    library_version: str

    @property
    def counted(self) -> list[IndicatorResult]:
        return [
            r for r in self.results if r.fired and not r.suppressed and r.deduplicated_by is None
        ]

    @property
    def suppressed(self) -> list[IndicatorResult]:
        return [r for r in self.results if r.fired and r.suppressed]

    @property
    def deduplicated(self) -> list[IndicatorResult]:
        return [r for r in self.results if r.fired and r.deduplicated_by is not None]

    @property
    def near(self) -> list[IndicatorResult]:
        return [r for r in self.results if r.near]

    @property
    def fired_ids(self) -> set[str]:
        return {r.indicator.id for r in self.results if r.fired}

    @property
    def forms(self) -> list[Form]:
        """Forms named by form-specific indicators; all six only when none is specific."""
        specific = [r for r in self.counted if len(r.indicator.forms) < len(FORMS)]
        seen = {form for r in (specific or self.counted) for form in r.indicator.forms}
        return [f for f in FORMS if f in seen]


# --------------------------------------------------------------------------- selectors


FieldCheck = Callable[[Resource, "Evaluation"], bool]
FieldValues = Callable[[Resource], list[str]]


def _field_values(test: FieldTest) -> FieldValues:
    """The test's values of a resource as text (booleans as FHIR writes them)."""
    readers = [
        path_reader(tuple(p.split(".")))
        for p in ([test.path] if isinstance(test.path, str) else test.path)
    ]

    def values(resource: Resource) -> list[str]:
        return [
            str(v).lower() if isinstance(v, bool) else str(v)
            for read in readers
            for v in read(resource)
        ]

    return values


def _field_test(test: FieldTest) -> FieldCheck:
    values = _field_values(test)
    if test.exists is not None:
        wanted = test.exists
        return lambda r, ev: bool(values(r)) == wanted
    if test.equals is not None:
        target = str(test.equals).lower() if isinstance(test.equals, bool) else str(test.equals)
        return lambda r, ev: target in values(r)
    if test.is_in is not None:
        allowed = frozenset(test.is_in)
        return lambda r, ev: any(v in allowed for v in values(r))
    if test.matches is not None:
        paths = (test.path,) if isinstance(test.path, str) else tuple(test.path)
        return TextTest(paths, values, TextSearch(test.matches))
    excluded = frozenset(test.not_in or ())
    return lambda r, ev: not any(v in excluded for v in values(r))


class TextSearch:
    """A `matches` pattern. Records repeat the same few texts (repeat prescriptions): each
    distinct text is searched once per call, in a memo that lives and dies with the call."""

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self._search = re.compile(pattern, re.IGNORECASE).search

    def __call__(self, value: str, ev: Evaluation) -> bool:
        key = (self.pattern, value)
        found = ev.text_matches.get(key)
        if found is None:
            found = ev.text_matches[key] = self._search(value) is not None
        return found


@dataclass(frozen=True)
class TextTest:
    """A `matches` test. A selector's first one also narrows its candidates, through an index
    of the record's texts (built once per call for each resource type and set of paths)."""

    paths: tuple[str, ...]
    values: FieldValues
    search: TextSearch

    def __call__(self, resource: Resource, ev: Evaluation) -> bool:
        return any(self.search(value, ev) for value in self.values(resource))


@dataclass(frozen=True)
class CodeSet:
    """A value set compiled for matching: exact (system, code) pairs and code prefixes."""

    exact: frozenset[tuple[str, str]]
    prefixes: tuple[tuple[str, str], ...] = ()

    def contains(self, coding: tuple[str, str]) -> bool:
        if coding in self.exact:
            return True
        system, code = coding
        return any(system == s and code.startswith(p) for s, p in self.prefixes)

    def matches(self, found: Iterable[tuple[str, str]]) -> bool:
        return any(self.contains(coding) for coding in found)


def _answers(items: list[Any], link_id: str) -> Iterator[Any]:
    for item in items:
        if not isinstance(item, dict):
            continue
        answers = array(item.get("answer"))
        if item.get("linkId") == link_id:
            yield from answers
        yield from _answers(array(item.get("item")), link_id)
        for answer in answers:
            if isinstance(answer, dict):
                yield from _answers(array(answer.get("item")), link_id)


def _answered(resource: Resource, questionnaire: str) -> bool:
    """A completed response to `questionnaire`; a `|version` on either side is ignored."""
    canonical = str(resource.get("questionnaire", "")).split("|", 1)[0]
    return canonical == questionnaire.split("|", 1)[0] and resource.get("status") in (
        "completed",
        "amended",
    )


def scored_items(questionnaire: dict[str, Any]) -> frozenset[str]:
    """The linkIds a screening Questionnaire scores: its boolean items, at any depth."""
    found: set[str] = set()
    for item in array(questionnaire.get("item")):
        if isinstance(item, dict):
            if item.get("type") == "boolean" and isinstance(item.get("linkId"), str):
                found.add(item["linkId"])
            found |= scored_items(item)
    return frozenset(found)


def screening_score(resource: Resource, items: frozenset[str]) -> int:
    """The tool's published score: how many of its `items` are answered `yes`
    (valueBoolean true), wherever they sit (in groups, or under another item's answer). Each
    item counts once, and items of no tool never count."""
    answered = array(resource.get("item"))
    return sum(
        any(isinstance(a, dict) and a.get("valueBoolean") is True for a in _answers(answered, i))
        for i in items
    )


def question_matches(resource: Resource, question: QuestionTest) -> bool:
    """An answer to the question equal to `question.answer`: a boolean, or a coded or text
    answer."""
    if not _answered(resource, question.questionnaire):
        return False
    for answer in _answers(array(resource.get("item")), question.link_id):
        if not isinstance(answer, dict):
            continue
        if isinstance(question.answer, bool):  # `answer: false` asks for a recorded "no"
            if answer.get("valueBoolean") is question.answer:
                return True
            continue
        coding = answer.get("valueCoding")
        if isinstance(coding, dict) and coding.get("code") == question.answer:
            return True
        if answer.get("valueString") == question.answer:
            return True
    return False


@dataclass
class CompiledSelector:
    key: str
    spec: Evidence
    codes: CodeSet | None
    tests: list[FieldCheck]
    fhirpath: CompiledPath | None
    scored_items: frozenset[str] = frozenset()
    """With `score:`, the items its Questionnaire scores (none when the library lacks it:
    lint warns `unknown-questionnaire`)."""

    def __post_init__(self) -> None:
        spec = self.spec
        # One or a few candidates (the Patient, this encounter, its escorts): no indexes, and
        # one fact per resource and description.
        self.few = spec.resource == "Patient" or spec.current_encounter or spec.escort
        self.text_filter = next((t for t in self.tests if isinstance(t, TextTest)), None)

    def facts(self, ev: Evaluation) -> list[Fact]:
        cached = ev.selector_results.get(self.key)
        if cached is None:
            cached = ev.selector_results[self.key] = list(self._select(ev))
        return cached

    def _candidates(self, ev: Evaluation) -> list[Resource]:
        spec, record = self.spec, ev.record
        if spec.resource == "Patient":
            return [record.patient] if record.patient else []
        if spec.current_encounter:
            return [record.encounter] if record.encounter else []
        if spec.escort:
            return list(_escorts(record))
        return record.of_type(spec.resource, include_drafts=spec.include_draft_orders)

    def _select(self, ev: Evaluation) -> Iterator[Fact]:
        spec, record = self.spec, ev.record
        birth = record.birth_date
        earliest = _days_before(ev.visit_date, spec.within_days) if spec.within_days else None
        candidates = self._candidates(ev)
        narrowed: list[Resource] | None = None
        if self.codes is not None:
            narrowed = self._coded_candidates(ev, candidates)
        elif self.text_filter is not None and not self.few:
            narrowed = self._text_candidates(ev, candidates, self.text_filter)
        for resource in candidates if narrowed is None else narrowed:
            if self.codes is not None and narrowed is None and not self._coded(resource):
                continue
            if not all(test(resource, ev) for test in self.tests):
                continue
            date = record.date_of(resource)
            if earliest is not None and (date is None or date < earliest):
                continue
            if date is not None and date > ev.latest and not record.is_draft(resource):
                continue
            if spec.age_at_event is not None:
                on = date or ev.visit_date
                if birth is None or not _in_range(age_in_years(birth, on), spec.age_at_event):
                    continue
            if spec.question is not None and not question_matches(resource, spec.question):
                continue
            if spec.score is not None and not (
                _answered(resource, spec.score.questionnaire)
                and screening_score(resource, self.scored_items) >= spec.score.at_least
            ):
                continue
            if self.fhirpath is not None and not truthy(self.fhirpath(resource, ev.variables)):
                continue
            reference = reference_key(resource)
            key = reference
            if self.few:
                key = f"{reference}#{spec.describe}"
            elif spec.question is not None:
                key = f"{reference}#{spec.question.link_id}"
            elif spec.resource == "Encounter":
                # An attendance (class) and its reason (e.g. an assault) are different facts,
                # and so are two reasons of one visit (an assault and an intoxication).
                key = f"{reference}#{spec.code_path or 'reasonCode'}{self._matched(resource)}"
            elif spec.resource == "Condition":
                key = _diagnosis_key(record, resource, reference)
            description = spec.describe if date is None else f"{spec.describe} ({date.isoformat()})"
            yield Fact(reference, description, date, key)

    def _coded_candidates(
        self, ev: Evaluation, candidates: list[Resource]
    ) -> list[Resource] | None:
        """The candidates with a code in the value set, in record order, from an index of the
        record's codes built once per request for each resource type and element; None (test
        resource by resource) for the few-candidate selectors."""
        assert self.codes is not None
        spec = self.spec
        if self.few:
            return None
        key = (spec.resource, _with_drafts(spec, ev), spec.code_path)
        index = ev.code_indexes.get(key)
        if index is None:
            index = ev.code_indexes[key] = _code_index(candidates, spec.code_path)
        codes = self.codes
        hits = {p for code, found in index.items() if codes.contains(code) for p in found}
        return [candidates[p] for p in sorted(hits)]

    def _text_candidates(
        self, ev: Evaluation, candidates: list[Resource], text: TextTest
    ) -> list[Resource]:
        """The candidates with a text that `text` matches, in record order; the other tests
        still run on each of them. Used only by selectors without `codes:`, whose value set
        check comes first."""
        spec = self.spec
        key = (spec.resource, _with_drafts(spec, ev), text.paths)
        index = ev.text_indexes.get(key)
        if index is None:
            index = ev.text_indexes[key] = {}
            for position, resource in enumerate(candidates):
                for value in text.values(resource):
                    index.setdefault(value, []).append(position)
        hits = {p for value, found in index.items() if text.search(value, ev) for p in found}
        return [candidates[p] for p in sorted(hits)]

    def _matched(self, resource: Resource) -> str:
        """`:code|code`, the resource's codes in the value set ("" without `codes:`)."""
        if self.codes is None:
            return ""
        codes = self.codes
        found = {c for s, c in codings(resource, self.spec.code_path) if codes.contains((s, c))}
        return ":" + "|".join(sorted(found)) if found else ""

    def _coded(self, resource: Resource) -> bool:
        """Any of the resource's codings in the value set (the few-candidate selectors)."""
        assert self.codes is not None
        return self.codes.matches(codings(resource, self.spec.code_path))


def _days_before(day: dt.date, days: int) -> dt.date:
    """`day` minus `days`, or the first representable day (a record may say 0001-01-01)."""
    try:
        return day - dt.timedelta(days=days)
    except OverflowError:
        return dt.date.min


def _diagnosis_key(record: PatientRecord, condition: Resource, reference: str) -> str:
    """A diagnosis that restates a reason for its own attendance is the same fact as that
    reason (keyed by the codes they share): one intoxication coded on the visit and as a
    diagnosis counts once."""
    encounter = record.resolve(condition.get("encounter"))
    if encounter is None or encounter.get("resourceType") != "Encounter":
        return reference
    common = set(codings(encounter, "reasonCode")) & set(codings(condition))
    if common:
        return f"{reference_key(encounter)}#reasonCode:{'|'.join(sorted(c for _, c in common))}"
    return reference


def _with_drafts(spec: Evidence, ev: Evaluation) -> bool:
    """Whether the candidates include draft orders: with none in the call, selectors with
    and without `include_draft_orders` see the same resources and share one index."""
    return spec.include_draft_orders and bool(ev.record.draft_orders)


def _code_index(candidates: list[Resource], code_path: str | None) -> CodeIndex:
    """(system, code) → positions in `candidates`: the same pairs as `codings`, read in one
    loop per reader, since this runs on every resource of a type (the hottest loop of a call:
    plain dict and list access, no helper calls)."""
    index: CodeIndex = {}
    found = index.get
    readers = concept_readers(candidates[0]["resourceType"] if candidates else "", code_path)
    for read in readers:
        for position, resource in enumerate(candidates):
            for concept in read(resource):
                if not isinstance(concept, dict):
                    continue
                if "coding" in concept:
                    codings_ = concept["coding"]
                    if not isinstance(codings_, list):  # wrongly shaped: no codes (as `array`)
                        continue
                else:  # a bare Coding such as Encounter.class
                    if "code" not in concept:
                        continue
                    codings_ = (concept,)
                for coding in codings_:
                    if not isinstance(coding, dict):
                        continue
                    system = coding.get("system", "")
                    code = coding.get("code", "")
                    key = (
                        system if isinstance(system, str) else str(system),
                        code if isinstance(code, str) else str(code),
                    )
                    positions = found(key)
                    if positions is None:
                        index[key] = [position]
                    else:
                        positions.append(position)
    return index


def _escorts(record: PatientRecord) -> Iterator[Resource]:
    encounter = record.encounter
    if encounter is None:
        return
    for participant in array(encounter.get("participant")):
        if not isinstance(participant, dict):
            continue
        types = {c for t in array(participant.get("type")) for c in codings({"t": t}, "t")}
        if not any(code == "ESC" for _, code in types):
            continue
        person = record.resolve(participant.get("individual"))
        if person is not None and person.get("resourceType") == "RelatedPerson":
            yield person


def _in_range(age: int, spec: Any) -> bool:
    if spec.under is not None and age >= spec.under:
        return False
    return not (spec.at_least is not None and age < spec.at_least)


# --------------------------------------------------------------------------- compiler


class Compiler:
    """Turns the library's conditions into closures; shares identical selectors."""

    def __init__(
        self, valuesets: dict[str, CodeSet], scored: dict[str, frozenset[str]] | None = None
    ) -> None:
        self.valuesets = valuesets
        self.scored = scored or {}
        """Scored items by Questionnaire URL."""
        self.selectors: dict[str, CompiledSelector] = {}

    def selector(self, spec: Evidence) -> CompiledSelector:
        key = spec.model_dump_json(by_alias=True, exclude_defaults=True)
        found = self.selectors.get(key)
        if found is None:
            codes = self.valuesets[spec.codes] if spec.codes else None
            fhirpath = compile_strict(spec.fhirpath) if spec.fhirpath else None
            found = CompiledSelector(
                key,
                spec,
                codes,
                [_field_test(t) for t in spec.where],
                fhirpath,
                self._scored_items(spec),
            )
            self.selectors[key] = found
        return found

    def _scored_items(self, spec: Evidence) -> frozenset[str]:
        if spec.score is None:
            return frozenset()
        return self.scored.get(spec.score.questionnaire.split("|", 1)[0], frozenset())

    def condition(self, cond: Condition, evidence: dict[str, Evidence]) -> Predicate:
        if cond.all is not None:
            parts = [self.condition(c, evidence) for c in cond.all]
            return lambda ev: _all(parts, ev)
        if cond.any is not None:
            parts = [self.condition(c, evidence) for c in cond.any]
            return lambda ev: _any(parts, ev)
        if cond.not_ is not None:
            inner = self.condition(cond.not_, evidence)
            return lambda ev: (not inner(ev)[0], [])
        if cond.evidence is not None:
            return self._evidence(cond, self.selector(evidence[cond.evidence]))
        if cond.age is not None:
            band = cond.age
            return lambda ev: (_age_in(ev, band), [])
        if cond.age_unknown is not None:
            wanted = cond.age_unknown
            return lambda ev: ((ev.record.birth_date is None) == wanted, [])
        if cond.indicator is not None:
            target = cond.indicator

            def other(ev: Evaluation) -> tuple[bool, list[Fact]]:
                result = ev.fired.get(target)
                if result is None or not result.fired or result.suppressed:
                    return False, []
                return True, list(result.evidence)

            return other
        assert cond.fhirpath is not None
        path = compile_strict(cond.fhirpath)
        return lambda ev: (
            ev.record.patient is not None and truthy(path(ev.record.patient, ev.variables)),
            [],
        )

    @staticmethod
    def _evidence(cond: Condition, selector: CompiledSelector) -> Predicate:
        at_least = cond.at_least or 1
        fewer = cond.fewer_than
        distinct = path_reader(tuple(cond.distinct.split("."))) if cond.distinct else None

        def check(ev: Evaluation) -> tuple[bool, list[Fact]]:
            facts = selector.facts(ev)
            if distinct is not None:
                values: set[str] = set()
                for fact in facts:
                    resource = ev.record.by_reference.get(fact.reference)
                    if resource is not None:
                        values.update(_identity(ev.record, v) for v in distinct(resource))
                values.discard("")
                count = len(values)
            else:
                count = len(facts)
            ok = count >= at_least and (fewer is None or count < fewer)
            return ok, (facts if ok else [])

        return check


def _identity(record: PatientRecord, value: object) -> str:
    """What a `distinct` value stands for. A Reference, or a reference string, is its target:
    `Organization/h1`, its absolute URL and its `_history` versions are one hospital, and a
    reference to a resource in the record is that resource; a Reference with only an
    identifier is `system|value`. Anything else is its text ("" for nothing usable)."""
    if isinstance(value, dict):
        if isinstance(value.get("reference"), str):
            return _identity(record, value["reference"])
        identifier = value.get("identifier")
        if isinstance(identifier, dict) and isinstance(identifier.get("value"), str):
            return f"{identifier.get('system', '')}|{identifier['value']}"
        return ""
    if isinstance(value, str):
        target = record.resolve(value)
        if target is not None:
            return reference_key(target)
        return relative_reference(value) or value
    return str(value)


def _all(parts: list[Predicate], ev: Evaluation) -> tuple[bool, list[Fact]]:
    facts: list[Fact] = []
    for part in parts:
        ok, found = part(ev)
        if not ok:
            return False, []
        facts.extend(found)
    return True, facts


def _any(parts: list[Predicate], ev: Evaluation) -> tuple[bool, list[Fact]]:
    hit, facts = False, []
    for part in parts:
        ok, found = part(ev)
        if ok:
            hit = True
            facts.extend(found)
    return hit, facts


def _age_in(ev: Evaluation, band: Any) -> bool:
    age = ev.record.age_on(ev.visit_date)
    return age is not None and _in_range(age, band)


@dataclass
class CompiledIndicator:
    indicator: Indicator
    fires: Predicate
    escalations: list[tuple[Strength, Predicate, str]]
    context: list[tuple[ContextRule, Predicate]]
    near: Predicate | None

    def evaluate(self, ev: Evaluation, explain: bool) -> IndicatorResult:
        ind = self.indicator
        fired, facts = self.fires(ev)
        result = IndicatorResult(ind, fired, ind.strength, _unique(facts))
        if not fired:
            if explain and self.near is not None:
                result.near = self.near(ev)[0]
            return result
        for strength, predicate, reason in self.escalations:
            # An escalation raises the strength and says why; it adds no facts, so that an
            # escalating indicator never swallows the facts of the one it refers to.
            if STRENGTH_RANK[strength] > STRENGTH_RANK[result.strength] and predicate(ev)[0]:
                result.strength = strength
                result.escalated_because.append(reason)
        for rule, predicate in self.context:
            if predicate(ev)[0]:
                result.context_rule = rule
                lower = (
                    rule.to is not None and STRENGTH_RANK[rule.to] < STRENGTH_RANK[result.strength]
                )
                if rule.effect == "downgrade" and rule.to is not None and lower:
                    result.strength = rule.to
                break
        return result


def _unique(facts: list[Fact]) -> list[Fact]:
    seen: dict[str, Fact] = {}
    for fact in facts:
        seen.setdefault(fact.key, fact)
    return sorted(seen.values(), key=lambda f: (f.date or dt.date.min, f.reference), reverse=True)


# --------------------------------------------------------------------------- combination


def deduplicate(results: list[IndicatorResult]) -> None:
    """Count each fact once, for the strongest indicator it supports (brief §1.4)."""
    used: dict[str, str] = {}
    live = [r for r in results if r.fired and not r.suppressed]
    live.sort(key=lambda r: (-STRENGTH_RANK[r.strength], r.indicator.id))
    for result in live:
        keys = [f.key for f in result.evidence]
        if keys and all(k in used for k in keys):
            result.deduplicated_by = used[keys[0]]
            continue
        for key in keys:
            used.setdefault(key, result.indicator.id)


def _count_holds(count: Count, counted: list[IndicatorResult], info: list[IndicatorResult]) -> bool:
    pool = info if count.keep_info else counted
    if count.strength is not None:
        pool = [r for r in pool if r.strength == count.strength]
    if count.distinct_groups is not None:
        return len({r.indicator.group for r in pool}) >= count.distinct_groups
    return len(pool) >= (count.at_least or 1)


def combine(
    combination: Combination, results: list[IndicatorResult]
) -> tuple[Concern | None, str | None]:
    counted = [r for r in results if r.fired and not r.suppressed and r.deduplicated_by is None]
    info = [
        r for r in results if r.fired and r.context_rule is not None and r.context_rule.keep_info
    ]
    for level in combination.levels:
        any_ok = level.any is None or any(_count_holds(c, counted, info) for c in level.any)
        all_ok = level.all is None or all(_count_holds(c, counted, info) for c in level.all)
        if any_ok and all_ok:
            card = combination.card_indicator[level.concern]
            if level.concern != "low" and any(r.indicator.critical for r in counted):
                card = "critical"
            return level.concern, card
    return None, None
