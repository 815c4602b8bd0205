"""Real third-party Synthea records, seen as a child's record today.

Each record is shifted so that its last encounter is today when the patient was under 18
then; otherwise it is cut at age 15 and that moment is shifted to today."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

from msht_cds.record import PatientRecord, age_in_years, parse_date, resources_from_value

from .support import SHARED, load_json

SYNTHEA = SHARED / "fhir-r4" / "synthea"
_DATE = re.compile(r"^(\d{4}-\d{2}-\d{2})(T.*)?$")


def synthea_files() -> list[Path]:
    return sorted(
        p
        for p in SYNTHEA.rglob("*.json*")
        if "Information" not in p.name  # the shared Organization/Practitioner bundles
    )


def _shift(node: Any, days: int) -> Any:
    if isinstance(node, dict):
        return {k: _shift(v, days) for k, v in node.items()}
    if isinstance(node, list):
        return [_shift(v, days) for v in node]
    if isinstance(node, str):
        match = _DATE.match(node)
        if match:
            try:
                day = dt.date.fromisoformat(match.group(1)) + dt.timedelta(days=days)
            except ValueError:
                return node
            return day.isoformat() + (match.group(2) or "")
    return node


def child_today(path: Path, today: dt.date) -> tuple[str, list[dict[str, Any]]]:
    """(patient id, resources) with dates shifted as described in the module docstring."""
    resources, _, _ = resources_from_value(load_json(path))
    patient = next(r for r in resources if r["resourceType"] == "Patient")
    record = PatientRecord.build(patient["id"], resources)
    birth = parse_date(patient.get("birthDate"))
    assert birth is not None, path
    encounter_dates = [d for r in record.of_type("Encounter") if (d := record.date_of(r))]
    last = max(encounter_dates) if encounter_dates else today
    if age_in_years(birth, last) < 18:
        moment = last
    else:
        moment = birth.replace(year=birth.year + 15)
        resources = [r for r in resources if (record.date_of(r) or moment) <= moment]
    shifted: list[dict[str, Any]] = _shift(resources, (today - moment).days)
    for resource in shifted:
        if resource["resourceType"] == "Patient":
            # The Patient resource describes the person as the record ends (often an adult):
            # death and marital status belong to that later life, not to the child at 15.
            for field in ("deceasedDateTime", "deceasedBoolean", "maritalStatus"):
                resource.pop(field, None)
    return patient["id"], shifted
