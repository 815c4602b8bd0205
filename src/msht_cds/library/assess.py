"""Run the whole compiled library over one record and combine what fired."""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection

from ..cdshooks import ORDER_HOOKS
from ..record import PatientRecord, reference_key
from .evaluate import Assessment, Evaluation, combine, deduplicate
from .loader import Library


def assess(
    library: Library, record: PatientRecord, today: dt.date, *, explain: bool = False
) -> Assessment:
    """Evaluate every active indicator once, in dependency order, then combine.

    `explain` also evaluates the near-miss tests, which only `explain` and previews show."""
    latest = today + dt.timedelta(days=1)
    ev = Evaluation(record=record, visit_date=record.visit_date(today), latest=latest)
    if library.assess_gate is not None and not library.assess_gate(ev)[0]:
        return Assessment([], None, None, library.version)
    results = []
    for compiled in library.compiled:
        result = compiled.evaluate(ev, explain)
        ev.fired[compiled.indicator.id] = result
        results.append(result)
    deduplicate(results)
    concern, card_indicator = combine(library.manifest.combination, results)
    return Assessment(results, concern, card_indicator, library.version)


def card_is_due(
    hook: str,
    assessment: Assessment,
    record: PatientRecord,
    *,
    selected: Collection[str] | None = None,
    referral_recorded: bool = False,
) -> bool:
    """Whether `hook` shows a card for this assessment (at the assessment's card level). Every
    hook needs a concern; `encounter-discharge` only a high one with no referral recorded for
    the encounter; the order hooks only when counted evidence is one of the draft orders (for
    `order-select`, one of the `selected` ones: the card speaks of that order)."""
    if assessment.concern is None:
        return False
    if hook == "encounter-discharge":
        return assessment.concern == "high" and not referral_recorded
    if hook in ORDER_HOOKS:
        drafts = {reference_key(r) for r in record.draft_orders}
        if selected is not None:
            drafts &= set(selected)
        return any(f.reference in drafts for r in assessment.counted for f in r.evidence)
    return True
