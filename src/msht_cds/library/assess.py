"""Run the whole compiled library over one record and combine what fired."""

from __future__ import annotations

import datetime as dt

from ..record import PatientRecord
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
