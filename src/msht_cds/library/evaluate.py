"""Compile indicators into predicates once, then evaluate them over one indexed record.

Evidence selectors shared by several indicators are compiled and evaluated once per request;
nothing here walks the record more than once per selector.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..record import PatientRecord, Resource, age_in_years, codings, reference_key, walk
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


@dataclass
class Evaluation:
    """Per-request state: the record, the visit date and what has been computed so far."""

    record: PatientRecord
    today: dt.date
    visit_date: dt.date
    selector_results: dict[str, list[Fact]] = field(default_factory=dict)
    fired: dict[str, IndicatorResult] = field(default_factory=dict)
    fhirpath_results: dict[tuple[str, bytes], bool] = field(default_factory=dict)
    fhirpath_keys: dict[tuple[tuple[str, ...], tuple[Any, ...]], tuple[Any, ...]] = field(
        default_factory=dict
    )
    coding_sets: dict[tuple[int, str | None], frozenset[tuple[str, str]]] = field(
        default_factory=dict
    )
    code_indexes: dict[tuple[str, bool, str | None], dict[tuple[str, str], list[int]] | None] = (
        field(default_factory=dict)
    )

    @property
    def variables(self) -> dict[str, Any]:
        """FHIRPath environment: `%visitDate` is the visit date (use `.toDate()`)."""
        return {"visitDate": self.visit_date.isoformat()}


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


def _field_test(test: FieldTest) -> Callable[[Resource], bool]:
    path = tuple(test.path.split("."))

    def values(resource: Resource) -> list[str]:
        return [str(v).lower() if isinstance(v, bool) else str(v) for v in walk(resource, path)]

    if test.exists is not None:
        wanted = test.exists
        return lambda r: bool(values(r)) == wanted
    if test.equals is not None:
        target = str(test.equals).lower() if isinstance(test.equals, bool) else str(test.equals)
        return lambda r: target in values(r)
    if test.is_in is not None:
        allowed = frozenset(test.is_in)
        return lambda r: any(v in allowed for v in values(r))
    excluded = frozenset(test.not_in or ())
    return lambda r: not any(v in excluded for v in values(r))


def _answers(items: list[Any], link_id: str) -> Iterator[Any]:
    for item in items:
        if not isinstance(item, dict):
            continue
        if item.get("linkId") == link_id:
            yield from item.get("answer") or ()
        yield from _answers(item.get("item") or [], link_id)
        for answer in item.get("answer") or ():
            if isinstance(answer, dict):
                yield from _answers(answer.get("item") or [], link_id)


def _answered(resource: Resource, questionnaire: str) -> bool:
    canonical = str(resource.get("questionnaire", "")).split("|", 1)[0]
    return canonical == questionnaire and resource.get("status") in ("completed", "amended")


def _leaf_items(items: list[Any]) -> Iterator[dict[str, Any]]:
    for item in items:
        if isinstance(item, dict):
            if item.get("answer"):
                yield item
            yield from _leaf_items(item.get("item") or [])


def screening_score(resource: Resource) -> int:
    """Number of items answered `yes` (valueBoolean true) in a screening response."""
    return sum(
        1
        for item in _leaf_items(resource.get("item") or [])
        if any(isinstance(a, dict) and a.get("valueBoolean") is True for a in item["answer"])
    )


def question_matches(resource: Resource, question: QuestionTest) -> bool:
    if not _answered(resource, question.questionnaire):
        return False
    for answer in _answers(resource.get("item") or [], question.link_id):
        if not isinstance(answer, dict):
            continue
        if question.answer is True and answer.get("valueBoolean") is True:
            return True
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
    codes: frozenset[tuple[str, str]] | None
    tests: list[Callable[[Resource], bool]]
    fhirpath: CompiledPath | None
    fhirpath_reads: tuple[str, ...] | None = None
    """Top-level members the FHIRPath can read (see `_root_reads`); None: no memo."""

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
        earliest = ev.visit_date - dt.timedelta(days=spec.within_days) if spec.within_days else None
        per_fact_key = spec.resource == "Patient" or spec.current_encounter or spec.escort
        candidates = self._candidates(ev)
        coded = self._coded_candidates(ev, candidates) if self.codes is not None else None
        for resource in candidates if coded is None else coded:
            if self.codes is not None and coded is None and not self._coded(ev, resource):
                continue
            if not all(test(resource) for test in self.tests):
                continue
            date = record.date_of(resource)
            if earliest is not None and (date is None or date < earliest):
                continue
            if date is not None and date > ev.visit_date and not record.is_draft(resource):
                continue
            if spec.age_at_event is not None:
                on = date or ev.visit_date
                if birth is None or not _in_range(age_in_years(birth, on), spec.age_at_event):
                    continue
            if spec.question is not None and not question_matches(resource, spec.question):
                continue
            if spec.score is not None and not (
                _answered(resource, spec.score.questionnaire)
                and screening_score(resource) >= spec.score.at_least
            ):
                continue
            if self.fhirpath is not None and not self._fhirpath_holds(ev, resource):
                continue
            reference = reference_key(resource)
            key = reference
            if per_fact_key:
                key = f"{reference}#{spec.describe}"
            elif spec.question is not None:
                key = f"{reference}#{spec.question.link_id}"
            elif spec.resource == "Encounter":
                # An attendance (class) and its reason (e.g. an assault) are different facts.
                key = f"{reference}#{spec.code_path or 'reason'}"
            elif spec.resource == "Condition":
                key = _diagnosis_key(record, resource, reference)
            description = spec.describe if date is None else f"{spec.describe} ({date.isoformat()})"
            yield Fact(reference, description, date, key)

    def _coded_candidates(
        self, ev: Evaluation, candidates: list[Resource]
    ) -> list[Resource] | None:
        """The candidates with a code in the value set, in record order, from an index of the
        record's codes built once per request for each resource type and element; None (test
        resource by resource) for the few-candidate selectors, or when some resource's codings
        cannot be read, so that malformed data fails exactly where it did."""
        assert self.codes is not None
        spec = self.spec
        if spec.resource == "Patient" or spec.current_encounter or spec.escort:
            return None
        key = (spec.resource, spec.include_draft_orders, spec.code_path)
        if key not in ev.code_indexes:
            ev.code_indexes[key] = _code_index(ev, candidates, spec.code_path)
        index = ev.code_indexes[key]
        if index is None:
            return None
        if len(self.codes) <= len(index):
            hits = {p for code in self.codes for p in index.get(code, ())}
        else:
            hits = {p for code, found in index.items() if code in self.codes for p in found}
        return [candidates[p] for p in sorted(hits)]

    def _coded(self, ev: Evaluation, resource: Resource) -> bool:
        """Any of the resource's codings in the value set; the codings are read once per
        request for all the selectors that look at the same element."""
        assert self.codes is not None
        key = (id(resource), self.spec.code_path)
        found = ev.coding_sets.get(key)
        if found is None:
            try:
                found = frozenset(codings(resource, self.spec.code_path))
            except Exception:  # malformed data: the lazy test, failing (or not) as it would
                return any(c in self.codes for c in codings(resource, self.spec.code_path))
            ev.coding_sets[key] = found
        return not self.codes.isdisjoint(found)

    def _fhirpath_holds(self, ev: Evaluation, resource: Resource) -> bool:
        """truthy(FHIRPath), once per request for resources alike in every member it can read
        (repeat prescriptions, say): the interpreter costs ~0.1-0.2 ms per resource."""
        assert self.fhirpath is not None
        memo_key = None
        if self.fhirpath_reads is not None:
            reads = self.fhirpath_reads
            shape = (reads, tuple(resource))
            keys = ev.fhirpath_keys.get(shape)
            if keys is None:
                keys = ev.fhirpath_keys[shape] = tuple(
                    k
                    for k in shape[1]
                    if k == "resourceType"
                    or (isinstance(k, str) and k.lstrip("_").startswith(reads))
                )
            try:
                seen = orjson.dumps({k: resource[k] for k in keys})
            except TypeError:  # not plain JSON: evaluate as usual
                pass
            else:
                memo_key = (str(self.spec.fhirpath), seen)
                found = ev.fhirpath_results.get(memo_key)
                if found is not None:
                    return found
        result = truthy(self.fhirpath(resource, ev.variables))
        if memo_key is not None:
            ev.fhirpath_results[memo_key] = result
        return result


def _diagnosis_key(record: PatientRecord, condition: Resource, reference: str) -> str:
    """A diagnosis that restates the reason for its own attendance is the same fact as that
    reason: one intoxication coded on the visit and as a diagnosis counts once."""
    encounter = record.resolve(condition.get("encounter"))
    if encounter is None or encounter.get("resourceType") != "Encounter":
        return reference
    reasons = set(codings(encounter, "reasonCode"))
    if reasons and reasons & set(codings(condition)):
        return f"{reference_key(encounter)}#reason"
    return reference


def _code_index(
    ev: Evaluation, candidates: list[Resource], code_path: str | None
) -> dict[tuple[str, str], list[int]] | None:
    """(system, code) → positions in `candidates`; None if some codings cannot be read."""
    index: dict[tuple[str, str], list[int]] = {}
    for position, resource in enumerate(candidates):
        key = (id(resource), code_path)
        found = ev.coding_sets.get(key)
        if found is None:
            try:
                found = frozenset(codings(resource, code_path))
            except Exception:
                return None
            ev.coding_sets[key] = found
        for code in found:
            index.setdefault(code, []).append(position)
    return index


# --------------------------------------------------------------------------- FHIRPath memo
#
# A selector's FHIRPath result depends only on what the expression reads. `_root_reads` finds
# the top-level members it reads, by walking fhirpathpy's parse tree the way fhirpathpy
# evaluates it, or gives None when the whole resource may be read: `$this`, `%context` or a
# function applied to the resource itself, a capitalised (type) name at the root, time or side
# effects (now, today, trace, aggregate...). Resources whose `resourceType` and those members
# (choice-type and `_primitive` variants included) serialise alike get the same result.

_NOT_MEMOISED = frozenset({"trace", "now", "today", "timeOfDay", "aggregate", "defineVariable"})
_WHOLE_RESOURCE_CONSTANTS = frozenset({"context", "resource", "rootResource"})
_OPERATORS = frozenset(
    {
        "AdditiveExpression",
        "AndExpression",
        "EqualityExpression",
        "ImpliesExpression",
        "IndexerExpression",
        "InequalityExpression",
        "MembershipExpression",
        "MultiplicativeExpression",
        "OrExpression",
        "PolarityExpression",
        "UnionExpression",
        "XorExpression",
    }
)
_LITERALS = frozenset(
    {
        "BooleanLiteral",
        "DateTimeLiteral",
        "LiteralTerm",
        "NullLiteral",
        "NumberLiteral",
        "QuantityLiteral",
        "StringLiteral",
        "TimeLiteral",
    }
)


class _WholeResource(Exception):
    """The expression may read more of the resource than named members."""


def _root_reads(compiled: object) -> tuple[str, ...] | None:
    parsed = getattr(compiled, "parsedPath", None)
    try:
        from fhirpathpy.engine.invocations import invocation_registry

        reads: set[str] = set()
        _reach(parsed["children"][0], True, False, reads, invocation_registry)  # type: ignore[index]
    except (_WholeResource, ImportError, LookupError, TypeError, AttributeError):
        return None
    return tuple(sorted(reads))


def _name(node: Any) -> str:
    if node.get("type") != "Identifier" or not isinstance(node.get("text"), str):
        raise _WholeResource
    text: str = node["text"]
    return text.strip('"').replace("`", "")


def _reach(node: Any, at_root: bool, in_lambda: bool, reads: set[str], registry: Any) -> bool:
    """Record root members `node` reads; True if its value may hold the resource itself.
    `at_root`: its focus may be the resource; `in_lambda`: inside a where()/select()/...
    argument, where fhirpathpy's `$this` is an item, never the resource."""
    kind, children = node.get("type"), node.get("children") or []
    if kind in ("TermExpression", "InvocationTerm", "ParenthesizedTerm"):
        return _reach(children[0], at_root, in_lambda, reads, registry)
    if kind == "InvocationExpression":
        holds = _reach(children[0], at_root, in_lambda, reads, registry)
        for child in children[1:]:
            holds = _reach(child, holds, in_lambda, reads, registry)
        return holds
    if kind in _LITERALS or kind == "IndexInvocation":
        return False
    if kind in _OPERATORS or kind == "TypeExpression":
        operands = [c for c in children if c.get("type") != "TypeSpecifier"]
        return any([_reach(c, at_root, in_lambda, reads, registry) for c in operands])
    if kind == "ExternalConstantTerm":
        if _name(children[0]["children"][0]) in _WHOLE_RESOURCE_CONSTANTS:
            raise _WholeResource
        return False
    if kind == "ThisInvocation" and in_lambda:
        return False
    if kind == "MemberInvocation":
        name = _name(children[0])
        if not name or name[0].isupper():
            raise _WholeResource  # a type name at the root yields the resource
        if at_root:
            reads.add(name)
        return False
    if kind == "FunctionInvocation" and not at_root:
        functn = children[0]["children"]
        name = _name(functn[0])
        spec = registry.get(name)
        if spec is None or name in _NOT_MEMOISED:
            raise _WholeResource
        params = functn[1]["children"] if len(functn) > 1 else []
        if "variadic" in spec:
            types = [spec["variadic"]] * len(params)
        elif params:
            types = spec["arity"][len(params)]
        else:
            types = []
        for kind_of_param, param in zip(types, params, strict=True):
            if kind_of_param == "Expr":
                _reach(param, False, True, reads, registry)
            elif kind_of_param not in ("Identifier", "TypeSpecifier") and _reach(
                param, not in_lambda, in_lambda, reads, registry
            ):
                raise _WholeResource
        return False
    raise _WholeResource


def _escorts(record: PatientRecord) -> Iterator[Resource]:
    encounter = record.encounter
    if encounter is None:
        return
    for participant in encounter.get("participant") or ():
        if not isinstance(participant, dict):
            continue
        types = {c for t in participant.get("type") or () for c in codings({"t": t}, "t")}
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

    def __init__(self, valuesets: dict[str, frozenset[tuple[str, str]]]) -> None:
        self.valuesets = valuesets
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
                _root_reads(fhirpath),
            )
            self.selectors[key] = found
        return found

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
        distinct = tuple(cond.distinct.split(".")) if cond.distinct else None

        def check(ev: Evaluation) -> tuple[bool, list[Fact]]:
            facts = selector.facts(ev)
            if distinct is not None:
                values: set[str] = set()
                for fact in facts:
                    resource = ev.record.by_reference.get(fact.reference)
                    if resource is not None:
                        values.update(str(v) for v in walk(resource, distinct))
                count = len(values)
            else:
                count = len(facts)
            ok = count >= at_least and (fewer is None or count < fewer)
            return ok, (facts if ok else [])

        return check


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
