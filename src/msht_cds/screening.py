"""Scored screening tools (SSCST, QYIT) and the arithmetic of diagnostic accuracy.

The two tools are shipped as FHIR R4 Questionnaires under `pathways/questionnaires/`
(`sscst.json`, `qyit.json`); the indicator `SCREEN_POSITIVE` reads their responses through the
library's `score:` selector. This module is the typed, testable statement of the same rules:

* `score(response)` counts the `yes` answers (`valueBoolean: true`) given to the items of the
  tool the response belongs to (found from `QuestionnaireResponse.questionnaire`);
* `is_positive(response)` compares that count with the tool's published threshold
  (SSCST: 2 or more of 6; QYIT: 1 or more of 4).

`AccuracyTable` turns a 2×2 table (true/false positives and negatives against the reference
standard) into sensitivity, specificity, predictive values, LR+ and prevalence. It is used by
`tests/test_screening.py` to check that the 2×2 tables reconstructed in the domain brief §2.1
reproduce the published accuracy figures. See `docs/screening.md`.

A positive screen is never a diagnosis: at the prevalences seen in the validation studies
(6-16 %) the SSCST's positive predictive value is about 20 %, so a positive result means
"see the young person alone and ask more", not "refer to the NRM".
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "QYIT",
    "SSCST",
    "TOOLS",
    "AccuracyTable",
    "ScreeningTool",
    "is_positive",
    "score",
    "tool_for",
]


@dataclass(frozen=True)
class ScreeningTool:
    """A screening Questionnaire scored by counting `yes` answers.

    `items` are the linkIds of the scored boolean items; `threshold` is the published
    positive rule (positive when the count of `yes` answers is at least `threshold`)."""

    url: str
    name: str
    items: tuple[str, ...]
    threshold: int

    def __post_init__(self) -> None:
        if not self.items:
            raise ValueError(f"{self.name}: a screening tool needs at least one item")
        if len(set(self.items)) != len(self.items):
            raise ValueError(f"{self.name}: item linkIds must be unique")
        if not 1 <= self.threshold <= len(self.items):
            raise ValueError(
                f"{self.name}: threshold {self.threshold} must be between 1 and "
                f"{len(self.items)} (the number of items)"
            )

    def score(self, response: Mapping[str, Any]) -> int:
        """Number of this tool's items answered `yes` in `response` (each item counts once).

        Items of other questionnaires, unanswered items and `no` answers do not count. The
        response is not required to name this tool; use the module-level `score` for that."""
        wanted = frozenset(self.items)
        return len({link_id for link_id in _yes_link_ids(response) if link_id in wanted})

    def is_positive(self, response: Mapping[str, Any]) -> bool:
        """True when the score reaches the published threshold."""
        return self.score(response) >= self.threshold


SSCST = ScreeningTool(
    url="https://fhir.msht-cds.org/Questionnaire/sscst",
    name="Short Screen for Child Sex Trafficking (SSCST)",
    items=tuple(f"sscst-{n}" for n in range(1, 7)),
    threshold=2,
)
"""Greenbaum, Dodd & McCracken, Pediatr Emerg Care 2018 [S12]: 6 items, positive at >= 2.
Validated for ages 11/12-17 in high-risk settings; screens for sex trafficking only."""

QYIT = ScreeningTool(
    url="https://fhir.msht-cds.org/Questionnaire/qyit",
    name="Quick Youth Indicators for Trafficking (QYIT)",
    items=tuple(f"qyit-{n}" for n in range(1, 5)),
    threshold=1,
)
"""Chisolm-Straker et al., Children and Youth Services Review 2019 [S15a]: 4 items, positive at
>= 1. Validated on homeless young adults aged 18-22: use with children is off-label."""

TOOLS: Mapping[str, ScreeningTool] = {tool.url: tool for tool in (SSCST, QYIT)}


def tool_for(response: Mapping[str, Any]) -> ScreeningTool:
    """The tool a QuestionnaireResponse answers, from its `questionnaire` canonical.

    A `|version` suffix is ignored. Raises ValueError for any other questionnaire."""
    canonical = response.get("questionnaire")
    if not isinstance(canonical, str) or not canonical:
        raise ValueError("the response has no `questionnaire` canonical URL")
    url = canonical.split("|", 1)[0]
    tool = TOOLS.get(url)
    if tool is None:
        known = ", ".join(sorted(TOOLS))
        raise ValueError(f"{url} is not a scored screening tool (known: {known})")
    return tool


def score(response: dict[str, Any]) -> int:
    """Count of `yes` answers to the items of the tool this response belongs to."""
    return tool_for(response).score(response)


def is_positive(response: dict[str, Any]) -> bool:
    """True when the response reaches its tool's published positive threshold."""
    return tool_for(response).is_positive(response)


def _yes_link_ids(response: Mapping[str, Any]) -> Iterator[str]:
    """linkIds of every item (at any depth) that has a `valueBoolean: true` answer."""
    items = response.get("item")
    if isinstance(items, Sequence):
        yield from _walk_items(items)


def _walk_items(items: Sequence[Any]) -> Iterator[str]:
    for item in items:
        if not isinstance(item, Mapping):
            continue
        answers = item.get("answer")
        answers = answers if isinstance(answers, Sequence) else ()
        link_id = item.get("linkId")
        if isinstance(link_id, str) and any(
            isinstance(a, Mapping) and a.get("valueBoolean") is True for a in answers
        ):
            yield link_id
        children = item.get("item")
        if isinstance(children, Sequence):
            yield from _walk_items(children)
        for answer in answers:
            if isinstance(answer, Mapping):
                nested = answer.get("item")
                if isinstance(nested, Sequence):
                    yield from _walk_items(nested)


# --------------------------------------------------------------------------- accuracy


@dataclass(frozen=True)
class AccuracyTable:
    """A 2×2 table of a screen against its reference standard.

    tp: screen positive, condition present    fn: screen negative, condition present
    fp: screen positive, condition absent     tn: screen negative, condition absent

    Every measure is a proportion (0-1), except `lr_positive`. A measure whose denominator is
    zero raises ZeroDivisionError rather than inventing a value."""

    tp: int
    fn: int
    fp: int
    tn: int

    def __post_init__(self) -> None:
        for name in ("tp", "fn", "fp", "tn"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a whole number of people (>= 0), not {value!r}")

    @property
    def n(self) -> int:
        """Everyone screened."""
        return self.tp + self.fn + self.fp + self.tn

    @property
    def sensitivity(self) -> float:
        """Of those with the condition, the share the screen called positive: tp / (tp + fn)."""
        return _ratio(self.tp, self.tp + self.fn, "sensitivity")

    @property
    def specificity(self) -> float:
        """Of those without the condition, the share called negative: tn / (tn + fp)."""
        return _ratio(self.tn, self.tn + self.fp, "specificity")

    @property
    def ppv(self) -> float:
        """Positive predictive value: of the positive screens, the share truly affected."""
        return _ratio(self.tp, self.tp + self.fp, "ppv")

    @property
    def npv(self) -> float:
        """Negative predictive value: of the negative screens, the share truly unaffected."""
        return _ratio(self.tn, self.tn + self.fn, "npv")

    @property
    def lr_positive(self) -> float:
        """Positive likelihood ratio, sensitivity / (1 - specificity); infinite if no fp."""
        false_positive_rate = 1.0 - self.specificity
        if false_positive_rate == 0.0:
            return math.inf
        return self.sensitivity / false_positive_rate

    @property
    def prevalence(self) -> float:
        """Share of the screened population with the condition: (tp + fn) / n."""
        return _ratio(self.tp + self.fn, self.n, "prevalence")


def _ratio(numerator: int, denominator: int, what: str) -> float:
    if denominator == 0:
        raise ZeroDivisionError(f"{what} is undefined: its denominator is zero")
    return numerator / denominator
